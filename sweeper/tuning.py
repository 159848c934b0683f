"""Tuning beyond the lr (sweep.tune): coordinate descent per curve (Wen et al. 2025's protocol),
decided from the finished runs like every other stage, so a killed sweep resumes to the same
decisions and launches nothing twice.

Round 1 starts from the curve's stage-1 best lr at the defaults (stage 1 bracketed the lr) and
sweeps each axis of sweep.tune in order at the best point so far, on sweep.seeds. Later rounds
(sweep.max_rounds) sweep the lr again (the best lr divided and multiplied by the curve's grid
ratio) and then every axis, until a round moves nothing. Each numeric axis is bracketed as the lr
is: while its best value lies at an end of the values run, one more value a grid step beyond
(geometric, or arithmetic from 0; never below 0 from a 0 end), at most sweep.max_extend times.
A value replaces the current one only when it has fewer bad runs or a mean better by more than
the resolve difference (sweep.resolve, else the metric's): a tie keeps the default.
A value equal to the default (read from the runs' config.yaml) is left out of the point, so the
point is the run already made: runs are shared between axes and rounds through their run ids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from trainer.outputs import Status

LR = "optimizer.lr"
TUNING_STAGES = ("1", "extend", "tune")   # the runs a tuning decision may use (never stage 2)


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def same_tuned(row, tuned: dict) -> bool:
    """A SweepRow's tuned values are `tuned`."""
    return row.tuned.keys() == tuned.keys() and all(same(row.tuned[k], v) for k, v in tuned.items())


def numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def config_value(run_dir: Path, key: str):
    """`key` in a run's resolved config.yaml (train.py writes it at start)."""
    from omegaconf import OmegaConf

    return OmegaConf.select(OmegaConf.load(Path(run_dir) / "config.yaml"), key)


def beyond(values: list, low_end: bool) -> Optional[float]:
    """One grid step past an end of sorted numeric `values` (None: no step, e.g. below 0)."""
    if len(values) < 2:
        return None
    end, inner = (values[0], values[1]) if low_end else (values[-1], values[-2])
    if end > 0 and inner > 0:
        step = end * end / inner
    elif low_end and end == 0:
        return None                       # 0 is the floor (no weight decay)
    else:
        step = end + (end - inner)
    if all(isinstance(v, int) for v in values):
        step = int(round(step))
    else:
        step = float(f"{step:.6g}")
    return None if same(step, end) or (low_end and values[0] >= 0 > step) else step


@dataclass
class Axis:
    """One sweep of one axis of a curve, at the point it started from."""
    key: str
    round: int
    start: Any                    # the axis' value at that point
    default: Any                  # the config's value (for the lr: the point's)
    per_value: list               # [(value, stats or None: not finished)], ascending when numeric
    extended: list = field(default_factory=list)   # values added by bracketing
    chosen: Any = None            # None until every value has all its runs

    @property
    def done(self) -> bool:
        return self.chosen is not None


@dataclass
class Tuning:
    lr: float                        # the chosen lr (stage 1's unless a later round moved it)
    tuned: dict                      # {key: value} chosen away from the defaults
    best: object                     # LrStats of the chosen point
    axes: List[Axis] = field(default_factory=list)
    pending: List[Tuple[float, dict]] = field(default_factory=list)   # (lr, tuned) to run next
    rounds: int = 0                  # rounds begun

    @property
    def complete(self) -> bool:
        return not self.pending


def point_stats(rows: list, lr: float, tuned: dict, column: str, stats_type):
    """The stats of the tuning runs (stages 1, extend, tune; `rows`: SweepRows) at (lr, tuned),
    or None."""
    runs = [r for r in rows if r.stage in TUNING_STAGES and same(r.lr, lr)
            and r.status in Status.RESULTS and same_tuned(r, tuned)]
    if not runs:
        return None
    values = [v for r in runs if (v := r.score(column)) is not None]
    return stats_type(lr, values, runs, len(runs) - len(values))


def better(candidate, current, resolve: float) -> bool:
    """Fewer bad runs, or as few and a mean lower by more than `resolve`."""
    if candidate is None or not candidate.values:
        return False
    if candidate.bad_share != current.bad_share:
        return candidate.bad_share < current.bad_share
    return bool(current.values) and current.mean - candidate.mean > resolve


def argbest(per_value: list):
    """(value, stats) with the fewest bad runs, then the lowest mean; None without a value."""
    ok = [(v, st) for v, st in per_value if st is not None and st.values]
    return min(ok, key=lambda vs: (vs[1].bad_share, vs[1].mean)) if ok else None


def tune_curve(rows: list, start, axes: list, column: str, resolve: float, n_seeds: int,
               default_of: Optional[Callable[[str], Any]] = None, max_rounds: int = 1,
               max_extend: int = 0, lr_ratio: float = 2.0) -> Tuning:
    """The coordinate descent of one curve (`rows`: its runs) from `start`, the LrStats of its
    stage-1 best lr at the defaults; it stops at the first axis with runs missing (`pending`)."""
    stats_type = type(start)
    default_of = default_of or (lambda key: config_value(start.runs[0].dir, key))
    defaults = {key: default_of(key) for key, _ in axes}
    out = Tuning(start.lr, {}, start)

    def normal(tuned: dict) -> dict:      # values equal to the default are the default's run
        return {k: v for k, v in tuned.items() if not same(v, defaults[k])}

    for rnd in range(1, max_rounds + 1):
        out.rounds = rnd
        moved = False
        sweep = ([(LR, None)] if rnd > 1 else []) + list(axes)
        for key, grid in sweep:
            if key == LR:
                here, default = out.lr, out.lr
                values = [float(f"{out.lr / lr_ratio:.6g}"), out.lr, float(f"{out.lr * lr_ratio:.6g}")]
            else:
                here, default = out.tuned.get(key, defaults[key]), defaults[key]
                values = list(grid)

            def at(v):
                return (v, out.tuned) if key == LR else (out.lr, normal({**out.tuned, key: v}))

            values = list(dict.fromkeys([here] + values)) if not any(same(here, v) for v in values) \
                else list(values)
            if numeric(values):
                values = sorted(values)
            axis = Axis(key, rnd, here, default, [])
            out.axes.append(axis)
            while True:
                axis.per_value = [(v, out.best if same(v, here) else
                                   point_stats(rows, *at(v), column, stats_type)) for v in values]
                missing = [v for v, st in axis.per_value if st is None or st.n < n_seeds]
                if missing:
                    out.pending = [at(v) for v in missing]
                    return out
                top = argbest(axis.per_value)
                if top is None or not numeric(values) or len(axis.extended) >= max_extend:
                    break
                ends = [i for i, end in ((0, values[0]), (1, values[-1])) if same(top[0], end)]
                new = beyond(values, low_end=True) if ends == [0] else \
                    beyond(values, low_end=False) if ends == [1] else None
                if new is None or any(same(new, v) for v in values):
                    break
                axis.extended.append(new)
                values = sorted(values + [new])
            axis.chosen = here
            if top is not None and not same(top[0], here) and better(top[1], out.best, resolve):
                axis.chosen, out.best, moved = top[0], top[1], True
                if key == LR:
                    out.lr = top[0]
                else:
                    out.tuned = normal({**out.tuned, key: top[0]})
        if not moved:
            break
    return out
