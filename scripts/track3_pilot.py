"""A CPU track's target and sigma, from its tuning seeds only (the pilot of sweep=track3_mini).

    python scripts/track3_pilot.py sweeps/track3_mini --baseline muon --step 1000

Track 3 sets its target (3.28) near what its baseline reaches at the end, and its sigma (0.0013)
from the baseline's seed-to-seed spread. A CPU track needs both for its own setup, chosen before
any held-out seed is read:
- target: the mean val loss, at scheduled step --step, of the baseline's stage-1 runs (the
  tuning seeds) at its chosen point (the sweep's own choice: best lr and tuned values), rounded up
  to 4 decimals;
- sigma: the baseline's seed std of the final val loss pooled over its stage-1 points (every lr
  and tuned value run on all tuning seeds) whose mean lies within --within of its best:
  sqrt(mean of the per-point variances), with its degrees of freedom.
It prints both and the YAML lines to put in configs/sweep/<name>.yaml (target, target_sigma).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pooled_std(groups: list[list[float]]) -> tuple[float, int]:
    """sqrt of the pooled variance of groups (each with >= 2 values), and its degrees of freedom."""
    groups = [g for g in groups if len(g) >= 2]
    df = sum(len(g) - 1 for g in groups)
    if not df:
        return math.nan, 0
    return math.sqrt(sum(statistics.variance(g) * (len(g) - 1) for g in groups) / df), df


def main() -> int:
    from configs.errors import UserError, run_cli
    from sweeper.config import SweepConfig, stored_config
    from sweeper.rows import collect
    from sweeper.runner import read_sweep
    from sweeper.stats import summarize, val_curve
    from trainer.outputs import Status

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--baseline", default="muon", help="the curve that sets the target")
    ap.add_argument("--step", type=int, default=1000, help="the scheduled step it should need")
    ap.add_argument("--within", type=float, default=0.05,
                    help="points within this of the baseline's best mean pool into sigma")
    args = ap.parse_args()

    def pilot() -> int:
        stored = read_sweep(args.sweep_dir)
        if stored is None:
            raise UserError(f"{args.sweep_dir} holds no sweep.json; pass a sweep's directory")
        cfg = stored_config(SweepConfig(dir=str(args.sweep_dir)), {"dir"}, stored)
        rows = collect(args.sweep_dir)
        s = summarize(rows, cfg)
        if args.baseline not in s.curves:
            raise UserError(f"--baseline {args.baseline} is not a curve of this sweep "
                            f"({', '.join(s.curves)})")
        c = s.curves[args.baseline]
        chosen = [r for r in c.chosen.runs if r.status == Status.COMPLETED]
        at_step = [val_curve(r.dir).get(args.step) for r in chosen]
        if not chosen or None in at_step:
            raise UserError(f"{args.baseline}'s chosen point has no val loss at step {args.step} "
                            "for every tuning seed; pick a scheduled evaluation step")
        target = math.ceil(statistics.mean(at_step) * 1e4) / 1e4
        tuning = [r for r in rows if r.curve == args.baseline and r.seed in cfg.seeds
                  and r.status == Status.COMPLETED]
        points: dict = {}
        for r in tuning:   # a point: the run id without its seed and hash
            points.setdefault(r.run_id.rsplit("_", 2)[0], []).append(r.final_val_loss)
        best = min(statistics.mean(v) for v in points.values() if len(v) == len(cfg.seeds))
        near = [v for v in points.values()
                if len(v) == len(cfg.seeds) and statistics.mean(v) <= best + args.within]
        sigma, df = pooled_std(near)
        print(f"{args.baseline}: chosen lr {c.chosen_lr:g} {c.tuned or ''}, val loss at step "
              f"{args.step} on seeds {[r.seed for r in chosen]}: "
              f"{', '.join(f'{v:.4f}' for v in at_step)}")
        print(f"sigma: pooled seed std of the final loss over {len(near)} points within "
              f"{args.within} of the best ({best:.4f}): {sigma:.4f} ({df} degrees of freedom)")
        print(f"target: {target}\ntarget_sigma: {sigma:.4f}")
        return 0

    return run_cli(pilot)


if __name__ == "__main__":
    sys.exit(main())
