"""A sweep's stages, run by one command (python sweep.py ...):

  1       the lr grid x sweep.seeds;
  extend  while a curve's best stage-1 lr is at an end of its grid, one more lr a grid ratio
          beyond that end (x sweep.seeds), at most sweep.max_extend times per curve; an end
          where runs diverged brackets the best like any other;
  tune    with sweep.tune, each axis' values at the best point so far x sweep.seeds, axis by
          axis (sweeper/tuning.py);
  2       each curve's chosen point (best lr and tuned values; with sweep.confirm_neighbours also
          the grid lrs beside it) x sweep.confirm_seeds, fresh seeds that score it
          (sweeper/stats.py); a curve whose tuning misses runs waits;
  untuned with sweep.confirm_untuned, each curve the tuning moved at its untuned point (stage-1
          best lr, defaults) x sweep.confirm_seeds: what the tuning bought (never ranked);
  budget  the baseline at its stage-1 best lr x sweep.baseline_budgets x train.max_iters, on
          the stage-2 seeds (sweep.seeds without a stage 2): the L(D) fit of the speedups.

Every decision is recomputed from the finished runs, so a killed sweep resumes by running the
same command: the same extensions, the same chosen lrs, the same run ids.
"""
from __future__ import annotations

from typing import Callable, Optional

from sweeper.config import METRICS
from sweeper.points import Plan, Point, curve_label, grid_values, make_point
from sweeper.rows import SweepRow, collect
from sweeper.runner import LocalBackend, run_points
from sweeper.stats import UNTUNED, LrStats, baseline_of, chosen_curves, stage1, with_targets


def extension_lr(per_lr: list[LrStats], best: LrStats, extended: int,
                 max_extend: int) -> Optional[float]:
    """The lr one grid ratio beyond the end where the best lies, or None: the best is interior
    (a neighbour on both sides, diverged or not), the grid has a single lr, or the curve has
    used its max_extend extensions."""
    lrs = [st.lr for st in per_lr]
    if len(lrs) < 2 or extended >= max_extend:
        return None
    if best.lr == lrs[0]:
        return lrs[0] * lrs[0] / lrs[1]
    if best.lr == lrs[-1]:
        return lrs[-1] * lrs[-1] / lrs[-2]
    return None


def curve_points(plan: Plan, stage: str, lrs_by_curve: dict, seeds: list,
                 extra: tuple = (), budget: Optional[float] = None,
                 tuned_by_curve: Optional[dict] = None) -> list[Point]:
    """Points of every curve (optimizer and grid values) at its lrs (with its tuned values,
    each a dict, from tuned_by_curve) x seeds."""
    points = []
    for seed in seeds:
        for opt in plan.grids:
            for grid in grid_values(plan.cfg, opt):
                curve = curve_label(opt, grid)
                for tuned in (tuned_by_curve or {}).get(curve, [{}]):
                    for lr in lrs_by_curve.get(curve, []):
                        points.append(make_point(opt, lr, seed, grid, plan.setup, stage, extra,
                                                 budget, tuned))
    return points


def extensions(plan: Plan, rows: list[SweepRow]) -> list[Point]:
    """The next bracketing points, from the finished stage-1 runs."""
    metric = METRICS[plan.cfg.metric]
    rows = with_targets(rows, plan.cfg)
    curves = chosen_curves(rows, metric, metric.column(stage1(rows)), plan.cfg.tolerance)
    new = {}
    for curve, c in curves.items():
        used = len({r.lr for r in rows if r.curve == curve and r.stage == "extend"})
        lr = extension_lr(c.per_lr, c.best, used, plan.cfg.max_extend)
        if lr is not None:
            new[curve] = [float(f"{lr:.6g}")]
    return curve_points(plan, "extend", new, plan.cfg.seeds)


def confirm_lrs(c, neighbours: bool) -> list[float]:
    """The chosen (best) lr, and with `neighbours` the grid lrs beside it that finished (not for
    a tuned curve: its chosen point only)."""
    if c.tuning is not None:
        return [c.chosen_lr]
    i = c.per_lr.index(c.best)
    picks = [c.best]
    if neighbours:
        picks += [c.per_lr[j] for j in (i - 1, i + 1) if 0 <= j < len(c.per_lr)
                  and c.per_lr[j].values]
    return sorted(st.lr for st in picks)


def tune_points(plan: Plan, rows: list[SweepRow]) -> list[Point]:
    """The next tuning points (sweep.tune), from the finished stage-1 and tune runs."""
    cfg = plan.cfg
    metric = METRICS[cfg.metric]
    rows = with_targets(rows, cfg)
    curves = chosen_curves(rows, metric, metric.column(stage1(rows)), cfg.tolerance, cfg)
    points = []
    for seed in cfg.seeds:
        for opt in plan.grids:
            for grid in grid_values(cfg, opt):
                c = curves.get(curve_label(opt, grid))
                for lr, tuned in (c.tuning.pending if c is not None and c.tuning else []):
                    points.append(make_point(opt, lr, seed, grid, plan.setup, "tune", tuned=tuned))
    return points


def later_points(plan: Plan, rows: list[SweepRow]) -> list[Point]:
    """Stage 2 and the baseline budgets, from the finished stage-1 (and tune) runs."""
    cfg = plan.cfg
    metric = METRICS[cfg.metric]
    rows = with_targets(rows, cfg)
    curves = chosen_curves(rows, metric, metric.column(stage1(rows)), cfg.tolerance, cfg)
    curves = {c: s for c, s in curves.items() if s.tuning is None or s.tuning.complete}
    tuned = {c: [s.tuned] for c, s in curves.items()}
    points = []
    if cfg.confirm_seeds:
        points += curve_points(plan, "2", {c: confirm_lrs(s, cfg.confirm_neighbours)
                                          for c, s in curves.items()}, cfg.confirm_seeds,
                               tuned_by_curve=tuned)   # a tuned curve: its chosen point only
        if cfg.confirm_untuned:   # what the tuning bought: the point it moved away from
            moved = {c: [s.best.lr] for c, s in curves.items()
                     if s.tuning is not None and (s.tuned or s.chosen_lr != s.best.lr)}
            points += curve_points(plan, UNTUNED, moved, cfg.confirm_seeds)
    bases = list(dict.fromkeys(baseline_of(cfg, curves, rows).values()))   # one per grid value
    if bases and cfg.baseline_budgets and plan.max_iters:
        seeds = cfg.confirm_seeds or cfg.seeds
        for b in cfg.baseline_budgets:
            steps = max(1, int(round(b * plan.max_iters)))
            if steps != plan.max_iters:
                points += curve_points(plan, "budget", {c: [curves[c].chosen_lr] for c in bases},
                                       seeds, extra=(f"train.max_iters={steps}",),
                                       budget=float(b), tuned_by_curve=tuned)
    return points


def run_stages(plan: Plan, gpus: list[str], threads: int, on_end: Callable[[], None]) -> bool:
    """Stage 1 with its extensions, then stage 2 and the budgets; False when interrupted."""
    d = plan.cfg.path
    if plan.cfg.launcher == "local":
        backend = LocalBackend(plan, gpus, threads)
    else:   # SLURM (or local) jobs through submitit
        from sweeper.slurm import SubmititBackend
        backend = SubmititBackend(plan, threads)
    points = list(plan.points)
    while True:
        if not run_points(plan, points, backend, on_end):
            return False
        new = [p for p in extensions(plan, collect(d)) if p.run_id not in {q.run_id for q in points}]
        if not new:
            break
        print(f"{plan.cfg.name}: best lr at the end of its grid for "
              f"{', '.join(sorted({p.curve for p in new}))}: extending by "
              f"{', '.join(sorted({f'{p.lr:.3g}' for p in new}))}")
        points += new
    while True:   # sweep.tune, axis by axis
        new = [p for p in tune_points(plan, collect(d)) if p.run_id not in {q.run_id for q in points}]
        if not new:
            break
        print(f"{plan.cfg.name}: tuning {', '.join(sorted({k for p in new for k in p.tuned}))} "
              f"for {', '.join(sorted({p.curve for p in new}))}: {len(new)} runs")
        points += new
        if not run_points(plan, new, backend, on_end):
            return False
    later = later_points(plan, collect(d))
    if later:
        seen = {p.run_id for p in points}
        later = [p for p in {p.run_id: p for p in later}.values() if p.run_id not in seen]
        print(f"{plan.cfg.name}: stage 2 and budgets: {len(later)} runs")
        return run_points(plan, later, backend, on_end)
    return True
