"""The statistics of a sweep, from its rows (sweeper/rows.py's SweepRow, read by collect).

Stage 1 (the lr grid, with its bracketing extensions) chooses each curve's lr: per curve
(optimizer and grid values) and lr the metric over seeds (LrStats), the best lr and stable range
(best_and_range), tokens to a target loss. The held-out seeds of stage 2 score the chosen lr
(Scores; stage 1's own seeds only when a sweep has no stage 2, and then the report says so).
The ranking orders the scores; each adjacent pair gets a paired verdict (sweeper/paired.py), and
each curve a speedup over the baseline (sweeper/speedup.py). summarize -> Summary holds it all.
What the metric means comes from its Metric (sweeper/config.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from sweeper.config import METRICS, Metric
from sweeper.paired import Paired, mean_interval, paired
from sweeper.rows import SweepRow
from sweeper.speedup import Speedups, speedups
from trainer.outputs import Status, read_metrics

STAGE1 = ("1", "extend")      # the stages that choose the lr
HELD_OUT = "2"
UNTUNED = "untuned"           # a tuned curve's untuned point on the held-out seeds (never scores it)


@dataclass
class LrStats:
    lr: float
    values: list          # the metric of each run that reached it (completed; grokked)
    runs: list            # every completed or diverged SweepRow at this lr
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
    """A curve with at least one value: its lrs, best lr and stable range (at the defaults), and
    with sweep.tune the values tuned at that lr (sweeper/tuning.py)."""
    per_lr: List[LrStats]          # ascending lr
    best: LrStats
    stable: List[LrStats]          # contiguous around the best; empty when the best had bad runs
    to_target: Optional[Reach] = None
    tuning: Optional[object] = None   # sweeper/tuning.py's Tuning

    @property
    def tuned(self) -> dict:
        return self.tuning.tuned if self.tuning is not None else {}

    @property
    def chosen(self) -> LrStats:
        """The tuning stats of the chosen point: the best lr with the tuned values."""
        return self.tuning.best if self.tuning is not None else self.best

    @property
    def chosen_lr(self) -> float:
        """The best lr of stage 1, or where a later tuning round moved it."""
        return self.tuning.lr if self.tuning is not None else self.best.lr

    @property
    def reached_all(self) -> int:
        """Runs with a value, over every lr."""
        return sum(len(st.values) for st in self.per_lr)

    @property
    def runs_all(self) -> int:
        return sum(st.n for st in self.per_lr)


@dataclass
class Scores:
    """A curve's metric at its chosen lr, per seed: the verdicts' input."""
    lr: float
    held_out: bool            # from stage-2 seeds, never those that chose the lr
    values: Dict[int, float]  # seed -> value, the runs that reached one
    n: int                    # runs (completed or diverged)
    n_bad: int                # diverged (did not grok)

    @property
    def bad_share(self) -> float:
        return self.n_bad / self.n if self.n else 1.0

    @property
    def interval(self) -> tuple:
        """(mean, low, high) of the 95% t interval of the mean."""
        return mean_interval(list(self.values.values()))


@dataclass
class Summary:
    """Everything report.md and the plots show."""
    metric: Metric
    stats: Dict[str, List[LrStats]]    # every curve with a stage-1 result, by name (sorted)
    curves: Dict[str, CurveStats]      # those with a best lr
    ranked: List[str]                  # curves, best first (by their scores)
    target: Optional[float]            # the target loss of tokens-to-target, if it applies
    column: str = ""                   # the summary field scored (e.g. final_val_loss_full)
    scores: Dict[str, Scores] = field(default_factory=dict)
    verdicts: List[Paired] = field(default_factory=list)    # adjacent ranked pairs
    pairs: List[Paired] = field(default_factory=list)       # every pair
    extended: Dict[str, List[float]] = field(default_factory=dict)   # lrs added by bracketing
    speedups: Optional[Speedups] = None   # against the baseline, when one applies
    # the rows behind each curve's Scores
    scored: Dict[str, List[SweepRow]] = field(default_factory=dict)


def lr_stats(rows: list[SweepRow], metric: str) -> dict[str, list[LrStats]]:
    """{curve: [stats per lr, ascending]} over the completed and diverged runs."""
    by = {}
    for r in rows:
        if r.status in Status.RESULTS:
            by.setdefault(r.curve, {}).setdefault(r.lr, []).append(r)
    out = {}
    for curve, per_lr in sorted(by.items()):
        out[curve] = []
        for lr, runs in sorted(per_lr.items()):
            values = [v for r in runs if (v := r.score(metric)) is not None]
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


def tokens_to_target(runs: list[SweepRow], target: float) -> Reach:
    """Mean tokens at the first eval with val/loss <= target over the runs that got there."""
    reached = []
    for r in runs:
        for rec in read_metrics(r.dir):
            if rec.get("val/loss") is not None and rec["val/loss"] <= target:
                reached.append(rec["tokens"])
                break
    return Reach(sum(reached) / len(reached) if reached else None, len(reached), len(runs))


def stage1(rows: list[SweepRow]) -> list[SweepRow]:
    return [r for r in rows if r.stage in STAGE1]


def val_curve(run_dir) -> dict:
    """{step: val/loss} of a run's scheduled evaluations."""
    return {rec["step"]: rec["val/loss"] for rec in read_metrics(run_dir)
            if rec.get("val/loss") is not None and "step" in rec}


def with_targets(rows: list[SweepRow], cfg) -> list[SweepRow]:
    """With sweep.target: each finished run's steps_to_target (its first scheduled evaluation
    with val/loss <= target; None: never), results.csv's column and metric=steps_to_target's."""
    from sweeper.track3 import first_step_below

    if getattr(cfg, "target", None) is not None:
        for r in rows:
            if r.status in Status.RESULTS and not r.target_checked:
                r.steps_to_target = first_step_below(val_curve(r.dir), cfg.target)
                r.target_checked = True
    return rows


def chosen_curves(rows: list[SweepRow], metric: Metric, column: str, tolerance: float,
                  cfg=None) -> Dict[str, CurveStats]:
    """Each curve's stage-1 statistics and best lr (curves without a value left out), and with
    cfg's sweep.tune its tuning at that lr."""
    from sweeper.tuning import tune_curve

    curves = {}
    for curve, per_lr in lr_stats(stage1(rows), column).items():
        best, stable = best_and_range(per_lr, metric, tolerance)
        if best is None:
            continue
        curves[curve] = c = CurveStats(per_lr, best, stable)
        axes = cfg.tune_axes(best.runs[0].optimizer) if cfg is not None else []
        if axes:
            resolve = cfg.resolve if cfg.resolve is not None else metric.resolve
            ratio = per_lr[1].lr / per_lr[0].lr if len(per_lr) > 1 else 2.0
            c.tuning = tune_curve([r for r in rows if r.curve == curve], best, axes, column,
                                  resolve, len(cfg.seeds), max_rounds=cfg.max_rounds,
                                  max_extend=cfg.max_extend, lr_ratio=ratio)
    return curves


def scored_runs(rows: list[SweepRow], curve: str, lr: float,
                tuned: Optional[dict] = None) -> list[SweepRow]:
    """The finished runs of `curve` at `lr` (and `tuned` values) that score it: its stage-2 runs
    if it has any, else those of stages 1 and tune."""
    tuned = tuned or {}
    from sweeper.tuning import same, same_tuned

    at = [r for r in rows if r.curve == curve and same(r.lr, lr)
          and r.status in Status.RESULTS and same_tuned(r, tuned)]
    held = [r for r in at if r.stage == HELD_OUT]
    return held or [r for r in at if r.stage in STAGE1 + ("tune",)]


def scores_of(rows: list[SweepRow], curve: str, lr: float, column: str,
              tuned: Optional[dict] = None) -> Scores:
    runs = scored_runs(rows, curve, lr, tuned)
    held = any(r.stage == HELD_OUT for r in runs)
    values = {r.seed: v for r in runs if (v := r.score(column)) is not None}
    return Scores(lr, bool(held), values, len(runs), len(runs) - len(values))


def summarize(rows: list[SweepRow], cfg) -> Summary:
    """The statistics of every curve, their scores, ranking and verdicts, for the sweep config."""
    metric = METRICS[cfg.metric]
    rows = with_targets(rows, cfg)
    column = metric.column(rows)
    curves = chosen_curves(rows, metric, column, cfg.tolerance, cfg)
    scores = {c: scores_of(rows, c, curves[c].chosen_lr, column, curves[c].tuned) for c in curves}
    ranked = sorted(curves, key=lambda c: (scores[c].bad_share, scores[c].interval[0]))
    verdicts = [paired(a, scores[a].values, b, scores[b].values)
                for a, b in zip(ranked, ranked[1:])]
    pairs = [paired(a, scores[a].values, b, scores[b].values)
             for i, a in enumerate(ranked) for b in ranked[i + 1:]]
    extended = {}
    for r in rows:
        if r.stage == "extend":
            extended.setdefault(r.curve, set()).add(r.lr)
    target = None
    if metric.has_target and curves:
        target = cfg.target_loss if cfg.target_loss is not None else \
            max(c.best.mean for c in curves.values())
        for c in curves.values():
            c.to_target = tokens_to_target(
                [r for r in c.best.runs if r.status == Status.COMPLETED], target)
    s = Summary(metric, lr_stats(stage1(rows), column), curves, ranked, target, column, scores,
                verdicts, pairs, {c: sorted(v) for c, v in extended.items()},
                scored={c: scored_runs(rows, c, curves[c].chosen_lr, curves[c].tuned) for c in curves})
    if metric.has_target:
        s.speedups = speedups(rows, s, baseline_of(cfg, curves, rows))
    return s


def baseline_of(cfg, curves: dict, rows: list = ()) -> dict:
    """{curve: its baseline curve}: sweep.baseline's curve (adamw's when unset) with a result;
    where the baseline has a curve at several values of a grid axis (sweep.grid: a width
    ladder), the one at the curve's own values, so nothing is measured across the axis. {}: no
    baseline."""
    name = cfg.baseline or "adamw"
    ours = [c for c in curves if c.split(" ")[0] == name]
    if len(ours) < 2 or not cfg.grid:
        return {c: ours[0] for c in curves} if ours else {}
    values = {r.curve: repr([r.grid.get(k) for k in sorted(cfg.grid)]) for r in rows}
    at = {}
    for b in ours:
        at.setdefault(values.get(b), b)
    return {c: at[values.get(c)] for c in curves if values.get(c) in at}


def chain(s: Summary) -> str:
    """The ranking as one line: '<' where the paired interval decides, '≈' where it ties."""
    if not s.ranked:
        return ""
    out = s.ranked[0]
    for v, b in zip(s.verdicts, s.ranked[1:]):
        out += f" {'<' if v.decided else '≈'} {b}"
    return out


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
