"""The pieces of train.py's loop: what a run carries from step to step (Progress), one step's
forward/backward and optimizer update, one evaluation, and the records and summary they make.

Every function here is the same on every rank; the loss and the eval metrics are averaged over
ranks, so all ranks take the same decisions (divergence, early stop) at the same step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from trainer.distributed import DistEnv, all_mean, ranks_in_sync
from trainer.outputs import RunSummary, Status
from trainer.schedule import lr_factor


@dataclass
class Progress:
    """The loop's running state: the step, the best val loss and the eval records (all three
    restored on resume), and the timing of the optimizer steps taken by this process."""
    tokens_per_step: int
    step: int = 0
    best_val: float = math.inf
    history: list = field(default_factory=list)       # the eval records
    last_eval: Optional[int] = None                   # the step last evaluated
    diverged_at: Optional[int] = None
    final_val_full: Optional[float] = None            # final_eval's loss
    wall0: float = field(default_factory=time.time)
    train_time: float = 0.0
    timed_tokens: int = 0

    def eval_record(self, metrics: dict) -> dict:
        self.best_val = min(self.best_val, metrics["val/loss"])
        self.last_eval = self.step
        record = {"step": self.step, "tokens": self.step * self.tokens_per_step, **metrics,
                  "time_s": round(time.time() - self.wall0, 3)}
        self.history.append(record)
        return record

    def step_done(self, seconds: float) -> None:
        self.step += 1
        self.train_time += seconds
        self.timed_tokens += self.tokens_per_step

    def train_record(self, lr: float, train_loss: float, seconds: float,
                     mfu: Optional[float]) -> dict:
        rec = {"step": self.step, "tokens": self.step * self.tokens_per_step, "lr": lr,
               "train/loss": train_loss, "tokens_per_s": round(self.tokens_per_step / seconds, 1),
               "ms_per_step": round(1000 * seconds, 2), "time_s": round(time.time() - self.wall0, 3)}
        if mfu is not None:
            rec["mfu"] = mfu
        return rec

    def summary(self, status: str, task_summary: dict, error: Optional[str] = None) -> RunSummary:
        final = self.history[-1]["val/loss"] if self.history and status == Status.COMPLETED else None
        return RunSummary(
            status=status, final_val_loss=final,
            final_val_loss_full=self.final_val_full if status == Status.COMPLETED else None,
            best_val_loss=self.best_val if math.isfinite(self.best_val) else None,
            steps=self.step, tokens=self.step * self.tokens_per_step,
            wall_s=round(time.time() - self.wall0, 2),
            tokens_per_s=round(self.timed_tokens / self.train_time, 1) if self.train_time else None,
            diverged_at_step=self.diverged_at, error=error, extra=dict(task_summary))


def set_lr(optimizer, step: int, t) -> None:
    """Every param group at its peak lr (group["base_lr"]) times the schedule's factor."""
    factor = lr_factor(step, max_iters=t.max_iters, warmup_iters=t.warmup_iters,
                       schedule=t.schedule, min_lr_ratio=t.min_lr_ratio, decay_frac=t.decay_frac)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def forward_backward(model, task, scaler, *, step: int, accum: int, batch_size: int,
                     env: DistEnv, autocast) -> float:
    """Gradients of one step's `accum` micro-batches on this rank; returns the step's train
    loss averaged over micro-batches and ranks (every rank gets the same number)."""
    loss_sum = 0.0
    for micro in range(accum):
        # Windows are indexed by the global micro-batch, so N processes with accum/N
        # micro-steps see exactly the batches of one process with accum micro-steps.
        x, y = task.get_batch("train", batch_size, step=step, micro_step=env.rank * accum + micro)
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
        if env.enabled:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = micro == accum - 1
        with autocast():
            _, loss = model(x, y)
        scaler.scale(loss / accum).backward()
        loss_sum += loss.detach()
    (train_loss,) = all_mean([float(loss_sum) / accum], env)
    return train_loss


def optimizer_step(raw_model, optimizer, scaler, grad_clip: float) -> None:
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def evaluate(task, raw_model, t, env: DistEnv, autocast) -> dict[str, float]:
    """The task's eval metrics, averaged over ranks."""
    metrics = task.evaluate(raw_model, batch_size=t.batch_size, eval_iters=t.eval_iters,
                            device=env.device, autocast=autocast)
    keys = sorted(metrics)
    return dict(zip(keys, all_mean([metrics[k] for k in keys], env)))


def final_eval(task, raw_model, t, env: DistEnv, autocast) -> Optional[float]:
    """The mean token loss over the whole val split (train.final_eval_tokens), the windows
    shared over the ranks; None when off or when the task has no such evaluation."""
    if not t.final_eval_tokens or not hasattr(task, "final_eval"):
        return None
    total, count = task.final_eval(raw_model, batch_size=t.batch_size, device=env.device,
                                   autocast=autocast, max_tokens=t.final_eval_tokens,
                                   rank=env.rank, world=env.world_size)
    total, count = all_mean([total, float(count)], env)
    return total / count


def finish(progress: Progress, status: str, task, raw_model, env: DistEnv,
           error: Optional[str] = None) -> RunSummary:
    """The run's summary; under torchrun a collective (every rank compares its parameters)."""
    summary = progress.summary(status, task.summary(progress.history), error)
    if env.enabled and error is None:
        summary.extra["world_size"] = env.world_size
        summary.extra["ranks_in_sync"] = ranks_in_sync(raw_model, env)
    return summary
