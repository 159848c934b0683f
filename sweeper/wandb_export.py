"""`python sweep.py export-wandb ...`: the sweep as W&B grid sweep YAML files in sweep.dir, one
per distinct lr grid and listed variant (a W&B grid is one cartesian product), for `wandb sweep` + `wandb agent`.
"""
from __future__ import annotations

from pathlib import Path

from sweeper.config import METRICS
from sweeper.config import override_key
from sweeper.points import Plan
from trainer.outputs import write_atomic


def wandb_sweeps(cfg, grids: dict, setup: list[str], launch: list[str]) -> dict[str, dict]:
    """W&B grid sweeps equivalent to this sweep, one per distinct lr grid and variant (a W&B grid is one
    cartesian product): {file name: sweep config}."""
    d = cfg.dir if cfg.dir else f"sweeps/{cfg.name}"
    if cfg.nproc_per_run > 1:
        head = ["${env}", "torchrun", "--standalone", f"--nproc_per_node={cfg.nproc_per_run}",
                "${program}"]
    else:
        head = ["${env}", "python", "${program}"]
    keys = {override_key(a) for a in launch}
    command = head + setup + [a for a in launch if not a.startswith("wandb.enabled")] + \
        ["wandb.enabled=true"] + ([] if "wandb.group" in keys else [f"wandb.group={cfg.name}"]) + \
        [f"out_dir={d}/wandb_runs/${{oc.env:WANDB_RUN_ID}}", "${args_no_hyphens}"]
    groups = {}   # optimizers with the same lrs and the same listed variants share sweeps
    for opt, lrs in grids.items():
        variants = [dict(v) for v in cfg.grid_points_by_optimizer.get(opt) or cfg.grid_points or [{}]]
        groups.setdefault(repr((list(lrs), variants)), (list(lrs), variants, []))[2].append(opt)
    out = {}
    for lrs, variants, opts in groups.values():
        for i, variant in enumerate(variants):   # listed variants are no product: one sweep each
            name = cfg.name if len(groups) == 1 else f"{cfg.name}_{'_'.join(opts)}"
            name += f"_v{i}" if len(variants) > 1 else ""
            out[f"wandb_{name}.yaml"] = {
                "name": name, "program": "train.py", "method": "grid",
                "metric": {"name": METRICS[cfg.metric].name, "goal": "minimize"},
                "parameters": {"optimizer": {"values": opts}, "optimizer.lr": {"values": list(lrs)},
                               "seed": {"values": list(cfg.seeds)},
                               **{k: {"value": v} for k, v in sorted(dict(variant).items())},
                               **{k: {"values": list(v)} for k, v in sorted(cfg.grid.items())}},
                "command": command}
    return out


def write_wandb_sweeps(plan: Plan) -> list[Path]:
    """Write the YAML files of wandb_sweeps into sweep.dir (created), saying so for each one;
    returns their paths."""
    import yaml

    d = plan.cfg.path
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, doc in wandb_sweeps(plan.cfg, plan.grids, plan.setup, plan.launch).items():
        text = (f"# W&B sweep equivalent to `python sweep.py sweep={plan.cfg.name} ...` "
                f"({len(plan.points)} runs in all). From the repository root:\n"
                f"#   wandb sweep {d / fname}   then, on each node:   wandb agent <sweep id>\n")
        write_atomic(d / fname, text + yaml.safe_dump(doc, sort_keys=False, width=100))
        print(f"wrote {d / fname}")
        paths.append(d / fname)
    return paths
