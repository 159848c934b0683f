"""The files a run writes in its out_dir, other than ckpt.pt (trainer/checkpoint.py), and the
one atomic writer every file of the project goes through.

    config.yaml     the resolved config                    (write_atomic)
    metrics.jsonl   one JSON object per log or eval event  (RunLogger, read_metrics, truncate_metrics)
    summary.json    how the run ended: RunSummary          (RunSummary.write / RunSummary.read)

The trainer writes them and the sweeper reads them through this module only, so a field or a
status name is defined once (Status, SUMMARY_FIELDS). Torch-free: the sweeper imports it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from configs.errors import UserError


def write_atomic(path: Path, data: Union[bytes, str, Callable]) -> None:
    """Write `data` (bytes, text, or a function that writes to a binary file) to a temporary
    file beside `path`, fsync it, then rename: a kill leaves the old file or the new one,
    never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj, indent: int = 2) -> None:
    write_atomic(path, json.dumps(obj, indent=indent, default=float) + "\n")


def read_json(path: Path) -> Optional[dict]:
    """The JSON object in `path`, None when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Status:
    """How a run ended (written by the trainer) or stands (seen by the sweeper)."""
    COMPLETED = "completed"      # trained its full budget (or its task was solved)
    DIVERGED = "diverged"        # a non-finite or too large loss ended it: a result
    FAILED = "failed"            # it crashed; a re-run of the sweep retries it
    RUNNING = "running"          # sweeper only: a live process holds its lock
    UNFINISHED = "unfinished"    # sweeper only: never started, or stopped before the end
    RESULTS = (COMPLETED, DIVERGED)   # the statuses a sweep keeps and never re-runs
    ALL = (COMPLETED, DIVERGED, FAILED, RUNNING, UNFINISHED)


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


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Create out_dir and say whether to resume from its ckpt.pt. Refuses to overwrite
    another run without overwrite=true, and a path that is not a directory."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir={out_dir} exists and is not a directory; pass another out_dir=")
    out_dir.mkdir(parents=True, exist_ok=True)
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
    """metrics.jsonl's records; a line cut by a kill is skipped."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def truncate_metrics(run_dir: Path, max_step: int) -> list[dict]:
    """On resume from a checkpoint taken after step `max_step`, drop the records that will be
    redone: later steps, and the evaluation at `max_step` itself (it runs after the checkpoint
    is saved), so metrics.jsonl holds each event once. Returns the kept records."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    kept = [r for r in read_metrics(run_dir)
            if r.get("step", 0) < max_step or (r.get("step", 0) == max_step and "val/loss" not in r)]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


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
    creates one; other ranks log nothing."""

    def __init__(self, out_dir: Path, wandb_cfg, config: dict, resume: bool):
        self.out_dir = Path(out_dir)
        self.metrics = open(self.out_dir / "metrics.jsonl", "a")
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
        if mode == "offline":
            print(f"W&B offline run in {run.dir}; upload later with `wandb sync {Path(run.dir).parent}`")
        return run

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self.metrics.write(json.dumps(clean) + "\n")
        self.metrics.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self, summary: RunSummary) -> None:
        self.metrics.close()
        if self.wandb is not None:
            for k, v in summary.to_dict().items():
                self.wandb.summary[k] = v
            self.wandb.finish()
