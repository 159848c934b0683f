"""The statistics of a sweep, from collect()'s rows: per curve (optimizer and grid values) and lr
the metric over seeds (LrStats), each curve's best lr and stable range (best_and_range), tokens
to a target loss, the ranking (summarize -> Summary), and the texts that compare two curves or a
best lr with its grid neighbours. What the metric means comes from its Metric (sweeper/config.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

from sweeper.config import METRICS, Metric
from trainer.outputs import Status, read_metrics


@dataclass
class LrStats:
    lr: float
    values: list          # the metric of each run that reached it (completed; grokked)
    runs: list            # every completed or diverged row at this lr
    n_bad: int            # diverged (or, for grokking_step, did not grok)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def bad_share(self) -> float:
        return self.n_bad / self.n

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        if len(self.values) < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))


@dataclass
class Reach:
    """Tokens to the target loss at a curve's best lr, over its completed runs there."""
    mean_tokens: Optional[float]   # at the first eval with val/loss <= target; None: none got there
    reached: int
    runs: int


@dataclass
class CurveStats:
    """A curve with at least one value: its lrs, best lr and stable range."""
    per_lr: List[LrStats]          # ascending lr
    best: LrStats
    stable: List[LrStats]          # contiguous around the best; empty when the best had bad runs
    to_target: Optional[Reach] = None

    @property
    def reached_all(self) -> int:
        """Runs with a value, over every lr."""
        return sum(len(st.values) for st in self.per_lr)

    @property
    def runs_all(self) -> int:
        return sum(st.n for st in self.per_lr)


@dataclass
class Summary:
    """Everything report.md and the plots show."""
    metric: Metric
    stats: Dict[str, List[LrStats]]    # every curve with a result, by name (sorted)
    curves: Dict[str, CurveStats]      # those with a best lr
    ranked: List[str]                  # curves, best first
    target: Optional[float]            # the target loss of tokens-to-target, if it applies


def lr_stats(rows: list[dict], metric: str) -> dict[str, list[LrStats]]:
    """{curve: [stats per lr, ascending]} over the completed and diverged runs."""
    by = {}
    for r in rows:
        if r["status"] in Status.RESULTS:
            by.setdefault(r["curve"], {}).setdefault(r["lr"], []).append(r)
    out = {}
    for curve, per_lr in sorted(by.items()):
        out[curve] = []
        for lr, runs in sorted(per_lr.items()):
            values = [r[metric] for r in runs if r["status"] == Status.COMPLETED
                      and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
            out[curve].append(LrStats(lr, values, runs, len(runs) - len(values)))
    return out


def best_and_range(stats: list[LrStats], metric: Metric, tolerance: float):
    """(best lr's stats, stable lrs). Best: fewest diverged (or ungrokked) runs, then the best
    mean. Stable: the contiguous lrs around the best where no run diverged (all grokked) and the
    mean is within tolerance of the best (metric.limit: relative for grokking_step)."""
    candidates = [s for s in stats if s.values]
    if not candidates:
        return None, []
    best = min(candidates, key=lambda s: (s.bad_share, s.mean))
    if best.n_bad:
        return best, []
    limit = metric.limit(best.mean, tolerance)
    ok = [bool(s.values) and s.n_bad == 0 and s.mean <= limit for s in stats]
    i = j = stats.index(best)
    while i > 0 and ok[i - 1]:
        i -= 1
    while j < len(stats) - 1 and ok[j + 1]:
        j += 1
    return best, stats[i:j + 1]


def tokens_to_target(runs: list[dict], target: float) -> Reach:
    """Mean tokens at the first eval with val/loss <= target over the runs that got there."""
    reached = []
    for r in runs:
        for rec in read_metrics(r["_dir"]):
            if rec.get("val/loss") is not None and rec["val/loss"] <= target:
                reached.append(rec["tokens"])
                break
    return Reach(sum(reached) / len(reached) if reached else None, len(reached), len(runs))


def summarize(rows: list[dict], cfg) -> Summary:
    """The statistics of every curve and their ranking, for the sweep config `cfg`."""
    metric = METRICS[cfg.metric]
    stats = lr_stats(rows, metric.name)
    curves = {}
    for curve, per_lr in stats.items():
        best, stable = best_and_range(per_lr, metric, cfg.tolerance)
        if best is not None:
            curves[curve] = CurveStats(per_lr, best, stable)
    ranked = sorted(curves, key=lambda c: (curves[c].best.bad_share, curves[c].best.mean))
    target = None
    if metric.has_target and curves:
        target = cfg.target_loss if cfg.target_loss is not None else \
            max(c.best.mean for c in curves.values())
        for c in curves.values():
            c.to_target = tokens_to_target(
                [r for r in c.best.runs if r["status"] == Status.COMPLETED], target)
    return Summary(metric, stats, curves, ranked, target)


def compare(a: LrStats, b: LrStats, metric: Metric) -> str:
    """Whether b is behind a by more than the seed spread (mean +- std bands do not overlap)."""
    if a.bad_share != b.bad_share:
        return f"{b.n_bad}/{b.n} runs {metric.bad} at its best lr, against {a.n_bad}/{a.n}"
    gap = b.mean - a.mean
    if len(a.values) < 2 or len(b.values) < 2:
        return f"behind by {gap:.4g} {metric.unit}; one seed, so the seed spread is unknown"
    spread = a.std + b.std
    verdict = "exceeds" if gap > spread else "is within"
    return (f"behind by {gap:.4g} {metric.unit}, which {verdict} the seed spread "
            f"(std {a.std:.3g} + {b.std:.3g} = {spread:.3g})")


def neighbour_costs(c: CurveStats, metric: Metric) -> str:
    """How much a grid step off the best lr costs, down and up: the robustness a tolerance-based
    width misses on a coarse grid. '+0.07 (/4) / +0.24 (x4)'; 'edge' where the grid ends."""
    per_lr, best = c.per_lr, c.best
    i = per_lr.index(best)
    out = []
    for j, sign in ((i - 1, "/"), (i + 1, "x")):
        if not 0 <= j < len(per_lr):
            out.append("edge")
            continue
        st, ratio = per_lr[j], max(per_lr[j].lr, best.lr) / min(per_lr[j].lr, best.lr)
        cost = f"+{st.mean - best.mean:.3f}" if st.values and not st.n_bad else \
            f"{st.n_bad}/{st.n} {metric.bad_short}"
        out.append(f"{cost} ({sign}{ratio:.2g})")
    return " / ".join(out)
