"""Learning-rate sweeps: many train.py runs, one results table, stability curves, a ranking.

    python sweep.py sweep=cpu_ordering                         # baby GPT, 4 optimizers x 7 lrs
    python sweep.py sweep=cpu_ordering sweep.seeds=[0,1,2] sweep.jobs=2
    python sweep.py sweep=namo_gpt2 sweep.optimizers=[adamw,namo_d] wandb.enabled=true
    python sweep.py sweep=cpu_ordering sweep.lrs=[1e-3,3e-3] train.max_iters=400 sweep.dir=sweeps/short
    python sweep.py report sweep.dir=sweeps/cpu_ordering       # rebuild the outputs from what finished
    python sweep.py export-wandb sweep=namo_gpt2                # the same grid as W&B sweep YAML

Arguments `sweep=<preset>` and `sweep.<key>=...` configure the sweep (configs/sweep.yaml, the
presets configs/sweep/*.yaml, the schema SweepConfig in configs/schema.py). Every other argument
is a train.py override applied to every run, after the preset's `sweep.overrides` (optimizer=,
optimizer.lr= and seed= are refused there: they are what sweep.optimizers/lrs/seeds vary).

Learning rates: an optimizer's grid is `sweep.lr_grid.<optimizer>` where the preset has one, else
`sweep.lrs`. `sweep.lrs=[...]` given on the command line replaces every grid (lr_grid is ignored).
More axes: `sweep.grid={optimizer.clamp_c:[0.12,0.4]}` runs every value (replacing a fixed
override of the same key); each value is its own curve.

Runs: each point (optimizer, lr, grid values, seed) is one train.py process (torchrun when
sweep.nproc_per_run > 1) with out_dir <sweep.dir>/runs/<run id>; the id is a readable prefix and
a hash of the run's overrides, so the same point is never run twice. Up to sweep.jobs run at
once, each on its own GPUs (CUDA_VISIBLE_DEVICES) or its share of the CPU cores (threads=).
Re-running the same command resumes: completed and diverged runs are kept, the others (never
started, interrupted, failed) are launched with resume=true. A lock held while a run's process
lives keeps a run left behind by a killed launcher from being started a second time.
A diverged or failed run is a result, recorded with its status and error; the sweep goes on.

Outputs in sweep.dir, rebuilt by `report` from whatever has finished: results.csv (a row per
run), lr_curves.png (metric vs lr per optimizer, spread over seeds, x = diverged), best_curves.png
(the runs at each optimizer's best lr), report.md (best lr, stable range, tokens to a target
loss, ranking). sweep.json holds the sweep's identity: another sweep's directory is refused.
"""
from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from configs.errors import UserError

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
METRICS = ("final_val_loss", "grokking_step")
SUMMARY_FIELDS = ("status", "final_val_loss", "best_val_loss", "steps", "tokens", "wall_s",
                  "tokens_per_s", "diverged_at_step")
# Keys that change how a run is launched or logged, not what it computes: left out of the run
# id and of the sweep's identity, so that e.g. turning W&B on does not start the sweep over.
LAUNCH_KEYS = ("out_dir", "resume", "overwrite", "threads")
SET_BY_SWEEP = ("out_dir", "resume", "overwrite")
SWEPT = {"optimizer": "sweep.optimizers=[...]", "optimizer.lr": "sweep.lrs=[...]",
         "seed": "sweep.seeds=[...]"}


# ---------------------------------------------------------------------------------------------
# Arguments and config

def override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


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


def load_sweep(sweep_args: list[str]):
    """The SweepConfig of `sweep=<preset> sweep.<key>=...` (lrs on the command line clears
    lr_grid), and the keys given on the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from configs import load_config, to_object

    # Hydra merges a dict given on the command line into the preset's and refuses new keys
    # without `++`; the sweep's dicts (sweep.grid={...}, sweep.lr_grid={...}) replace instead.
    args = []
    for arg in sweep_args:
        key = override_key(arg)
        if key in ("sweep.grid", "sweep.lr_grid") or key.startswith("sweep.lr_grid."):
            arg = "++" + arg.lstrip("+")
        args.append(arg)
    cfg = to_object(load_config(args, config_name="sweep")).sweep
    for arg in args:
        key = override_key(arg)
        if key in ("sweep.grid", "sweep.lr_grid"):  # composed fine, so it parses
            given = OverridesParser.create().parse_overrides([arg])[0].value()
            field = key.split(".")[1]
            setattr(cfg, field, {k: v for k, v in getattr(cfg, field).items() if k in given})
    cli_keys = {override_key(a).split(".", 1)[1].split(".")[0] for a in sweep_args
                if override_key(a).startswith("sweep.")}
    if "lrs" in cli_keys:
        cfg.lr_grid = {}
    return cfg, cli_keys


def sweep_dir(cfg) -> Path:
    return Path(cfg.dir if cfg.dir else f"sweeps/{cfg.name}").expanduser().resolve()


def check_sweep(cfg) -> dict[str, list[float]]:
    """Every input the sweep itself takes; returns each optimizer's lr grid."""
    from configs import config_groups

    known = config_groups().get("optimizer", [])
    if not cfg.optimizers:
        raise UserError(f"sweep.optimizers is empty; give some of: {', '.join(known)}")
    unknown = [o for o in cfg.optimizers if o not in known]
    if unknown:
        raise UserError(f"unknown optimizer(s) {', '.join(unknown)} in sweep.optimizers; "
                        f"known: {', '.join(known)}")
    stray = [o for o in cfg.lr_grid if o not in known]
    if stray:
        raise UserError(f"sweep.lr_grid has unknown optimizer(s) {', '.join(stray)}; "
                        f"known: {', '.join(known)}")
    grids = {}
    for opt in dict.fromkeys(cfg.optimizers):
        key = f"sweep.lr_grid.{opt}" if opt in cfg.lr_grid else "sweep.lrs"
        lrs = list(dict.fromkeys(cfg.lr_grid.get(opt, cfg.lrs)))
        if not lrs:
            raise UserError(f"no learning rates for {opt}: {key} is empty; give e.g. "
                            "sweep.lrs=[1e-3,3e-3]")
        bad = [lr for lr in lrs if not (lr > 0 and math.isfinite(lr))]
        if bad:
            raise UserError(f"{key} holds non-positive learning rate(s) {bad}; every lr must be > 0")
        grids[opt] = sorted(lrs)
    if not cfg.seeds:
        raise UserError("sweep.seeds is empty; give e.g. sweep.seeds=[0]")
    empty = [k for k, v in cfg.grid.items() if not v]
    if empty:
        raise UserError(f"sweep.grid.{empty[0]} has no values; give a list or drop the axis")
    for name in ("jobs", "nproc_per_run"):
        if getattr(cfg, name) < 1:
            raise UserError(f"sweep.{name}={getattr(cfg, name)} must be at least 1")
    if cfg.metric not in METRICS:
        raise UserError(f"sweep.metric={cfg.metric!r} is not one of {', '.join(METRICS)}")
    if cfg.tolerance < 0:
        raise UserError(f"sweep.tolerance={cfg.tolerance} must be >= 0")
    return grids


# ---------------------------------------------------------------------------------------------
# The points of a sweep

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

    @property
    def curve(self) -> str:
        return curve_label(self.optimizer, self.grid)


def curve_label(optimizer: str, grid: dict) -> str:
    return " ".join([optimizer] + [f"{k.rsplit('.', 1)[-1]}={hydra_value(v)}"
                                   for k, v in sorted(grid.items())])


def make_run_id(optimizer: str, lr: float, seed: int, grid: dict, overrides: list[str]) -> str:
    digest = hashlib.sha1("\n".join(canonical(overrides)).encode()).hexdigest()[:8]
    axes = "".join(f"_{k.rsplit('.', 1)[-1]}{hydra_value(v)}" for k, v in sorted(grid.items()))
    readable = "".join(c if c.isalnum() or c in ".+-_" else "-"
                       for c in f"{optimizer}_lr{short_float(lr)}{axes}_s{seed}")
    return f"{readable}_{digest}"


def make_points(cfg, grids: dict, setup: list[str]) -> list[Point]:
    """Seed-major order, so a sweep interrupted early has whole curves for its first seeds."""
    import itertools

    axes = sorted(cfg.grid)
    points = []
    for seed in cfg.seeds:
        for opt, lrs in grids.items():
            for values in itertools.product(*(cfg.grid[k] for k in axes)):
                grid = dict(zip(axes, values))
                for lr in lrs:
                    own = [f"optimizer={opt}", f"optimizer.lr={hydra_value(float(lr))}",
                           f"seed={seed}"] + [f"{k}={hydra_value(v)}" for k, v in grid.items()]
                    overrides = canonical(setup + own)
                    points.append(Point(opt, float(lr), int(seed), grid, overrides,
                                        make_run_id(opt, float(lr), seed, grid, overrides)))
    return points


def validate_points(points: list[Point], launch: list[str], runs_dir: Path):
    """Compose the runs' configs before anything starts; returns the first one's config.
    One run per optimizer and grid value stands for all: the others differ only in the lr and
    the seed, numbers written here (check_sweep checked the lrs)."""
    from configs import load_config, to_object

    first, seen = None, set()
    for p in points:
        kind = (p.optimizer, tuple(sorted((k, hydra_value(v)) for k, v in p.grid.items())))
        if kind in seen:
            continue
        seen.add(kind)
        try:
            cfg = load_config(p.overrides + launch + [f"out_dir={runs_dir / p.run_id}", "resume=true"])
            to_object(cfg)
        except UserError as exc:
            raise UserError(f"{exc} (in run {p.run_id})") from None
        first = first if first is not None else cfg
    return first


def launch_overrides(cfg, train_args: list[str], wandb_enabled: bool) -> list[str]:
    """The overrides of how runs are launched and logged, the same for every run: the user's
    threads and wandb.*, and, with W&B on, the sweep's name as the W&B group."""
    launch = [a for a in list(cfg.overrides) + train_args if is_launch_key(override_key(a))]
    if wandb_enabled and "wandb.group" not in {override_key(a) for a in launch}:
        launch.append(f"wandb.group={cfg.name}")
    return launch


def run_args(p: Point, run_dir: Path, launch: list[str], threads: int, wandb: bool) -> list[str]:
    keys = {override_key(a) for a in launch}
    args = p.overrides + launch + [f"out_dir={run_dir}", "resume=true"]
    if "threads" not in keys:
        args.append(f"threads={threads}")
    if wandb and "wandb.name" not in keys:
        args.append(f"wandb.name={p.run_id}")
    return args


# ---------------------------------------------------------------------------------------------
# The sweep directory

def write_atomic(path: Path, data: bytes | str) -> None:
    data = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def check_identity(d: Path, name: str, setup: list[str]) -> None:
    """Refuse a sweep.dir that holds another sweep's results (or anything but a sweep)."""
    stored = read_json(d / "sweep.json")
    if stored is not None:
        if (stored.get("name"), stored.get("setup")) != (name, setup):
            raise UserError(
                f"sweep.dir={d} holds the results of another sweep ({stored.get('name')}: "
                f"{' '.join(stored.get('setup') or []) or 'no overrides'}); pass "
                f"sweep.dir=<new path> for this one ({name}: {' '.join(setup) or 'no overrides'})")
    elif d.exists() and any(d.iterdir()):
        raise UserError(f"sweep.dir={d} is not empty and holds no sweep.json (not a sweep's "
                        "directory); pass sweep.dir=<new path>")


class RunLock:
    """flock on <run dir>/sweep.lock. The run's process inherits the locked descriptor, so the
    lock is held while the launcher OR the run lives: a run left behind by a SIGKILLed launcher
    keeps it, and a re-run waits for that run instead of starting the point again."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "sweep.lock"
        self.fd = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def note(self, info: dict) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def held_elsewhere(self) -> dict | None:
        """The holder's note when another process holds the lock, else None."""
        if not self.path.exists():
            return None
        if self.acquire():
            self.release()
            return None
        return read_json(self.path) or {}


def finished(run_dir: Path) -> bool:
    """Completed or diverged: a result to keep. Failed runs are retried by a re-run."""
    summary = read_json(run_dir / "summary.json")
    return summary is not None and summary.get("status") in ("completed", "diverged")


def log_error(path: Path) -> str:
    """The error of a failed run from the end of its train.log: the last exception line of a
    traceback, else the last two lines."""
    try:
        text = path.read_text(errors="replace")[-20_000:]
    except FileNotFoundError:
        return ""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()][-30:]
    errors = [ln for ln in lines if ln.startswith("error: ") or
              ln.split(":", 1)[0].endswith(("Error", "Exception", "Interrupt"))]
    return (errors[-1] if errors else " | ".join(lines[-2:]))[:500]


# ---------------------------------------------------------------------------------------------
# Running

def resources(cfg) -> tuple[list[str], int]:
    """(GPU ids to hand out, CPU threads per process); refuses more at once than there is."""
    import torch

    cores = len(os.sched_getaffinity(0))
    at_once = cfg.jobs * cfg.nproc_per_run
    gpus = []
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = (visible.split(",") if visible else
                [str(i) for i in range(torch.cuda.device_count())])[:torch.cuda.device_count()]
        if at_once > len(gpus):
            raise UserError(f"sweep.jobs={cfg.jobs} x sweep.nproc_per_run={cfg.nproc_per_run} "
                            f"needs {at_once} GPUs at once, {len(gpus)} visible; lower sweep.jobs")
    elif at_once > cores:
        raise UserError(f"sweep.jobs={cfg.jobs} x sweep.nproc_per_run={cfg.nproc_per_run} is "
                        f"{at_once} processes at once on {cores} CPU cores; lower sweep.jobs")
    return gpus, max(1, cores // cfg.jobs // cfg.nproc_per_run)


@dataclass
class Launched:
    point: Point
    proc: subprocess.Popen
    lock: RunLock
    gpus: list
    log: io.IOBase


def default_sigint() -> None:
    """A launcher started in the background (`nohup ... &`) ignores SIGINT, and children inherit
    that; restore it so that the SIGINT of stop_runs lets a run stop cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(p: Point, run_dir: Path, lock: RunLock, args: list[str], gpus: list[str],
              threads: int, nproc: int) -> Launched:
    summary = read_json(run_dir / "summary.json")
    if summary is not None:  # a failed attempt's summary: this attempt will write its own
        (run_dir / "summary.json").unlink()
    (run_dir / "exit.json").unlink(missing_ok=True)
    write_atomic(run_dir / "point.json", json.dumps(dataclasses.asdict(p), indent=1) + "\n")
    cmd = [sys.executable, str(TRAIN_SCRIPT)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(TRAIN_SCRIPT)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    log = open(run_dir / "train.log", "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} sweep.py launches: "
              f"{' '.join(cmd + args)}\n")
    log.flush()
    # Own session: Ctrl-C reaches the launcher only, which stops the runs itself (see stop_runs).
    proc = subprocess.Popen(cmd + args, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, pass_fds=(lock.fd,),
                            start_new_session=True, preexec_fn=default_sigint)
    lock.note({"launcher_pid": os.getpid(), "pid": proc.pid, "gpus": gpus, "started": time.time()})
    return Launched(p, proc, lock, gpus, log)


def end_run(run: Launched, run_dir: Path) -> str:
    """Record how a run's process ended; returns its status."""
    run.log.close()
    rc = run.proc.returncode
    summary = read_json(run_dir / "summary.json") or {}
    status = summary.get("status") if summary.get("status") in ("completed", "diverged") else "failed"
    error = None
    if status == "failed":
        why = f"exit code {rc}" if rc >= 0 else f"killed by signal {-rc}"
        error = f"{why}: {log_error(run_dir / 'train.log') or summary.get('error') or 'no output'}"
    write_atomic(run_dir / "exit.json", json.dumps({"returncode": rc, "status": status,
                                                    "error": error, "ended": time.time()}) + "\n")
    run.lock.release()
    return status


def stop_runs(running: dict[str, Launched], grace_s: float = 20.0) -> None:
    """Ctrl-C: SIGINT to each run's process group (torchrun passes it on), SIGKILL after
    grace_s. A stopped run has no summary.json: the next invocation resumes it."""
    for run in running.values():
        with suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGINT)
    deadline = time.time() + grace_s
    for run in running.values():
        try:
            run.proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
        run.log.close()
        run.lock.release()


def run_points(cfg, points: list[Point], d: Path, launch: list[str], wandb: bool,
               gpus: list[str], threads: int) -> bool:
    """Runs every unfinished point, sweep.jobs at a time. Returns False when interrupted."""
    from tqdm.auto import tqdm

    runs_dir = d / "runs"
    todo = [p for p in points if not finished(runs_dir / p.run_id)]
    running: dict[str, Launched] = {}
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc=cfg.name, unit="run",
               dynamic_ncols=True, smoothing=0.1)
    counts = {"completed": 0, "diverged": 0, "failed": 0}
    try:
        while todo or running:
            for rid, run in list(running.items()):
                if run.proc.poll() is not None:
                    status = end_run(run, runs_dir / rid)
                    counts[status] += 1
                    del running[rid]
                    bar.update(1)
                    if status != "completed":
                        bar.write(f"{rid}: {status}")
                    write_results(d, collect(d))
            # Runs of an earlier launcher that still live take their slot and their GPUs.
            elsewhere = {p.run_id: h for p in todo
                         if (h := RunLock(runs_dir / p.run_id).held_elsewhere()) is not None}
            busy = {g for h in elsewhere.values() for g in h.get("gpus") or []}
            free = [g for g in gpus if g not in busy and
                    not any(g in r.gpus for r in running.values())]
            slots = cfg.jobs - len(running) - len(elsewhere)
            for p in [p for p in todo if p.run_id not in elsewhere]:
                if slots <= 0 or (gpus and len(free) < cfg.nproc_per_run):
                    break
                run_dir = runs_dir / p.run_id
                run_dir.mkdir(parents=True, exist_ok=True)
                lock = RunLock(run_dir)
                if not lock.acquire():
                    continue
                todo.remove(p)
                if finished(run_dir):  # an earlier launcher's run ended since we looked
                    lock.release()
                    bar.update(1)
                    continue
                take = free[:cfg.nproc_per_run] if gpus else []
                free = free[len(take):]
                running[p.run_id] = start_run(p, run_dir, lock,
                                              run_args(p, run_dir, launch, threads, wandb),
                                              take, threads, cfg.nproc_per_run)
                slots -= 1
            bar.set_postfix_str(f"running {len(running)}"
                                + (f" (+{len(elsewhere)} of an earlier launcher)" if elsewhere else "")
                                + f", left {len(todo) - len(elsewhere)}", refresh=False)
            bar.refresh()
            time.sleep(0.5)
    except KeyboardInterrupt:
        bar.write(f"interrupted: stopping {len(running)} run(s); "
                  "re-run the same command to resume them")
        stop_runs(running)
        bar.close()
        return False
    bar.close()
    print(f"{cfg.name}: this invocation ran {sum(counts.values())} run(s): "
          + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return True


# ---------------------------------------------------------------------------------------------
# Results

def collect(d: Path) -> list[dict]:
    """One row per run directory holding a point.json (every run this sweep.dir has seen)."""
    rows = []
    for point_file in sorted((d / "runs").glob("*/point.json")):
        run_dir = point_file.parent
        point = read_json(point_file)
        if point is None:
            continue
        summary = read_json(run_dir / "summary.json") or {}
        ended = read_json(run_dir / "exit.json") or {}
        status, error = summary.get("status"), None
        if status not in ("completed", "diverged"):
            if status == "failed" or ended.get("status") == "failed":
                status = "failed"
                error = ended.get("error") or summary.get("error") or log_error(run_dir / "train.log")
            else:
                status = "running" if RunLock(run_dir).held_elsewhere() is not None else "unfinished"
        row = {"run_id": point["run_id"], "curve": curve_label(point["optimizer"], point["grid"]),
               "optimizer": point["optimizer"], "lr": point["lr"], "seed": point["seed"],
               **point["grid"]}
        row.update({k: summary.get(k) for k in SUMMARY_FIELDS[1:]}, status=status)
        row.update({k: v for k, v in summary.items() if k not in row and k != "error"
                    and not isinstance(v, (dict, list))})
        row.update(error=error, _dir=run_dir, _axes=list(point["grid"]))
        rows.append(row)
    return rows


def write_results(d: Path, rows: list[dict]) -> None:
    first = ["run_id", "optimizer", "lr", "seed"]
    axes = sorted({k for r in rows for k in r["_axes"]})
    known = set(first + axes + list(SUMMARY_FIELDS)) | {"curve", "error", "_dir", "_axes"}
    extra = sorted({k for r in rows for k in r} - known)   # the task's, e.g. grokking_step
    columns = first + axes + list(SUMMARY_FIELDS) + extra + ["error"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in sorted(rows, key=lambda r: (r["curve"], r["lr"], r["seed"])):
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    write_atomic(d / "results.csv", out.getvalue())


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


def lr_stats(rows: list[dict], metric: str) -> dict[str, list[LrStats]]:
    """{curve: [stats per lr, ascending]} over the completed and diverged runs."""
    by = {}
    for r in rows:
        if r["status"] in ("completed", "diverged"):
            by.setdefault(r["curve"], {}).setdefault(r["lr"], []).append(r)
    out = {}
    for curve, per_lr in sorted(by.items()):
        out[curve] = []
        for lr, runs in sorted(per_lr.items()):
            values = [r[metric] for r in runs if r["status"] == "completed"
                      and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
            out[curve].append(LrStats(lr, values, runs, len(runs) - len(values)))
    return out


def best_and_range(stats: list[LrStats], metric: str, tolerance: float):
    """(best lr's stats, stable lrs). Best: fewest diverged (or ungrokked) runs, then the best
    mean. Stable: the contiguous lrs around the best where no run diverged (all grokked) and the
    mean is within tolerance of the best (relative, for grokking_step)."""
    candidates = [s for s in stats if s.values]
    if not candidates:
        return None, []
    best = min(candidates, key=lambda s: (s.bad_share, s.mean))
    if best.n_bad:
        return best, []
    limit = best.mean * (1 + tolerance) if metric == "grokking_step" else best.mean + tolerance
    ok = [bool(s.values) and s.n_bad == 0 and s.mean <= limit for s in stats]
    i = j = stats.index(best)
    while i > 0 and ok[i - 1]:
        i -= 1
    while j < len(stats) - 1 and ok[j + 1]:
        j += 1
    return best, stats[i:j + 1]


def read_metrics(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def tokens_to_target(runs: list[dict], target: float) -> tuple[float | None, int, int]:
    """(mean tokens at the first eval with val/loss <= target over the runs that got there,
    how many got there, how many runs)."""
    reached = []
    for r in runs:
        for rec in read_metrics(r["_dir"]):
            if rec.get("val/loss") is not None and rec["val/loss"] <= target:
                reached.append(rec["tokens"])
                break
    return (sum(reached) / len(reached) if reached else None), len(reached), len(runs)


def fmt(x, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_tokens(x: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def summarize(rows: list[dict], cfg) -> dict:
    """Everything report.md and the plots show."""
    stats = lr_stats(rows, cfg.metric)
    curves = {}
    for curve, per_lr in stats.items():
        best, stable = best_and_range(per_lr, cfg.metric, cfg.tolerance)
        if best is not None:
            curves[curve] = {"best": best, "stable": stable, "per_lr": per_lr}
    ranked = sorted(curves, key=lambda c: (curves[c]["best"].bad_share, curves[c]["best"].mean))
    target = None
    if cfg.metric == "final_val_loss" and curves:
        target = cfg.target_loss if cfg.target_loss is not None else \
            max(c["best"].mean for c in curves.values())
        for c in curves.values():
            c["to_target"] = tokens_to_target(
                [r for r in c["best"].runs if r["status"] == "completed"], target)
    return {"stats": stats, "curves": curves, "ranked": ranked, "target": target}


def compare(a: LrStats, b: LrStats, metric: str) -> str:
    """Whether b is behind a by more than the seed spread (mean +- std bands do not overlap)."""
    what = "diverged" if metric == "final_val_loss" else "did not grok"
    if a.bad_share != b.bad_share:
        return f"{b.n_bad}/{b.n} runs {what} at its best lr, against {a.n_bad}/{a.n}"
    gap = b.mean - a.mean
    unit = "steps" if metric == "grokking_step" else "nats"
    if len(a.values) < 2 or len(b.values) < 2:
        return f"behind by {gap:.4g} {unit}; one seed, so the seed spread is unknown"
    spread = a.std + b.std
    verdict = "exceeds" if gap > spread else "is within"
    return (f"behind by {gap:.4g} {unit}, which {verdict} the seed spread "
            f"(std {a.std:.3g} + {b.std:.3g} = {spread:.3g})")


def neighbour_costs(c: dict) -> str:
    """How much a grid step off the best lr costs, down and up: the robustness a tolerance-based
    width misses on a coarse grid. '+0.07 (/4) / +0.24 (x4)'; 'edge' where the grid ends."""
    per_lr, best = c["per_lr"], c["best"]
    i = per_lr.index(best)
    out = []
    for j, sign in ((i - 1, "/"), (i + 1, "x")):
        if not 0 <= j < len(per_lr):
            out.append("edge")
            continue
        st, ratio = per_lr[j], max(per_lr[j].lr, best.lr) / min(per_lr[j].lr, best.lr)
        cost = f"+{st.mean - best.mean:.3f}" if st.values and not st.n_bad else f"{st.n_bad}/{st.n} diverged"
        out.append(f"{cost} ({sign}{ratio:.2g})")
    return " / ".join(out)


def report_markdown(rows: list[dict], cfg, setup: list[str], s: dict) -> str:
    grok = cfg.metric == "grokking_step"
    count = {k: sum(r["status"] == k for r in rows)
             for k in ("completed", "diverged", "failed", "running", "unfinished")}
    lines = [f"# Sweep `{cfg.name}`", "",
             f"Setup of every run (train.py overrides): `{' '.join(setup) or '(defaults)'}`", "",
             f"Runs: {len(rows)} ({', '.join(f'{v} {k}' for k, v in count.items() if v)}); "
             "a row each in results.csv. Curves: lr_curves.png, best_curves.png.", ""]
    if grok:
        lines += ["Metric: the step at which validation accuracy reached the threshold "
                  "(grokking_step), mean ± std over the seeds that grokked (n). A learning rate "
                  "where some run diverged or did not grok ranks behind one where all grokked.",
                  f"Stable range: the contiguous lrs around the best where every run grokked "
                  f"with a mean grokking step within {cfg.tolerance:.0%} of the best.", ""]
    else:
        lines += ["Metric: the final validation loss at the end of training (after the lr "
                  "decay), mean ± std over seeds (n). A learning rate where some seed diverged "
                  "ranks behind one where none did.",
                  f"Stable range: the contiguous lrs around the best where no seed diverged and "
                  f"the mean is within {cfg.tolerance:g} of the best.",
                  "One grid step off: the mean loss at the next lower / higher lr of the grid "
                  "minus the best (the lr ratio in brackets), the cost of missing the best lr.",
                  f"Tokens to target: the first evaluation with val/loss <= {fmt(s['target'])} "
                  + ("(sweep.target_loss)" if cfg.target_loss is not None else
                     "(the worst optimizer's best final loss)")
                  + ", at each optimizer's best lr, mean over the seeds that reached it.", ""]
    header = ["rank", "optimizer", "best lr",
              "grokking step" if grok else "final val loss", "stable lrs", "width (decades)"]
    header += ["grokked at best lr", "grokked, all lrs"] if grok else \
        ["one grid step off", f"tokens to {fmt(s['target'])}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, curve in enumerate(s["ranked"], 1):
        c = s["curves"][curve]
        b = c["best"]
        value = f"{b.mean:.{0 if grok else 4}f} ± {fmt(b.std, 0 if grok else 4)} (n={len(b.values)})"
        if c["stable"]:
            lo, hi = c["stable"][0].lr, c["stable"][-1].lr
            n = len(c["stable"])
            stable = f"{lo:.3g}..{hi:.3g} ({n} lr{'s' if n > 1 else ''})"
            width = f"{math.log10(hi / lo):.2f}"
        else:
            stable, width = "none", "-"
        cells = [str(rank), curve, f"{b.lr:.3g}", value, stable, width]
        if grok:
            runs = [r for st in c["per_lr"] for r in st.runs]
            grokked = sum(len(st.values) for st in c["per_lr"])
            cells += [f"{len(b.values)}/{b.n}", f"{grokked}/{len(runs)}"]
        else:
            mean, k, n = c["to_target"]
            cells += [neighbour_costs(c), "not reached" if mean is None else f"{fmt_tokens(mean)} ({k}/{n} seeds)"]
        lines.append("| " + " | ".join(cells) + " |")
    if len(s["ranked"]) > 1:
        lines += ["", "## Ranking", ""]
        for a, b in zip(s["ranked"], s["ranked"][1:]):
            lines.append(f"- {b} after {a}: "
                         + compare(s["curves"][a]["best"], s["curves"][b]["best"], cfg.metric))
    if s["stats"]:
        curves = list(s["stats"])
        lrs = sorted({st.lr for per in s["stats"].values() for st in per})
        lines += ["", "## Every learning rate", "",
                  "mean ± std (runs that finished; diverged or did not grok: marked)", "",
                  "| lr | " + " | ".join(curves) + " |", "|" + "---|" * (len(curves) + 1)]
        for lr in lrs:
            cells = []
            for curve in curves:
                st = next((x for x in s["stats"][curve] if x.lr == lr), None)
                if st is None:
                    cells.append("")
                    continue
                cell = f"{st.mean:.{0 if grok else 4}f} ± {fmt(st.std, 0 if grok else 4)}" \
                    if st.values else ""
                if st.n_bad:
                    cell += f" ({st.n_bad}/{st.n} {'no grok' if grok else 'diverged'})"
                cells.append(cell.strip())
            lines.append(f"| {lr:.3g} | " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- `{r['run_id']}`: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buf.getvalue())


def plot_lr_curves(s: dict, cfg, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (curve, per_lr) in enumerate(s["stats"].items()):
        color = f"C{i % 10}"
        ok = [st for st in per_lr if st.values]
        if ok:
            ax.plot([st.lr for st in ok], [st.mean for st in ok], "o-", color=color, label=curve)
            ax.fill_between([st.lr for st in ok], [min(st.values) for st in ok],
                            [max(st.values) for st in ok], color=color, alpha=0.2, lw=0)
        bad = [st.lr for st in per_lr if st.n_bad]
        if bad:  # at the top of the axis, whatever the scale
            ax.scatter(bad, [0.97 - 0.025 * (i % 4)] * len(bad), marker="x", color=color,
                       transform=ax.get_xaxis_transform(), label=None if ok else curve)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    grok = cfg.metric == "grokking_step"
    ax.set_ylabel("grokking step" if grok else "final validation loss")
    ax.set_title(f"{cfg.name}: mean over seeds, band min..max, "
                 f"x = {'did not grok / diverged' if grok else 'diverged'}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if s["stats"]:
        ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def plot_best_curves(s: dict, cfg, path: Path) -> None:
    """The runs at each curve's best lr: val loss vs tokens, or val (train dotted) accuracy
    vs step for grokking."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grok = cfg.metric == "grokking_step"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, curve in enumerate(s["ranked"]):
        best = s["curves"][curve]["best"]
        for k, r in enumerate(best.runs):
            recs = read_metrics(r["_dir"])
            label = f"{curve} (lr {best.lr:.3g})" if k == 0 else None
            if grok:
                ev = [x for x in recs if x.get("val/acc") is not None]
                tr = [x for x in recs if x.get("train/acc") is not None]
                ax.plot([x["step"] for x in ev], [x["val/acc"] for x in ev], color=f"C{i % 10}",
                        lw=1, label=label)
                ax.plot([x["step"] for x in tr], [x["train/acc"] for x in tr], ":",
                        color=f"C{i % 10}", lw=1)
            else:
                ev = [x for x in recs if x.get("val/loss") is not None]
                ax.plot([x["tokens"] for x in ev], [x["val/loss"] for x in ev], color=f"C{i % 10}",
                        lw=1, label=label)
    if grok:
        ax.set_xscale("symlog", linthresh=100)
        ax.set(xlabel="step", ylabel="accuracy (val solid, train dotted)")
    else:
        if s["target"] is not None:
            ax.axhline(s["target"], color="gray", ls="--", lw=0.8, label="target loss")
        ax.set(xlabel="tokens", ylabel="validation loss")
    ax.set_title(f"{cfg.name}: every seed at each optimizer's best lr", fontsize=10)
    ax.grid(alpha=0.3)
    if s["ranked"]:
        ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def write_outputs(d: Path, cfg, setup: list[str]) -> dict:
    rows = collect(d)
    write_results(d, rows)
    s = summarize(rows, cfg)
    plot_lr_curves(s, cfg, d / "lr_curves.png")
    plot_best_curves(s, cfg, d / "best_curves.png")
    write_atomic(d / "report.md", report_markdown(rows, cfg, setup, s))
    return s


# ---------------------------------------------------------------------------------------------
# Commands

def plan(sweep_args: list[str], train_args: list[str]):
    """Config, lr grids, setup overrides, points and launch overrides, all checked."""
    cfg, cli_keys = load_sweep(sweep_args)
    grids = check_sweep(cfg)
    setup = canonical(list(cfg.overrides) + train_args)
    points = make_points(cfg, grids, setup)
    d = sweep_dir(cfg)
    launch = launch_overrides(cfg, train_args, wandb_enabled=False)
    wandb = bool(validate_points(points, launch, d / "runs").wandb.enabled)
    return cfg, cli_keys, grids, setup, points, launch_overrides(cfg, train_args, wandb), wandb


def cmd_run(sweep_args: list[str], train_args: list[str], argv: list[str]) -> int:
    cfg, _, _, setup, points, launch, wandb = plan(sweep_args, train_args)
    d = sweep_dir(cfg)
    gpus, threads = resources(cfg)
    check_identity(d, cfg.name, setup)
    (d / "runs").mkdir(parents=True, exist_ok=True)
    write_atomic(d / "sweep.json", json.dumps(
        {"name": cfg.name, "setup": setup, "sweep": dataclasses.asdict(cfg),
         "command": ["python", "sweep.py", *argv], "updated": time.strftime("%Y-%m-%d %H:%M:%S")},
        indent=1) + "\n")
    where = f"GPUs {','.join(gpus)}" if gpus else f"CPU, {threads} thread(s) per process"
    print(f"sweep {cfg.name}: {len(points)} runs, {cfg.jobs} at once x {cfg.nproc_per_run} "
          f"process(es) ({where}); results in {d}")
    completed = run_points(cfg, points, d, launch, wandb, gpus, threads)
    write_outputs(d, cfg, setup)
    print(f"wrote {d / 'results.csv'}, {d / 'lr_curves.png'}, {d / 'report.md'}")
    return 0 if completed else 130


def cmd_report(sweep_args: list[str], train_args: list[str]) -> int:
    if train_args:
        raise UserError(f"report takes sweep.* arguments only, not {train_args[0]!r}")
    cli_cfg, cli_keys = load_sweep(sweep_args)
    d = sweep_dir(cli_cfg)
    stored = read_json(d / "sweep.json")
    if stored is None:
        raise UserError(f"sweep.dir={d} holds no sweep.json (no sweep ran there); pass the "
                        "sweep.dir of a sweep")
    fields = {f.name for f in dataclasses.fields(cli_cfg)}
    cfg = type(cli_cfg)(**{k: v for k, v in stored["sweep"].items() if k in fields})
    cfg = dataclasses.replace(cfg, **{k: getattr(cli_cfg, k) for k in cli_keys if k in fields})
    if cfg.metric not in METRICS:
        raise UserError(f"sweep.metric={cfg.metric!r} is not one of {', '.join(METRICS)}")
    s = write_outputs(d, cfg, stored["setup"])
    print(f"{len(collect(d))} runs; ranking: {', '.join(s['ranked']) or '(nothing finished yet)'}")
    print(f"wrote {d / 'results.csv'}, {d / 'lr_curves.png'}, {d / 'best_curves.png'}, "
          f"{d / 'report.md'}")
    return 0


def wandb_sweeps(cfg, grids: dict, setup: list[str], launch: list[str]) -> dict[str, dict]:
    """W&B grid sweeps equivalent to this sweep, one per distinct lr grid (a W&B grid is one
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
    groups = {}
    for opt, lrs in grids.items():
        groups.setdefault(tuple(lrs), []).append(opt)
    out = {}
    for lrs, opts in groups.items():
        name = cfg.name if len(groups) == 1 else f"{cfg.name}_{'_'.join(opts)}"
        metric = "grokking_step" if cfg.metric == "grokking_step" else "final_val_loss"
        out[f"wandb_{name}.yaml"] = {
            "name": name, "program": "train.py", "method": "grid",
            "metric": {"name": metric, "goal": "minimize"},
            "parameters": {"optimizer": {"values": opts}, "optimizer.lr": {"values": list(lrs)},
                           "seed": {"values": list(cfg.seeds)},
                           **{k: {"values": list(v)} for k, v in sorted(cfg.grid.items())}},
            "command": command}
    return out


def cmd_export_wandb(sweep_args: list[str], train_args: list[str]) -> int:
    import yaml

    cfg, _, grids, setup, points, launch, _ = plan(sweep_args, train_args)
    d = sweep_dir(cfg)
    check_identity(d, cfg.name, setup)
    d.mkdir(parents=True, exist_ok=True)
    for fname, doc in wandb_sweeps(cfg, grids, setup, launch).items():
        text = (f"# W&B sweep equivalent to `python sweep.py sweep={cfg.name} ...` "
                f"({len(points)} runs in all). From the repository root:\n"
                f"#   wandb sweep {d / fname}   then, on each node:   wandb agent <sweep id>\n")
        write_atomic(d / fname, text + yaml.safe_dump(doc, sort_keys=False, width=100))
        print(f"wrote {d / fname}")
    return 0


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        from configs import config_groups
        print(__doc__)
        print(f"  presets: {', '.join(config_groups().get('sweep', []))}")
        return 0
    command = argv[0] if argv and "=" not in argv[0] else "run"
    args = argv[1:] if argv and "=" not in argv[0] else argv
    try:
        sweep_args, train_args = split_args(args)
        if command == "run":
            # SIGTERM (a scheduler's cancel) stops the runs like Ctrl-C does.
            previous = signal.signal(signal.SIGTERM, interrupt)
            try:
                return cmd_run(sweep_args, train_args, argv)
            finally:
                signal.signal(signal.SIGTERM, previous)
        if command == "report":
            return cmd_report(sweep_args, train_args)
        if command == "export-wandb":
            return cmd_export_wandb(sweep_args, train_args)
        raise UserError(f"unknown command {command!r}; use run (the default), report or "
                        "export-wandb")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
