"""Tuning beyond the lr (sweep.tune): one round of coordinate descent per curve, decided from the
finished runs like every other stage, so a killed sweep resumes to the same decisions.

After stage 1 has bracketed a curve's lr at the defaults, each axis of sweep.tune (in order)
runs its values at the best point so far (best lr, the values chosen on the earlier axes) on
sweep.seeds. A value equal to the default (read from the runs' config.yaml) is the point already
run. A value replaces the current one only when it has fewer bad runs, or a mean better by more
than the resolve difference (sweep.resolve, else the metric's): a tie keeps the default.
Stage 2 scores the tuned point on the held-out seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

from trainer.outputs import Status


@dataclass
class Axis:
    """One tuned axis of a curve: each value's stats at the point it was tuned from."""
    key: str
    default: Any
    per_value: list          # [(value, LrStats or None: not finished)], default first
    chosen: Any = None       # None until every value has all its runs

    @property
    def done(self) -> bool:
        return self.chosen is not None or not self.per_value


@dataclass
class Tuning:
    tuned: dict                      # {key: value} chosen away from the defaults
    best: object                     # LrStats of the chosen point
    axes: List[Axis] = field(default_factory=list)
    pending: List[dict] = field(default_factory=list)   # tuned dicts still to run (one axis)

    @property
    def complete(self) -> bool:
        return not self.pending


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def config_value(run_dir: Path, key: str):
    """`key` in a run's resolved config.yaml (train.py writes it at start)."""
    from omegaconf import OmegaConf

    return OmegaConf.select(OmegaConf.load(Path(run_dir) / "config.yaml"), key)


def point_stats(rows: list, lr: float, tuned: dict, column: str, stats_type) -> Optional[object]:
    """The stats of the tune-stage runs at (lr, tuned), or None when none finished."""
    runs = [r for r in rows if r.get("stage") == "tune" and r["lr"] == lr
            and r["status"] in Status.RESULTS and r.get("_tuned", {}).keys() == tuned.keys()
            and all(same(r["_tuned"][k], v) for k, v in tuned.items())]
    if not runs:
        return None
    values = [r[column] for r in runs if r["status"] == Status.COMPLETED
              and isinstance(r.get(column), (int, float)) and math.isfinite(r[column])]
    return stats_type(lr, values, runs, len(runs) - len(values))


def better(candidate, current, resolve: float) -> bool:
    """Fewer bad runs, or as few and a mean lower by more than `resolve`."""
    if not candidate.values:
        return False
    if candidate.bad_share != current.bad_share:
        return candidate.bad_share < current.bad_share
    return bool(current.values) and current.mean - candidate.mean > resolve


def tune_curve(rows: list, start, axes: list, column: str, resolve: float, n_seeds: int,
               default_of: Callable[[str], Any] = None) -> Tuning:
    """The tuning of one curve (`rows`: its runs) from `start`, the LrStats of its lr-best point
    at the defaults; stops at the first axis with runs missing (their tuned dicts: `pending`)."""
    lr, current, best = start.lr, {}, start
    stats_type = type(start)
    default_of = default_of or (lambda key: config_value(start.runs[0]["_dir"], key))
    out = Tuning({}, start)
    for key, values in axes:
        default = default_of(key)
        per, pending = [(default, best)], []
        for v in values:
            if same(v, default):
                continue
            point = {**current, key: v}
            st = point_stats(rows, lr, point, column, stats_type)
            per.append((v, st))
            if st is None or st.n < n_seeds:
                pending.append(point)
        axis = Axis(key, default, per)
        out.axes.append(axis)
        if pending:
            out.pending = pending
            return out
        winner = min((st for _, st in per[1:] if st.values), default=None,
                     key=lambda st: (st.bad_share, st.mean))
        axis.chosen = default
        if winner is not None and better(winner, best, resolve):
            axis.chosen = next(v for v, st in per if st is winner)
            current = {**current, key: axis.chosen}
            best = winner
        out.tuned, out.best = dict(current), best
    return out
