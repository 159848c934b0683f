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
from trainer.schedule import lr_factor, powercool_lr


@dataclass
class Progress:
    """The loop's running state: the step, the best val loss and the eval records (all three
    saved in ckpt.pt and restored from it on resume), and the timing of the optimizer steps
    taken by this process."""
    tokens_per_step: int
    step: int = 0
    best_val: float = math.inf
    history: list = field(default_factory=list)       # the eval records
    last_eval: Optional[int] = None                   # the step last evaluated
    diverged_at: Optional[int] = None
    final_val_full: Optional[float] = None            # final_eval's loss
    wall0: float = field(default_factory=time.time)
    tokens_per_s: Optional[float] = None              # of the timed steps (StepTimer)

    def eval_record(self, metrics: dict) -> dict:
        self.best_val = min(self.best_val, metrics["val/loss"])
        self.last_eval = self.step
        record = {"step": self.step, "tokens": self.step * self.tokens_per_step, **metrics,
                  "time_s": round(time.time() - self.wall0, 3)}
        self.history.append(record)
        return record

    def train_record(self, lr: float, train_loss: float, seconds: float, steps: int,
                     peak_flops_per_s: Optional[float], flops_per_step: float) -> dict:
        """A log event: the step's loss, and the speed over the steps timed since the last."""
        rec = {"step": self.step, "tokens": self.step * self.tokens_per_step, "lr": lr,
               "train/loss": train_loss, "time_s": round(time.time() - self.wall0, 3)}
        if steps and seconds > 0:
            rec["tokens_per_s"] = round(self.tokens_per_step * steps / seconds, 1)
            rec["ms_per_step"] = round(1000 * seconds / steps, 2)
            if peak_flops_per_s:
                rec["mfu"] = flops_per_step * steps / seconds / peak_flops_per_s
        return rec

    def summary(self, status: str, task_summary: dict, error: Optional[str] = None) -> RunSummary:
        final = self.history[-1]["val/loss"] if self.history and status == Status.COMPLETED else None
        return RunSummary(
            status=status, final_val_loss=final,
            final_val_loss_full=self.final_val_full if status == Status.COMPLETED else None,
            best_val_loss=self.best_val if math.isfinite(self.best_val) else None,
            steps=self.step, tokens=self.step * self.tokens_per_step,
            wall_s=round(time.time() - self.wall0, 2),
            tokens_per_s=self.tokens_per_s,
            diverged_at_step=self.diverged_at, error=error, extra=dict(task_summary))


def set_lr(optimizer, step: int, t) -> None:
    """Every param group at its peak lr (group["base_lr"]) times the schedule's factor; with
    train.min_lr, each group's floor is that absolute lr (its ratio to the group's peak).
    powercool (after any warmup): each group's lr by powercool_lr, min_lr not used.
    train.decay_frac_vector: the vector groups' (kind vector) decay fraction of wsd / cooldown."""
    def factor(group: dict) -> float:
        base_lr = group["base_lr"]
        ratio = t.min_lr_ratio if t.min_lr is None or base_lr == 0 else t.min_lr / base_lr
        frac = t.decay_frac_vector if group.get("kind") == "vector" and \
            t.decay_frac_vector is not None else t.decay_frac
        return lr_factor(step, max_iters=t.max_iters, warmup_iters=t.warmup_iters,
                         schedule=t.schedule, min_lr_ratio=ratio, decay_frac=frac,
                         warmup_from_zero=t.warmup_from_zero)
    if t.schedule == "powercool" and step >= t.warmup_iters:
        # each group its own lr: the record's power_c is per group, and its AdamW groups
        # (kind vector here) stay flat longer than Muon's
        end = t.max_iters if t.powercool_end is None else t.powercool_end
        for group in optimizer.param_groups:
            vector = group.get("kind") == "vector" and t.powercool_decay_steps_vector is not None
            group["lr"] = powercool_lr(step, group["base_lr"], end=end, power=t.powercool_power,
                                       decay_steps=t.powercool_decay_steps_vector if vector
                                       else t.powercool_decay_steps)
        return
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor(group)


def forward_backward(model, task, scaler, *, step: int, accum: int, batch_size: int,
                     env: DistEnv, autocast, reduction: str = "mean") -> torch.Tensor:
    """Gradients of one step's `accum` micro-batches on this rank; returns this rank's train
    loss averaged over its micro-batches, as a float64 scalar on the device (the divergence
    watch, trainer/divergence.py, averages the ranks' losses once per look, not every step). Nothing here waits for the
    device: read the loss when it is needed.
    reduction=sum (train.loss_reduction): the gradient of the summed token losses of the whole
    step, over all ranks (DDP averages over ranks, hence the world size), as Track 3 takes it."""
    loss_sum = None
    for micro in range(accum):
        # Windows are indexed by the global micro-batch, so N processes with accum/N
        # micro-steps see exactly the batches of one process with accum micro-steps.
        x, y = task.get_batch("train", batch_size, step=step, micro_step=env.rank * accum + micro,
                              device=env.device)
        if env.enabled:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = micro == accum - 1
        with autocast():
            _, loss = model(x, y)
        if reduction == "mean":
            scaler.scale(loss / accum).backward()
        else:
            scaler.scale(loss * ((y != -1).sum() * env.world_size)).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    return loss_sum.double() / accum


class StepTimer:
    """Wall time of the training steps alone, in windows that end with a device sync (CUDA
    runs asynchronously, so one step's host time means nothing there). Evaluations and
    checkpoints are paused out; the first step of a process (torch.compile, warm-up) is not
    counted."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.seconds = self.steps = 0          # over the run, for summary.json's tokens_per_s
        self.window_s, self.window_steps, self.t0 = 0.0, 0, None
        self.warm = False

    def _now(self, synced: bool = False) -> float:
        if self.cuda and not synced:
            torch.cuda.synchronize()
        return time.time()

    def resume(self) -> None:
        if self.warm and self.t0 is None:
            self.t0 = self._now()

    def pause(self, synced: bool = False) -> None:
        if self.t0 is not None:
            self.window_s += self._now(synced) - self.t0
            self.t0 = None

    def step_done(self) -> None:
        if not self.warm:   # the first step: start timing after it
            self.warm = True
            self.t0 = self._now()
            return
        self.window_steps += 1

    def window(self, synced: bool = False) -> tuple[float, int]:
        """(seconds, steps) since the last call; the timing goes on. synced: the caller has
        just waited for the device (the loop's loss read), so no second wait: the loop takes
        its windows at the same point of a step, after the read."""
        running = self.t0 is not None
        self.pause(synced)
        out = (self.window_s, self.window_steps)
        self.seconds, self.steps = self.seconds + out[0], self.steps + out[1]
        self.window_s, self.window_steps = 0.0, 0
        if running:
            self.t0 = time.time() if synced else self._now()
        return out


def optimizer_step(raw_model, optimizer, scaler, grad_clip: float) -> None:
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def evaluate(task, raw_model, t, env: DistEnv, autocast) -> dict[str, float]:
    """The task's eval metrics; under torchrun each rank evaluates its share of the batches
    and `reduce` sums the per-batch losses over ranks, so the mean is the one-process mean."""
    reduce = torch.distributed.all_reduce if env.enabled else None
    metrics = task.evaluate(raw_model, batch_size=t.batch_size, eval_iters=t.eval_iters,
                            device=env.device, autocast=autocast, rank=env.rank,
                            world=env.world_size, reduce=reduce)
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
