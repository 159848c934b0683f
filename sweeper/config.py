"""The schema of sweep.py and what a sweep ranks by: SweepConfig (configs/sweep.yaml, the presets
configs/sweep/*.yaml, overridden by sweep.*) with its SLURM resources (SlurmConfig, sweep.slurm.*,
for sweeper/slurm.py), its checks, its loading from the command line, and the Metric of each
`sweep.metric` (METRICS), and SweepFile, the root of configs/sweep.yaml (registered with
configs/schema.py on import). Torch-free.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from configs.errors import UserError
from configs.schema import register_root
from trainer.outputs import Status


def fmt(x, digits: int = 4) -> str:
    """A number of the report: '-' for none or NaN (the std of a single value)."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


@dataclass(frozen=True)
class Series:
    """One line per run of best_curves.png: `key` of metrics.jsonl against the Metric's x key."""
    key: str
    fmt: Optional[str] = None            # matplotlib format string; None: a solid line
    labelled: bool = True                # the first run's line carries the curve's legend entry


@dataclass(frozen=True)
class Metric:
    """Everything that depends on what a sweep ranks by. Lower is better for every metric: the
    best lr has the fewest bad runs, then the lowest mean. Adding a metric is adding one Metric
    to METRICS; its report columns are picked among sweeper/report.py's COLUMNS."""
    name: str                  # results.csv's column (a summary.json field) and W&B's metric
    label: str                 # report.md's table header
    axis_label: str            # lr_curves.png's y axis
    unit: str                  # of a gap between two curves
    digits: int                # decimals of a mean and a std
    bad: str                   # what a run without a value did: "... runs {bad} at its best lr"
    bad_short: str             # the same in a table cell: "(1/2 {bad_short})"
    bad_marks: str             # what lr_curves.png's x marks
    relative_tolerance: bool   # sweep.tolerance is a fraction of the best, not an amount
    definition: str            # report.md's "Metric: ..." line
    stable_when: str           # "Stable range: ... where {stable_when} within <tolerance> of the best."
    notes: Tuple[str, ...]     # report.md's lines on its columns, with {target}, {target_source}
    columns: Tuple[Tuple[str, str], ...]   # report.md's columns after the stable range: (kind, header)
    has_target: bool           # tokens to a target val/loss applies
    x_key: str                 # best_curves.png: x of metrics.jsonl's records
    series: Tuple[Series, ...]  # best_curves.png: the lines of each run
    x_label: str
    y_label: str
    x_scale: Optional[Tuple[str, Tuple[Tuple[str, Any], ...]]] = None   # (scale, its options)
    sources: Tuple[str, ...] = ()   # summary fields to score by, preferred first (default: name)
    resolve: float = 0.0            # the difference whose seeds-to-resolve a tie reports

    def column(self, rows: list) -> str:
        """The first of `sources` that every completed run has (older runs may lack a newer
        field), else `name`. `rows`: sweeper/rows.py's SweepRows."""
        done = [r for r in rows if r.status == Status.COMPLETED]
        for key in self.sources:
            if done and all(isinstance(r.value(key), (int, float)) for r in done):
                return key
        return self.name

    def format(self, mean: float, std: float) -> str:
        return f"{mean:.{self.digits}f} ± {fmt(std, self.digits)}"

    def limit(self, best: float, tolerance: float) -> float:
        """The largest mean within tolerance of the best."""
        return best * (1 + tolerance) if self.relative_tolerance else best + tolerance

    def intro_lines(self, tolerance: float, target: Optional[float], target_given: bool) -> list:
        """report.md's lines above the table."""
        amount = f"{tolerance:.0%}" if self.relative_tolerance else f"{tolerance:g}"
        stable = (f"Stable range: the contiguous lrs around the best where {self.stable_when} "
                  f"within {amount} of the best.")
        return [self.definition, stable] + [
            line.format(target=fmt(target), target_source="(sweep.target_loss)" if target_given
                        else "(the worst optimizer's best final loss)") for line in self.notes]


GROKKING_STEP = Metric(
        name="grokking_step", label="grokking step", axis_label="grokking step", unit="steps",
        digits=0, bad="did not grok", bad_short="no grok", bad_marks="did not grok / diverged",
        relative_tolerance=True,
        definition="Metric: the step at which validation accuracy reached the threshold "
                   "(grokking_step), mean ± std over the seeds that grokked (n). A learning rate "
                   "where some run diverged or did not grok ranks behind one where all grokked.",
        stable_when="every run grokked with a mean grokking step", notes=(),
        columns=(("reached_at_best", "grokked at best lr"), ("reached_all", "grokked, all lrs")),
        has_target=False,
        x_key="step", series=(Series("val/acc"), Series("train/acc", ":", labelled=False)),
        x_label="step", y_label="accuracy (val solid, train dotted)",
        x_scale=("symlog", (("linthresh", 100),)), resolve=25.0)


METRICS: Dict[str, Metric] = {m.name: m for m in (
    Metric(
        name="final_val_loss", label="final val loss", axis_label="final validation loss",
        unit="nats", digits=4, bad="diverged", bad_short="diverged", bad_marks="diverged",
        relative_tolerance=False,
        definition="Metric: the final validation loss at the end of training (after the lr "
                   "decay), mean ± std over seeds (n). A learning rate where some seed diverged "
                   "ranks behind one where none did.",
        stable_when="no seed diverged and the mean is",
        notes=("One grid step off: the mean loss at the next lower / higher lr of the grid minus "
               "the best (the lr ratio in brackets), the cost of missing the best lr.",
               "Tokens to target: the first evaluation with val/loss <= {target} {target_source}, "
               "at each optimizer's best lr, mean over the seeds that reached it."),
        columns=(("neighbours", "one grid step off"), ("to_target", "tokens to {target}")),
        has_target=True,
        x_key="tokens", series=(Series("val/loss"),), x_label="tokens", y_label="validation loss",
        sources=("final_val_loss_full", "final_val_loss"), resolve=0.005),
    GROKKING_STEP,
    # The same in tokens (step x batch x 4): what a batch-size comparison needs.
    dataclasses.replace(
        GROKKING_STEP, name="grokking_tokens", label="tokens to grok", axis_label="tokens to grok",
        unit="tokens", definition="Metric: the tokens seen when validation accuracy reached the "
        "threshold (grokking_tokens), mean ± std over the seeds that grokked (n). A learning rate "
        "where some run diverged or did not grok ranks behind one where all grokked.",
        stable_when="every run grokked with mean tokens", x_key="tokens", x_label="tokens",
        resolve=50_000.0),
    # A run's own steps to sweep.target (its first scheduled eval with val/loss <= target):
    # tunes toward Track 3's score; the entry's score itself is sweeper/track3.py's.
    dataclasses.replace(
        GROKKING_STEP, name="steps_to_target", label="steps to target", axis_label="steps to target",
        bad="did not reach the target", bad_short="not reached",
        bad_marks="did not reach the target / diverged",
        definition="Metric: each run's first scheduled evaluation step with val/loss <= "
                   "sweep.target (steps_to_target), mean ± std over the seeds that reached it "
                   "(n). A learning rate where some run diverged or did not reach it ranks behind "
                   "one where all did.",
        stable_when="every run reached the target with a mean step count",
        columns=(("reached_at_best", "reached at best lr"), ("reached_all", "reached, all lrs")),
        series=(Series("val/loss"),), y_label="validation loss", x_scale=None),
)}


LAUNCHERS = ("local", "slurm", "local_submitit")


@dataclass
class SlurmConfig:
    """sweep.slurm.*: what each point's SLURM job asks for (sweep.launcher=slurm; one node and one
    task a job, torchrun inside for sweep.nproc_per_run > 1). None leaves the cluster's default."""
    partition: Optional[str] = None
    time: int = 1440                     # minutes a job; a run past them is requeued and resumes
    gpus_per_node: Optional[int] = None  # None: sweep.nproc_per_run, or 0 for device=cpu runs
    cpus_per_task: Optional[int] = None  # the run's CPU threads follow: cpus_per_task / nproc_per_run
    mem: Optional[str] = None            # e.g. 64G
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    array_parallelism: int = 64          # jobs of the sweep's array that run at once
    signal_delay_s: int = 120            # the warning before the time limit: checkpoint, requeue
    max_requeue: int = 20                # time-outs a job may be requeued after (preemptions: any)
    setup: List[str] = field(default_factory=list)   # shell lines first, e.g. module load, source .venv/bin/activate
    additional: Dict[str, Any] = field(default_factory=dict)   # any other sbatch option: {option: value}

    def __post_init__(self):
        for name in ("time", "array_parallelism", "signal_delay_s"):
            if getattr(self, name) < 1:
                raise UserError(f"sweep.slurm.{name}={getattr(self, name)} must be at least 1")
        if self.signal_delay_s >= 60 * self.time:
            raise UserError(f"sweep.slurm.signal_delay_s={self.signal_delay_s} must be shorter than "
                            f"sweep.slurm.time={self.time} minutes")


@dataclass
class SweepConfig:
    """A learning-rate sweep of sweep.py: configs/sweep/<preset>.yaml, overridden by sweep.*."""
    name: str = "sweep"
    optimizers: List[str] = field(default_factory=lambda: ["adamw"])
    lrs: List[float] = field(default_factory=list)                   # lr grid of every optimizer
    lr_grid: Dict[str, List[float]] = field(default_factory=dict)    # per optimizer; wins over lrs
    grid: Dict[str, List[Any]] = field(default_factory=dict)         # extra axes: {override key: values}
    # Listed variants instead of (or times) the product of `grid`: each a {override key: value}
    # dict, its own curve per optimizer; for arms that are not a product (e.g. weight decay 0
    # once, not once per decay style).
    grid_points: List[Dict[str, Any]] = field(default_factory=list)
    # Per optimizer, listed variants that replace grid_points for that optimizer only, e.g.
    # {muon: [{}, {optimizer.ns: polar_express}, {optimizer.cautious_wd: true}]}: Muon's three
    # curves beside the other optimizers' one.
    grid_points_by_optimizer: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=lambda: [0])
    jobs: int = 1                        # runs at once
    nproc_per_run: int = 1               # processes per run (torchrun when > 1)
    # `python sweep.py plan`'s assumed throughput (sweeper/gpu_plan.py): this model FLOPs
    # utilization (an assumption, nanoGPT-like; counted as nanoGPT's estimate_mfu and the `mfu`
    # that train.py logs, so a measured run's replaces it) of a GPU's peak, H100 SXM's dense
    # bf16 989 TFLOP/s (NVIDIA's datasheet without sparsity; train.py's PEAK_FLOPS["H100"]).
    plan_mfu: float = 0.4
    plan_peak_flops: float = 9.89e14
    dir: Optional[str] = None            # results; None = sweeps/<name>
    overrides: List[str] = field(default_factory=list)               # train.py overrides of the setup
    target_loss: Optional[float] = None  # tokens-to-target; None = the worst optimizer's best loss
    tolerance: float = 0.05              # stable range: within this of the best (relative for grokking_step)
    metric: str = "final_val_loss"       # final_val_loss | grokking_step | grokking_tokens | steps_to_target
    # Held-out seeds (stage 2): each curve's stage-1 best lr x these seeds (disjoint from
    # `seeds`); the verdicts and speedups use them only. Empty: one stage, scored on `seeds`.
    confirm_seeds: List[int] = field(default_factory=list)
    confirm_neighbours: bool = False     # stage 2 also at the grid neighbours of the best lr
    # With sweep.tune: stage 2 also scores each curve whose tuning moved it at its untuned point
    # (the stage-1 best lr at the defaults; stage `untuned`) on the held-out seeds, so the report
    # says what the tuning bought, paired (tuned - untuned). Never used to rank or decide.
    confirm_untuned: bool = False
    max_extend: int = 3                  # grid extensions per curve while its best lr is at an end
    baseline: Optional[str] = None       # speedups relative to this optimizer; None: adamw if swept
    baseline_budgets: List[float] = field(default_factory=list)  # the baseline also at these x max_iters
    resolve: Optional[float] = None      # report the seeds that would resolve this difference; None: the metric's
    # Track 3's rule (sweeper/track3.py): with a target val loss, report.md adds each curve's
    # steps to it (the earliest scheduled eval step whose mean over the scored seeds passes the
    # one-sided z-test (target - mean) sqrt(n) >= z(1 - target_p) target_sigma), the pairwise
    # rule for every pair, and the paired interval on the final loss beside it.
    target: Optional[float] = None       # e.g. 3.28 (Track 3); None: no Track-3 section
    target_sigma: float = 0.0013         # Track 3's assumed seed std of the final val loss
    target_p: float = 0.001              # one-sided p of the z-test (3.09 sigma = 0.004)
    target_loss_per_step: float = 4.5e-5 # Track 3's exchange rate: 0.0045 nats per 100 steps
    # Which rule the report's headline rests on: paired (t interval of sweep.metric at the fixed
    # budget) or track3 (steps to sweep.target); null: track3 for metric=steps_to_target.
    decide: Optional[str] = None
    # Tuning beyond the lr, axis by axis (coordinate descent): after a curve's lr is bracketed at
    # the defaults, each axis' values run at the best point so far, on sweep.seeds;
    # a value replaces the default only when it beats it by more than sweep.resolve (the
    # metric's when unset). E.g. [{optimizer.weight_decay: [0.0, 0.05, 0.2]}]. Stage 2 scores the
    # tuned point. tune_by_optimizer.<name> replaces the axes for one optimizer ([]: tune only its lr).
    tune: List[Dict[str, List[Any]]] = field(default_factory=list)
    # Rounds of the descent: round 2 on sweeps the lr again (the best / and x the grid ratio),
    # then every axis, until a round moves nothing (sweeper/tuning.py). Each axis is bracketed
    # like the lr, up to sweep.max_extend values beyond its grid.
    max_rounds: int = 1
    tune_by_optimizer: Dict[str, List[Dict[str, List[Any]]]] = field(default_factory=dict)
    # How points run: local (train.py processes on this machine, sweep.jobs at once), slurm (a
    # SLURM job each, through submitit: sweeper/slurm.py), local_submitit (submitit's jobs on
    # this machine, sweep.jobs at once: the slurm path without a cluster).
    launcher: str = "local"
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    # Other sweeps' directories whose finished runs count here: a point that trains exactly as
    # one of their runs did (the same resolved config, sweeper/reuse.py) is copied, not trained.
    reuse: List[str] = field(default_factory=list)

    def __post_init__(self):
        """The checks that need nothing but the config (lr_grids() does the others)."""
        if not self.optimizers:
            from configs import config_groups

            known = config_groups().get("optimizer", [])
            raise UserError(f"sweep.optimizers is empty; give some of: {', '.join(known)}")
        for key, lrs in [("sweep.lrs", self.lrs)] + [(f"sweep.lr_grid.{opt}", lrs)
                                                     for opt, lrs in self.lr_grid.items()]:
            bad = [lr for lr in dict.fromkeys(lrs) if not (lr > 0 and math.isfinite(lr))]
            if bad:
                raise UserError(f"{key} holds non-positive learning rate(s) {bad}; every lr must be > 0")
        if not self.seeds:
            raise UserError("sweep.seeds is empty; give e.g. sweep.seeds=[0]")
        empty = [k for k, v in self.grid.items() if not v]
        if empty:
            raise UserError(f"sweep.grid.{empty[0]} has no values; give a list or drop the axis")
        unknown = sorted(set(self.grid_points_by_optimizer) - set(self.optimizers))
        if unknown:
            raise UserError(f"sweep.grid_points_by_optimizer.{unknown[0]}: {unknown[0]} is not in "
                            f"sweep.optimizers ({', '.join(self.optimizers)}); add it or drop the key")
        for where, points in [("sweep.grid_points", self.grid_points)] + [
                (f"sweep.grid_points_by_optimizer.{o}", v)
                for o, v in self.grid_points_by_optimizer.items()]:
            shared = sorted({k for gp in points for k in gp} & set(self.grid))
            if shared:
                raise UserError(f"{shared[0]} is both in sweep.grid and in {where}; "
                                "give each override key in one of them")
            if len({tuple(sorted((k, str(v)) for k, v in gp.items())) for gp in points}) \
                    < len(points):
                raise UserError(f"{where} lists the same variant twice; drop the repeat")
        for name in ("jobs", "nproc_per_run"):
            if getattr(self, name) < 1:
                raise UserError(f"sweep.{name}={getattr(self, name)} must be at least 1")
        if not (0 < self.plan_mfu <= 1 and self.plan_peak_flops > 0):
            raise UserError(f"sweep.plan_mfu={self.plan_mfu:g} must lie in (0, 1] and "
                            f"sweep.plan_peak_flops={self.plan_peak_flops:g} must be > 0")
        if self.metric not in METRICS:
            raise UserError(f"sweep.metric={self.metric!r} is not one of {', '.join(METRICS)}")
        if self.launcher not in LAUNCHERS:
            raise UserError(f"sweep.launcher={self.launcher!r} is not one of {', '.join(LAUNCHERS)}")
        if self.resolve is not None and not self.resolve > 0:
            raise UserError(f"sweep.resolve={self.resolve} must be > 0 (the smallest difference that "
                            "counts), or null for the metric's own")
        if self.tolerance < 0:
            raise UserError(f"sweep.tolerance={self.tolerance} must be >= 0")
        shared = sorted(set(self.seeds) & set(self.confirm_seeds))
        if shared:
            raise UserError(f"sweep.confirm_seeds shares seed(s) {shared} with sweep.seeds; held-out "
                            "seeds must be fresh: pick others")
        if self.max_rounds < 1:
            raise UserError(f"sweep.max_rounds={self.max_rounds} must be at least 1")
        if self.max_extend < 0:
            raise UserError(f"sweep.max_extend={self.max_extend} must be >= 0 (0: never extend)")
        if self.target is not None and not math.isfinite(self.target):
            raise UserError(f"sweep.target={self.target} must be a finite val loss, e.g. 3.28")
        if not self.target_sigma > 0 or not 0 < self.target_p < 0.5:
            raise UserError(f"sweep.target_sigma={self.target_sigma} must be > 0 and sweep.target_p="
                            f"{self.target_p} in (0, 0.5) (Track 3: 0.0013 and 0.001)")
        if self.decide not in (None, "paired", "track3"):
            raise UserError(f"sweep.decide={self.decide!r} is not one of paired, track3 (or null)")
        if self.metric == "steps_to_target" and self.target is None:
            raise UserError("sweep.metric=steps_to_target needs sweep.target=<val loss> "
                            "(Track 3: 3.28)")
        if self.rule == "track3" and self.target is None:
            raise UserError("Track 3's rule needs a target loss: give sweep.target=<val loss> "
                            "(Track 3: 3.28), or sweep.decide=paired")
        unknown = sorted(set(self.tune_by_optimizer) - set(self.optimizers))
        if unknown:
            raise UserError(f"sweep.tune_by_optimizer.{unknown[0]}: {unknown[0]} is not in "
                            f"sweep.optimizers; add it or drop the key")
        for where, axes in [("sweep.tune", self.tune)] + [
                (f"sweep.tune_by_optimizer.{o}", v) for o, v in self.tune_by_optimizer.items()]:
            for axis in axes:
                if len(axis) != 1 or not list(axis.values())[0]:
                    raise UserError(f"{where} holds {dict(axis)}: each axis is one key with a "
                                    "non-empty list of values, e.g. {optimizer.weight_decay: [0.0, 0.1]}")
                key = next(iter(axis))
                if key in ("optimizer", "optimizer.lr", "seed") or key in self.grid:
                    raise UserError(f"{where} tunes {key}, which the sweep already varies; "
                                    "drop it there")
        bad = [b for b in self.baseline_budgets if not (b > 0 and math.isfinite(b))]
        if bad:
            raise UserError(f"sweep.baseline_budgets holds {bad}; each is a positive multiple of "
                            "train.max_iters, e.g. [0.25,0.5,2]")

    @property
    def rule(self) -> str:
        """The rule the headline verdicts rest on: "paired" or "track3"."""
        return self.decide or ("track3" if self.metric == "steps_to_target" else "paired")

    def tune_axes(self, optimizer: str) -> List[Tuple[str, List[Any]]]:
        """[(key, values)] tuned for `optimizer` after its lr, in order."""
        axes = self.tune_by_optimizer.get(optimizer, self.tune)
        return [next(iter(a.items())) for a in axes]

    @property
    def path(self) -> Path:
        """sweep.dir, absolute."""
        return Path(self.dir if self.dir else f"sweeps/{self.name}").expanduser().resolve()


def lr_grids(cfg: SweepConfig) -> Dict[str, List[float]]:
    """Each optimizer's lr grid, ascending, once the command line is applied (see load_sweep);
    refuses unknown optimizers and an optimizer without lrs."""
    from configs import config_groups

    known = config_groups().get("optimizer", [])
    unknown = [o for o in cfg.optimizers if o not in known]
    if unknown:
        raise UserError(f"unknown optimizer(s) {', '.join(unknown)} in sweep.optimizers; "
                        f"known: {', '.join(known)}")
    stray = [o for o in cfg.lr_grid if o not in known]
    if stray:
        raise UserError(f"sweep.lr_grid has unknown optimizer(s) {', '.join(stray)}; "
                        f"known: {', '.join(known)}")
    if cfg.baseline is not None and cfg.baseline not in cfg.optimizers:
        raise UserError(f"sweep.baseline={cfg.baseline} is not in sweep.optimizers "
                        f"({', '.join(cfg.optimizers)}); add it or pick one of them")
    grids = {}
    for opt in dict.fromkeys(cfg.optimizers):
        key = f"sweep.lr_grid.{opt}" if opt in cfg.lr_grid else "sweep.lrs"
        lrs = list(dict.fromkeys(cfg.lr_grid.get(opt, cfg.lrs)))
        if not lrs:
            raise UserError(f"no learning rates for {opt}: {key} is empty; give e.g. "
                            "sweep.lrs=[1e-3,3e-3]")
        grids[opt] = sorted(lrs)
    return grids


def override_key(arg: str) -> str:
    """The key of a command-line override: `+a.b=1` -> `a.b`."""
    return arg.split("=", 1)[0].lstrip("+~")


def load_sweep(sweep_args: List[str]):
    """The SweepConfig of `sweep=<preset> sweep.<key>=...` (lrs on the command line clears
    lr_grid; optimizers there drops the preset's grid_points_by_optimizer of the others), and
    the keys given on the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict

    from configs import load_config, to_object

    # Hydra merges a dict given on the command line into the preset's and refuses new keys
    # without `++`; the sweep's dicts (sweep.grid={...}, sweep.lr_grid={...},
    # sweep.grid_points_by_optimizer={...}, sweep.tune_by_optimizer={...}) replace instead.
    per_optimizer = ("grid_points_by_optimizer", "tune_by_optimizer")
    dicts = ("sweep.grid", "sweep.lr_grid") + tuple(f"sweep.{n}" for n in per_optimizer)
    args = []
    for arg in sweep_args:
        key = override_key(arg)
        if key in dicts or key.startswith(("sweep.lr_grid.",) + tuple(f"sweep.{n}." for n in per_optimizer)):
            arg = "++" + arg.lstrip("+")
        args.append(arg)
    node = load_config(args, config_name="sweep")
    whole = {override_key(a).split(".")[1]: set(OverridesParser.create().parse_overrides([a])[0]
                                                 .value())   # composed fine, so it parses
             for a in args if override_key(a) in dicts}
    given = {override_key(a) for a in args}
    if "sweep.optimizers" in given:
        # the preset's variants and tuning of the optimizers the command line leaves out go (as
        # their lr_grid)
        for name in per_optimizer:
            named = whole.get(name, set()) | {
                k.split(".")[2] for k in given if k.startswith(f"sweep.{name}.")}
            keep = whole.get(name, set(node.sweep[name]))
            whole[name] = {o for o in keep if o in node.sweep.optimizers or o in named}
    with open_dict(node.sweep):
        for name, keys in whole.items():
            for k in [k for k in node.sweep[name] if k not in keys]:
                del node.sweep[name][k]
    cfg = to_object(node).sweep
    cli_keys = {override_key(a).split(".", 1)[1].split(".")[0] for a in sweep_args
                if override_key(a).startswith("sweep.")}
    if "lrs" in cli_keys:
        cfg.lr_grid = {}
    return cfg, cli_keys


# The fields a report reads: the stored sweep's, unless given on the command line.
REPORT_FIELDS = ("name", "optimizers", "metric", "tolerance", "target_loss", "seeds", "confirm_seeds",
                 "baseline", "resolve", "grid", "grid_points", "grid_points_by_optimizer",
                 "target", "target_sigma", "target_p", "target_loss_per_step", "decide", "tune",
                 "tune_by_optimizer", "max_rounds", "max_extend")


def stored_config(cli_cfg: SweepConfig, cli_keys: set, stored: dict) -> SweepConfig:
    """The config a report uses: the command line's, with the stored sweep's REPORT_FIELDS
    (their defaults where sweep.json lacks them) unless given on the command line. A sweep
    dir's own: stored_config(SweepConfig(dir=d), {"dir"}, read_sweep(d))."""
    defaults = SweepConfig()
    # (stored["sweep"].get(k) or the default for `optimizers`: never an empty list)
    return dataclasses.replace(cli_cfg, **{
        k: (stored["sweep"].get(k) or defaults.optimizers) if k == "optimizers"
        else stored["sweep"].get(k, getattr(defaults, k))
        for k in REPORT_FIELDS if k not in cli_keys})


@dataclass
class SweepFile:
    """The root of configs/sweep.yaml."""
    sweep: SweepConfig = field(default_factory=SweepConfig)


register_root("sweep", SweepFile, store_as="sweep_schema")
