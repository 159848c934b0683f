"""Run outputs: metrics.jsonl (always), W&B (when enabled; offline without an API key).

Only rank 0 creates a RunLogger; other ranks log nothing.
"""
from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

from trainer.checkpoint import atomic_write_text


def truncate_metrics(path: Path, max_step: int) -> list[dict]:
    """On resume from a checkpoint taken after step `max_step`, drop the records that will be
    redone: later steps, and the evaluation at `max_step` itself (it runs after the checkpoint
    is saved), so metrics.jsonl holds each event once. Returns the kept records."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        step = rec.get("step", 0)
        if step < max_step or (step == max_step and "val/loss" not in rec):
            kept.append(rec)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
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
    def __init__(self, out_dir: Path, wandb_cfg, config: dict, resume: bool):
        self.out_dir = Path(out_dir)
        self.metrics = open(self.out_dir / "metrics.jsonl", "a")
        self.wandb = None
        if wandb_cfg.enabled:
            self.wandb = self._init_wandb(wandb_cfg, config, resume)

    def _init_wandb(self, wcfg, config: dict, resume: bool):
        import wandb

        id_file = self.out_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if (resume and id_file.exists()) else secrets.token_hex(4)
        atomic_write_text(id_file, run_id)
        mode = _wandb_mode(wcfg.mode)
        run = wandb.init(project=wcfg.project, entity=wcfg.entity, group=wcfg.group,
                         name=wcfg.name, tags=list(wcfg.tags) or None, config=config,
                         dir=str(self.out_dir), id=run_id, resume="allow", mode=mode)
        if mode == "offline":
            print(f"W&B offline run in {run.dir}; upload later with `wandb sync {Path(run.dir).parent}`")
        return run

    def log(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self.metrics.write(json.dumps(clean) + "\n")
        self.metrics.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self, summary: dict) -> None:
        self.metrics.close()
        if self.wandb is not None:
            for k, v in summary.items():
                self.wandb.summary[k] = v
            self.wandb.finish()
