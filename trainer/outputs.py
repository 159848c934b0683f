"""The files a run writes in its out_dir, other than ckpt.pt (trainer/checkpoint.py), and FileLock, the flock of train.lock and
of the sweeper's sweep.lock.

    config.yaml     the resolved config, and `provenance`  (write_atomic; trainer/provenance.py)
    .hydra/         Hydra's record of the job              (write_hydra_record)
    metrics.jsonl   one JSON object per log or eval event  (RunLogger, read_metrics, truncate_metrics)
                    a log only: what a resumed run needs (its eval history) is in ckpt.pt
    summary.json    how the run ended: RunSummary          (RunSummary.write / RunSummary.read)
    train.lock      flock held by the run's process (rank 0) while it lives (prepare_out_dir)
    wandb/          W&B's files, wandb_run_id its run id   (RunLogger)

The trainer writes them and the sweeper reads them through this module only, so a field, a
status name or an exit code is defined once (Status, SUMMARY_FIELDS, EXIT_INTERRUPTED).
A file that cannot be written (a full disk, a quota, permissions) is one UserError naming it
(write_error), and the version written before stays. Torch-free: the sweeper imports it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from configs import make_out_dir
from configs.errors import UserError, os_error_of, write_atomic, write_error  # noqa: F401 (the run files' writers)


def write_json(path: Path, obj, indent: int = 2) -> None:
    write_atomic(path, json.dumps(obj, indent=indent, default=float) + "\n")


def read_json(path: Path) -> Optional[dict]:
    """The JSON object in `path`, None when it is missing, unreadable or not (yet) a JSON object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):   # ValueError: JSONDecodeError, UnicodeDecodeError
        return None
    return obj if isinstance(obj, dict) else None


class Status:
    """How a run ended (written by the trainer) or stands (seen by the sweeper)."""
    COMPLETED = "completed"      # trained its full budget (or its task was solved)
    DIVERGED = "diverged"        # a non-finite or too large loss ended it: a result
    FAILED = "failed"            # it crashed; a re-run of the sweep retries it
    INTERRUPTED = "interrupted"  # a signal stopped it after a checkpoint; resume=true goes on
    RUNNING = "running"          # sweeper only: a live process holds its lock
    UNFINISHED = "unfinished"    # sweeper only: never started, or stopped before the end
    RESULTS = (COMPLETED, DIVERGED)   # the statuses a sweep keeps and never re-runs
    ALL = (COMPLETED, DIVERGED, FAILED, INTERRUPTED, RUNNING, UNFINISHED)


# train.py's exit code when a signal (SIGTERM, SIGUSR1, SIGINT) stopped the run after a
# checkpoint (status interrupted): run the same command with resume=true to go on. The others:
# 0 completed or diverged, 1 a crash (traceback), 2 bad input (one `error: ...` line).
EXIT_INTERRUPTED = 3


# summary.json's fields, in the order they are written (results.csv's columns follow them).
SUMMARY_FIELDS = ("status", "final_val_loss", "final_val_loss_full", "best_val_loss", "steps", "tokens", "wall_s",
                  "tokens_per_s", "diverged_at_step")


@dataclass
class RunSummary:
    """summary.json: the fields of every run, then `extra` (the task's, e.g. grokking_step,
    and under torchrun world_size and ranks_in_sync) as top-level keys."""
    status: str
    final_val_loss: Optional[float] = None          # the last periodic evaluation's val loss
    final_val_loss_full: Optional[float] = None     # the final model on the whole val split
    best_val_loss: Optional[float] = None
    steps: int = 0
    tokens: int = 0
    wall_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    diverged_at_step: Optional[int] = None
    error: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "RunSummary":
        own = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in own},
                   extra={k: v for k, v in d.items() if k not in own})

    def write(self, out_dir: Path) -> None:
        write_json(Path(out_dir) / "summary.json", self.to_dict())

    @classmethod
    def read(cls, out_dir: Path) -> Optional["RunSummary"]:
        d = read_json(Path(out_dir) / "summary.json")
        return None if d is None else cls.from_dict(d)


class FileLock:
    """An exclusive flock on `path`, never waited for: acquire() says whether it was free. The
    OS releases it when the holder's process dies, so a lock left by a killed process never
    blocks. `note` leaves the holder's details in the file for whoever finds it held."""

    def __init__(self, path: Path):
        self.path = Path(path)
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

    def held_elsewhere(self) -> Optional[dict]:
        """The holder's note when another process (or another FileLock) holds it, else None."""
        if not self.path.exists():
            return None
        if self.acquire():
            self.release()
            return None
        return read_json(self.path) or {}


TRAIN_LOCK = "train.lock"   # the trainer's own; a sweep's launcher holds sweep.lock beside it


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> tuple[bool, FileLock]:
    """Create out_dir, lock it (train.lock) for this process, and say whether to resume from its
    ckpt.pt; returns (resume, the lock: release it when the run ends). Refuses a path that is
    not a directory, an out_dir another live train.py writes, and to overwrite another run
    without overwrite=true. Removes the temporary files of writes a kill cut short."""
    out_dir = make_out_dir(out_dir)
    lock = FileLock(out_dir / TRAIN_LOCK)
    try:
        free = lock.acquire()
    except OSError as exc:
        raise write_error(lock.path, exc) from None
    if not free:
        holder = read_json(lock.path) or {}
        raise UserError(f"out_dir={out_dir} is in use by another train.py (pid "
                        f"{holder.get('pid', '?')}); wait for it to end, or pass another out_dir=")
    try:
        resuming = _start_or_resume(out_dir, resume, overwrite)
        for stale in out_dir.glob(".*.tmp"):   # of a write_atomic a kill cut short
            stale.unlink(missing_ok=True)
        lock.note({"pid": os.getpid(), "started": time.time()})
    except BaseException:
        lock.release()
        raise
    return resuming, lock


def _start_or_resume(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    ckpt = out_dir / "ckpt.pt"
    if resume and ckpt.exists():
        return True
    if resume:
        print(f"resume=true but {ckpt} does not exist yet: starting fresh")
    elif (ckpt.exists() or (out_dir / "summary.json").exists()) and not overwrite:
        raise UserError(f"out_dir={out_dir} already holds a run; pass resume=true to continue it, "
                        "overwrite=true to replace it, or another out_dir=")
    for name in ("metrics.jsonl", "summary.json", "ckpt.pt"):
        (out_dir / name).unlink(missing_ok=True)
    return False


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records; the last line, cut by a kill, is skipped. Any other line that is
    not a JSON object is a damaged file: a UserError naming it."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_bytes().decode().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise damaged_metrics(path, getattr(exc, "strerror", None) or "not UTF-8 text") from None
    out = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            out.append(record)
        elif line.strip() and not (i == len(lines) and line.startswith("{")):  # not a cut record
            raise damaged_metrics(path, f"line {i} is not a JSON object")
    return out


def damaged_metrics(path: Path, why: str) -> UserError:
    return UserError(f"{path} is damaged ({why}); restore it, or move it away to go on without "
                     "the run's earlier records")


def redone_on_resume(record: dict, ckpt_step: int) -> bool:
    """Whether a run resumed from a checkpoint taken after step `ckpt_step` does the event of
    `record` again: a later step's, or the evaluation of `ckpt_step` itself (it runs after the
    checkpoint is saved)."""
    step = record.get("step", 0)
    return step > ckpt_step or (step == ckpt_step and "val/loss" in record)


def truncate_metrics(run_dir: Path, max_step: int) -> list[dict]:
    """On resume from a checkpoint taken after step `max_step`, drop the records that will be
    redone (redone_on_resume), so metrics.jsonl holds each event once. Returns the kept records."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    kept = [r for r in read_metrics(run_dir) if not redone_on_resume(r, max_step)]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def write_hydra_record(out_dir: Path, config: dict) -> None:
    """.hydra/{config,hydra,overrides}.yaml, Hydra's record of a job, when the run is a Hydra job
    (nothing otherwise). Hydra would write them before the job starts (configs/config.yaml
    turns that off): here they come once the run's inputs are checked, so a rejected command
    changes no run directory, and from rank 0 only."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.instance().cfg
    if hydra_cfg is None:
        return
    d = Path(out_dir) / ".hydra"
    try:
        d.mkdir(exist_ok=True)
    except OSError as exc:
        raise write_error(d, exc) from None
    write_atomic(d / "config.yaml", OmegaConf.to_yaml(config))
    write_atomic(d / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    write_atomic(d / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


def _wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return os.environ.get("WANDB_MODE", "online")
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class RunLogger:
    """metrics.jsonl (always) and W&B (when enabled; offline without an API key). Only rank 0
    creates one; other ranks log nothing.

    W&B: every metric is plotted against `tokens` (define_metric), so runs of other batch sizes
    or optimizers share an x-axis; val/loss's summary is its minimum; `config` (the resolved
    config and its provenance) is the run's config. A resumed run reuses its W&B id
    (wandb_run_id) and does not send again the records it sent before (`sent`: their (step,
    is a train record) pairs), so W&B gets each point once."""

    def __init__(self, out_dir: Path, wandb_cfg, config: dict, resume: bool,
                 sent: Optional[set] = None):
        self.out_dir = Path(out_dir)
        self.sent = sent or set()
        try:
            self.metrics = open(self.out_dir / "metrics.jsonl", "a")
        except OSError as exc:
            raise write_error(self.out_dir / "metrics.jsonl", exc) from None
        self.wandb = self._init_wandb(wandb_cfg, config, resume) if wandb_cfg.enabled else None

    def _init_wandb(self, wcfg, config: dict, resume: bool):
        import wandb

        id_file = self.out_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if (resume and id_file.exists()) else secrets.token_hex(4)
        write_atomic(id_file, run_id)
        mode = _wandb_mode(wcfg.mode)
        run = wandb.init(project=wcfg.project, entity=wcfg.entity, group=wcfg.group,
                         name=wcfg.name, tags=list(wcfg.tags) or None, config=config,
                         dir=str(self.out_dir), id=run_id, resume="allow", mode=mode)
        run.define_metric("tokens")
        run.define_metric("*", step_metric="tokens")    # train/*, val/*, lr, throughput
        run.define_metric("val/loss", step_metric="tokens", summary="min")
        if mode == "offline":
            print(f"W&B offline run in {run.dir}; upload later with `wandb sync {Path(run.dir).parent}`")
        return run

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        try:
            self.metrics.write(json.dumps(clean) + "\n")
            self.metrics.flush()
        except OSError as exc:   # a full disk: the records before stay, the cut line is skipped
            raise write_error(self.metrics.name, exc) from None
        if self.wandb is not None and (record["step"], "lr" in record) not in self.sent:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self, summary: RunSummary) -> None:
        self.metrics.close()
        if self.wandb is not None:
            for k, v in summary.to_dict().items():
                self.wandb.summary[k] = v
            self.wandb.finish()
