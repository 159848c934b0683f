"""Learning-rate sweeps: many train.py runs, one results table, stability curves, a ranking.

    python sweep.py sweep=cpu_ordering                         # baby GPT, 4 optimizers x 7 lrs
    python sweep.py sweep=cpu_ordering sweep.seeds=[0,1,2] sweep.jobs=2
    python sweep.py sweep=namo_gpt2 sweep.optimizers=[adamw,namo_d] wandb.enabled=true
    python sweep.py sweep=namo_gpt2 sweep.launcher=slurm sweep.slurm.partition=gpu   # SLURM jobs
    python sweep.py sweep=cpu_ordering sweep.lrs=[1e-3,3e-3] train.max_iters=400 sweep.dir=sweeps/short
    python sweep.py report sweep.dir=sweeps/cpu_ordering       # rebuild the outputs from what finished
    python sweep.py report sweep.dir=docs/results/cpu_decisive # a study without runs/: the figures
                                                               # its results.csv allows, nothing else
    python sweep.py export-wandb sweep=namo_gpt2                # the same grid as W&B sweep YAML
    python sweep.py plan sweep=track3                           # runs, GPUs, tokens, GPU-hours

Arguments `sweep=<preset>` and `sweep.<key>=...` configure the sweep (configs/sweep.yaml, the
presets configs/sweep/*.yaml, the schema SweepConfig in sweeper/config.py). Every other argument
is a train.py override applied to every run, after the preset's `sweep.overrides` (optimizer=,
optimizer.lr= and seed= are refused there: they are what sweep.optimizers/lrs/seeds vary).

Learning rates: an optimizer's grid is `sweep.lr_grid.<optimizer>` where the preset has one, else
`sweep.lrs`. `sweep.lrs=[...]` given on the command line replaces every grid (lr_grid is ignored).
More axes: `sweep.grid={optimizer.clamp_c:[0.12,0.4]}` runs every value (replacing a fixed
override of the same key); each value is its own curve. Variants that are no product (weight
decay 0 once, 0.1 under each decay style): `sweep.grid_points=[{optimizer.weight_decay:0},...]`,
each its own curve (times the product of sweep.grid, if any).
Variants of one optimizer only: `sweep.grid_points_by_optimizer={muon:[{},{optimizer.ns:gram}]}`
(replaces sweep.grid_points for that optimizer; the others keep theirs; sweep.optimizers=[...] on
the command line drops the preset's variants of the optimizers it leaves out).

Runs: each point (optimizer, lr, grid values, seed) is one train.py process (torchrun when
sweep.nproc_per_run > 1) with out_dir <sweep.dir>/runs/<run id>, on this machine
(sweep.launcher=local) or as a SLURM job (sweep.launcher=slurm, resources sweep.slurm.*:
sweeper/slurm.py; the job id is kept in the run directory, a preempted job is requeued and
resumes from its checkpoint). The run id is a readable prefix and a hash of the run's
overrides, so the same point is never run twice. Up to sweep.jobs run at
once, each on its own GPUs (CUDA_VISIBLE_DEVICES) or its share of the CPU cores (threads=).
Re-running the same command resumes: completed and diverged runs are kept, the others (never
started, interrupted, failed) are launched with resume=true. A lock held while a run's process
lives keeps a run left behind by a killed launcher from being started a second time.
Ctrl-C, SIGTERM or SIGUSR1 stop every running run cleanly (each ends its step, checkpoints and
ends `interrupted`) and exit with code 3; the same command resumes them.
A diverged or failed run is a result, recorded with its status and error; the sweep goes on.

Outputs in sweep.dir, rebuilt by `report` from whatever has finished: results.csv (a row per
run), lr_curves.png (metric vs lr per optimizer, spread over seeds, x = diverged), best_curves.png
(the runs at each optimizer's best lr), report.md (best lr, stable range, tokens to a target
loss, ranking). sweep.json holds the sweep's identity: another sweep's directory is refused.
A sweep.dir with a results.csv and no runs/ (a study committed without its runs) gets only the
figures drawn from final numbers (lr_curves.png; verdicts.png where it had a held-out stage;
grid_curves.png for one numeric axis), from results.csv with its report.md's metric; results.csv
and report.md are not rewritten, and the curve figures need the runs (sweeper/from_results.py).

`plan` launches nothing and reads no data: per curve its lrs, seeds, runs (min: no bracketing,
max: every extension), GPUs and tokens per run, parameters, FLOPs per token (nanoGPT's 6 N +
12 L H Q T), and GPU-hours at sweep.plan_mfu (0.40) x sweep.plan_peak_flops (H100 SXM dense bf16,
989 TFLOP/s), with the totals and the wall-clock at sweep.jobs runs at once (sweeper/gpu_plan.py).
"""
from __future__ import annotations

import signal
import sys

from configs.errors import UserError, run_cli
from sweeper.config import SweepConfig, load_sweep, stored_config
from sweeper.points import plan, prepare_data, split_args
from sweeper.report import grid_axis, write_outputs, write_results
from sweeper.rows import collect
from sweeper.runner import check_identity, read_sweep, record_sweep, resources
from sweeper.stages import run_stages
from sweeper.wandb_export import write_wandb_sweeps
from trainer.outputs import EXIT_INTERRUPTED

def cmd_run(sweep_args: list[str], train_args: list[str], argv: list[str]) -> int:
    p = plan(sweep_args, train_args)
    cfg, d = p.cfg, p.cfg.path
    # SLURM jobs get their resources from sweep.slurm.*, not from this machine
    gpus, threads = resources(cfg, p.device) if cfg.launcher != "slurm" else ([], 0)
    check_identity(d, cfg.name, p.setup)
    if cfg.launcher != "slurm":   # SLURM jobs prepare on their nodes (one at a time: a file lock)
        prepare_data(p)
    record_sweep(p, argv)
    where = f"GPUs {','.join(gpus)}" if gpus else f"CPU, {threads} thread(s) per process"
    later = " (then bracketing, held-out seeds and budgets as results come in)" \
        if cfg.max_extend or cfg.confirm_seeds or cfg.baseline_budgets else ""
    if cfg.launcher == "slurm":
        at_once = f"SLURM jobs of {cfg.nproc_per_run} process(es), " \
                  f"{cfg.slurm.array_parallelism} at once at most"
    else:
        at_once = f"{cfg.jobs} at once x {cfg.nproc_per_run} process(es) ({where})"
    print(f"sweep {cfg.name}: stage 1 has {len(p.points)} runs{later}, {at_once}; results in {d}")
    completed = run_stages(p, gpus, threads, on_end=lambda: write_results(d, collect(d)))
    write_outputs(d, cfg, p.setup)
    print(f"wrote {d / 'results.csv'}, {d / 'lr_curves.png'}, {d / 'report.md'}")
    return 0 if completed else EXIT_INTERRUPTED


def cmd_report(sweep_args: list[str], train_args: list[str]) -> int:
    if train_args:
        raise UserError(f"report takes sweep.* arguments only, not {train_args[0]!r}")
    cli_cfg, cli_keys = load_sweep(sweep_args)
    d = cli_cfg.path
    stored = read_sweep(d)
    from sweeper import from_results
    if from_results.applies(d):
        return report_from_results(d, cli_cfg, cli_keys, stored)
    if stored is None:
        raise UserError(f"sweep.dir={d} holds no sweep.json (no sweep ran there); pass the "
                        "sweep.dir of a sweep")
    cfg = stored_config(cli_cfg, cli_keys, stored)
    s = write_outputs(d, cfg, stored["setup"])
    print(f"{len(collect(d))} runs; ranking: {', '.join(s.ranked) or '(nothing finished yet)'}")
    grid = f", {d / 'grid_curves.png'}" if grid_axis(cfg) else ""
    print(f"wrote {d / 'results.csv'}, {d / 'lr_curves.png'}, {d / 'best_curves.png'}{grid}, "
          f"{d / 'report.md'}")
    return 0


def report_from_results(d, cli_cfg: SweepConfig, cli_keys: set, stored) -> int:
    """A committed study without its runs/: the figures results.csv allows, in one line what
    was drawn and what was not (and why); results.csv and report.md are left as they are."""
    from sweeper.from_results import draw_from_results

    cfg = stored_config(cli_cfg, cli_keys, stored) if stored is not None else None
    s, drawn, skipped, ranking = draw_from_results(d, cli_cfg, cli_keys, cfg)
    why = {}
    for name, reason in skipped.items():
        why.setdefault(reason, []).append(name)
    print(f"{d}: no runs/, drew from results.csv alone: {', '.join(drawn)}; not drawn: "
          + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in why.items())
          + "; results.csv and report.md left as they are")
    if ranking and ranking != s.ranked:
        print(f"warning: the ranking from results.csv ({', '.join(s.ranked)}) differs from "
              f"report.md's ({', '.join(ranking)}): the figures may not match report.md; give "
              "the study's sweep.metric / sweep.tolerance", file=sys.stderr)
    return 0


def cmd_export_wandb(sweep_args: list[str], train_args: list[str]) -> int:
    p = plan(sweep_args, train_args)
    check_identity(p.cfg.path, p.cfg.name, p.setup)
    write_wandb_sweeps(p)
    return 0


def cmd_plan(sweep_args: list[str], train_args: list[str]) -> int:
    from sweeper.gpu_plan import format_plan, gpu_plan
    print(format_plan(*gpu_plan(sweep_args, train_args)))
    return 0


def interrupt(signum, frame):
    raise KeyboardInterrupt


def dispatch(argv: list[str]) -> int:
    command = argv[0] if argv and "=" not in argv[0] else "run"
    args = argv[1:] if argv and "=" not in argv[0] else argv
    sweep_args, train_args = split_args(args)
    if command == "run":
        # SIGTERM (a scheduler's cancel) and SIGUSR1 (SLURM's --signal=USR1@90) stop the runs
        # like Ctrl-C does: each checkpoints and ends interrupted; exit code 3.
        previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            return cmd_run(sweep_args, train_args, argv)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if command == "report":
        return cmd_report(sweep_args, train_args)
    if command == "export-wandb":
        return cmd_export_wandb(sweep_args, train_args)
    if command == "plan":
        return cmd_plan(sweep_args, train_args)
    raise UserError(f"unknown command {command!r}; use run (the default), report, "
                    "export-wandb or plan")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        from configs import config_groups
        print(__doc__)
        print(f"  presets: {', '.join(config_groups().get('sweep', []))}")
        return 0
    return run_cli(lambda: dispatch(argv))


if __name__ == "__main__":
    sys.exit(main())
