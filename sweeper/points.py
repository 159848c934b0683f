"""The points of a sweep: sweep.py's arguments split into sweep.* and train.py overrides, each
point (optimizer, lr, grid values, seed) with its canonical overrides and its run id, the
checks of every run's config before anything starts, and each run's train.py arguments.

A run id is a readable prefix and a hash of the run's canonical overrides: the same point always
gets the same id, so a re-run finds its runs (never change how it is computed).
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from configs import to_object
from configs.errors import UserError
from sweeper.config import SweepConfig, load_sweep, lr_grids, override_key
from sweeper.reuse import check_sources
from trainer.config import RunConfig  # noqa: F401 (registers configs/config.yaml's root: runs are composed here)

# Keys that change how a run is launched or logged, not what it computes: left out of the run
# id and of the sweep's identity, so that e.g. turning W&B on does not start the sweep over.
LAUNCH_KEYS = ("out_dir", "resume", "overwrite", "threads")
SET_BY_SWEEP = ("out_dir", "resume", "overwrite")
SWEPT = {"optimizer": "sweep.optimizers=[...]", "optimizer.lr": "sweep.lrs=[...]",
         "seed": "sweep.seeds=[...]"}


def is_launch_key(key: str) -> bool:
    return key in LAUNCH_KEYS or key == "wandb" or key.startswith("wandb.")


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(sweep args, train.py overrides)."""
    sweep_args, train_args = [], []
    for arg in argv:
        if "=" not in arg:
            raise UserError(f"argument {arg!r} is not key=value; see `python sweep.py --help`")
        key = override_key(arg)
        (sweep_args if key == "sweep" or key.startswith("sweep.") else train_args).append(arg)
    for arg in train_args:
        key = override_key(arg)
        if key in SET_BY_SWEEP:
            raise UserError(f"{key} is set by sweep.py for each run (out_dir "
                            "<sweep.dir>/runs/<run id>, resume=true); drop it, use sweep.dir=")
        if key in SWEPT:
            raise UserError(f"{key} is what the sweep varies: give {SWEPT[key]} instead of {arg}")
    return sweep_args, train_args


def canonical(overrides: list[str]) -> list[str]:
    """The overrides that decide a run's result: one per key (the last wins), sorted."""
    last = {}
    for arg in overrides:
        if "=" not in arg:
            raise UserError(f"override {arg!r} is not key=value")
        if not is_launch_key(override_key(arg)):
            last[override_key(arg)] = arg.strip()
    return sorted(last.values())


def hydra_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    return str(v)


def short_float(x: float) -> str:
    import numpy as np
    return np.format_float_scientific(x, trim="-", exp_digits=2)  # 1.3e-03, 1e+03


@dataclass
class Point:
    optimizer: str
    lr: float
    seed: int
    grid: dict           # {override key: value} of the extra axes
    overrides: list      # the setup's and this point's train.py overrides, canonical
    run_id: str
    stage: str = "1"     # 1 | extend (bracketing) | tune | 2 (held-out seeds) | budget; not in the id
    budget: Optional[float] = None   # stage budget: the baseline's train.max_iters multiple
    tuned: dict = field(default_factory=dict)   # {key: value} of sweep.tune away from the defaults

    @property
    def curve(self) -> str:
        return curve_label(self.optimizer, self.grid)


def curve_label(optimizer: str, grid: dict) -> str:
    """'muon ns=polar_express': each key by its last part, or without `optimizer.` where two
    keys share a last part (roles.embed.lr=null roles.head.lr=null)."""
    last = [k.rsplit(".", 1)[-1] for k in grid]
    name = {k: (k.removeprefix("optimizer.") if last.count(k.rsplit(".", 1)[-1]) > 1
                else k.rsplit(".", 1)[-1]) for k in grid}
    return " ".join([optimizer] + [f"{name[k]}={hydra_value(v)}" for k, v in sorted(grid.items())])


def make_run_id(optimizer: str, lr: float, seed: int, grid: dict, overrides: list[str]) -> str:
    digest = hashlib.sha1("\n".join(canonical(overrides)).encode()).hexdigest()[:8]
    axes = "".join(f"_{k.rsplit('.', 1)[-1]}{hydra_value(v)}" for k, v in sorted(grid.items()))
    readable = "".join(c if c.isalnum() or c in ".+-_" else "-"
                       for c in f"{optimizer}_lr{short_float(lr)}{axes}_s{seed}")
    return f"{readable}_{digest}"


def make_point(opt: str, lr: float, seed: int, grid: dict, setup: list[str],
               stage: str = "1", extra: tuple = (), budget: Optional[float] = None,
               tuned: Optional[dict] = None) -> Point:
    """The point of (optimizer, lr, seed, grid values) on the setup, its tuned values (not in
    its curve: the same curve, another point of it) and `extra` overrides last."""
    tuned = dict(tuned or {})
    own = [f"optimizer={opt}", f"optimizer.lr={hydra_value(float(lr))}",
           f"seed={seed}"] + [f"{k}={hydra_value(v)}" for k, v in {**grid, **tuned}.items()]
    overrides = canonical(setup + own + list(extra))
    return Point(opt, float(lr), int(seed), grid, overrides,
                 make_run_id(opt, float(lr), seed, {**grid, **tuned}, overrides), stage, budget,
                 tuned)


def grid_values(cfg: SweepConfig, optimizer: str | None = None) -> list[dict]:
    """Every listed variant of `optimizer` (sweep.grid_points_by_optimizer, else
    sweep.grid_points) times every combination of the extra axes' values ([{}] without either)."""
    axes = sorted(cfg.grid)
    product = [dict(zip(axes, values)) for values in itertools.product(*(cfg.grid[k] for k in axes))]
    variants = cfg.grid_points_by_optimizer.get(optimizer) or cfg.grid_points or [{}]
    return [{**dict(variant), **combo} for variant in variants for combo in product]


def make_points(cfg: SweepConfig, grids: dict, setup: list[str]) -> list[Point]:
    """Stage 1, seed-major, so a sweep interrupted early has whole curves for its first seeds."""
    return [make_point(opt, lr, seed, grid, setup)
            for seed in cfg.seeds for opt, lrs in grids.items()
            for grid in grid_values(cfg, opt) for lr in lrs]


def validate_points(points: list[Point], launch: list[str], runs_dir: Path, nproc: int = 1,
                    check_data: bool = True):
    """Compose the runs' configs before anything starts, and check what each run would refuse
    at start-up: its world size (`nproc` processes share train.grad_accum_steps) and its data
    (a damaged prepared dataset, or unreadable inputs to prepare), so that a sweep that can only
    fail is refused before it launches anything; returns the first one's config.
    One run per optimizer and grid value stands for all: the others differ only in the lr and
    the seed, numbers written here (SweepConfig checked the lrs). check_data=False leaves the
    data alone (`sweep.py plan` runs where no dataset is)."""
    from configs import load_config, to_object
    from data.prepare import check_inputs

    first, seen = None, set()
    for p in points:
        kind = (p.optimizer, tuple(sorted((k, hydra_value(v)) for k, v in p.grid.items())))
        if kind in seen:
            continue
        seen.add(kind)
        try:
            cfg = load_config(p.overrides + launch + [f"out_dir={runs_dir / p.run_id}", "resume=true"])
            run = to_object(cfg)
            run.train.micro_steps_per_rank(
                nproc, where=f"processes of a run (sweep.nproc_per_run={nproc})")
            if check_data and run.task.name == "lm":
                check_inputs(run.data)
        except UserError as exc:
            raise UserError(f"{exc} (in run {p.run_id})") from None
        first = first if first is not None else cfg
    return first


def launch_overrides(cfg: SweepConfig, train_args: list[str], wandb_enabled: bool) -> list[str]:
    """The overrides of how runs are launched and logged, the same for every run: the user's
    threads and wandb.*, and, with W&B on, the sweep's name as the W&B group."""
    launch = [a for a in list(cfg.overrides) + train_args if is_launch_key(override_key(a))]
    if wandb_enabled and "wandb.group" not in {override_key(a) for a in launch}:
        launch.append(f"wandb.group={cfg.name}")
    return launch


def run_args(p: Point, run_dir: Path, launch: list[str], threads: int, wandb: bool) -> list[str]:
    """A point's train.py arguments; with W&B on, its run's name (the run id) and tags (the
    user's wandb.tags, then optimizer, lr, seed and stage: filters of a W&B comparison)."""
    keys = {override_key(a) for a in launch}
    args = p.overrides + launch + [f"out_dir={run_dir}", "resume=true"]
    if "threads" not in keys:
        args.append(f"threads={threads}")
    if wandb and "wandb.name" not in keys:
        args.append(f"wandb.name={p.run_id}")
    if wandb:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        given = [a for a in launch if override_key(a) == "wandb.tags"][-1:]
        tags = list(OverridesParser.create().parse_overrides(given)[0].value()) if given else []
        tags += [f"optimizer:{p.optimizer}", f"lr:{short_float(p.lr)}", f"seed:{p.seed}",
                 f"stage:{p.stage}"]
        args.append("wandb.tags=[" + ",".join(repr(str(t)) for t in tags) + "]")
    return args


@dataclass
class Plan:
    """A sweep as the command line gives it, every input checked."""
    cfg: SweepConfig
    cli_keys: set            # the sweep.<key>s given on the command line
    grids: Dict[str, List[float]]   # each optimizer's lrs
    setup: list              # the train.py overrides of every run, canonical (the sweep's identity)
    points: List[Point]      # stage 1 (sweeper/stages.py adds the others as results come in)
    launch: list             # how runs are launched and logged (launch_overrides)
    wandb: bool              # runs log to W&B
    max_iters: int = 0       # train.max_iters of the setup (the baseline budgets multiply it)
    device: str = "auto"     # the runs' device (a device=cpu sweep reserves no GPUs)
    data: Optional[object] = None   # the runs' DataConfig (an lm task), for prepare_data


def plan(sweep_args: list[str], train_args: list[str], check_data: bool = True) -> Plan:
    """Config, lr grids, setup overrides, points and launch overrides, all checked (the data
    too unless check_data=False)."""
    cfg, cli_keys = load_sweep(sweep_args)
    grids = lr_grids(cfg)
    setup = canonical(list(cfg.overrides) + train_args)
    points = make_points(cfg, grids, setup)
    launch = launch_overrides(cfg, train_args, wandb_enabled=False)
    first = validate_points(points, launch, cfg.path / "runs", cfg.nproc_per_run, check_data)
    check_sources(cfg.reuse, cfg.path)
    wandb = bool(first.wandb.enabled)
    run = to_object(first)
    return Plan(cfg, cli_keys, grids, setup, points, launch_overrides(cfg, train_args, wandb), wandb,
                int(first.train.max_iters), str(first.device),
                run.data if run.task.name == "lm" else None)


def prepare_data(p: Plan) -> None:
    """Prepare (or fetch) the runs' dataset once, before any run starts, through data/'s own
    API: a source that cannot be read or downloaded is then one error line here, not the same
    failure in every run. Already prepared: nothing to do. data.auto_prepare=false: the runs
    refuse an unprepared dataset themselves (validate_points checked it)."""
    from data.prepare import prepare

    if p.data is not None and p.data.auto_prepare:
        prepare(p.data, only_if_missing=True)
