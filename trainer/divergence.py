"""The divergence watch of train.py's loop: DivergenceWatch (the first step whose train loss went
bad: non-finite or above train.diverge_loss), StepOutcome (what one step does with its loss,
and the rollback of a diverged run: the step count it keeps, StepOutcome.kept_steps) and
StepLoss (when the loop reads a step's loss, and each step's outcome). Moved here from
trainer/loop.py unchanged, so that it is mutation-tested on its own (scripts/mutation_score.sh,
tests/test_divergence.py); train.py acts on the outcome (no update for the bad step, the run
ends there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from trainer.distributed import DistEnv


class DivergenceWatch:
    """The first step whose train loss (the mean over ranks) was non-finite or above the limit.
    The steps' losses wait on the device (add, no sync) until StepLoss reads them (at log
    points, before an evaluation, a checkpoint or the end): then one all-reduce averages all
    of them over the ranks and one host sync reads the verdict and the last loss, so a
    diverged run still ends with its exact diverged_at_step."""

    def __init__(self, limit: float, device: str, env: DistEnv | None = None):
        self.limit, self.env = limit, env
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.losses, self.steps = [], []

    def add(self, loss: torch.Tensor, step: int) -> None:
        self.losses.append(loss)
        self.steps.append(step)

    def read(self) -> tuple:
        """(the 1-based step that diverged or None, the last step's mean loss as a float); a
        collective under torchrun (every rank looks at the same steps)."""
        losses = torch.stack(self.losses)
        if self.env is not None and self.env.enabled:
            torch.distributed.all_reduce(losses)
            losses /= self.env.world_size
        bad = ~torch.isfinite(losses) | (losses > self.limit)
        steps = torch.tensor(self.steps, dtype=torch.int64, device=losses.device)
        first_bad = torch.where(bad, steps, torch.iinfo(torch.int64).max).min()
        self.first = torch.where((self.first < 0) & bad.any(), first_bad, self.first)
        self.losses, self.steps = [], []
        first, value = torch.stack([self.first.double(), losses[-1]]).tolist()
        return (None if first < 0 else int(first) + 1), value


@dataclass(frozen=True)
class StepOutcome:
    """What one step does with its train loss, decided once (StepLoss.after_backward) and acted
    on by the loop: `read` (the host sync) or leave it on the device; `log` it after the update
    (a logged loss is always read); or, when `diverged_at` is set, end the run there: the first
    bad step, 1-based, whose update is never applied (the run rolls back to the step before)."""
    read: bool = False
    log: bool = False
    loss: Optional[float] = None          # the step's train loss (mean over ranks), when read
    diverged_at: Optional[int] = None     # when read and a step since the start went bad

    @property
    def kept_steps(self) -> Optional[int]:
        """A diverged run's step count after the rollback: the steps before the first bad one
        (its update is never applied); None when no step went bad."""
        return None if self.diverged_at is None else self.diverged_at - 1


class StepLoss:
    """The one rule for a step's train loss: it waits on the device (DivergenceWatch) until a
    step after which the loop logs, evaluates or checkpoints (train.log_due, eval_due,
    ckpt_due; the end is a log point); before that step's update one read (the one host sync
    of a log interval) gives its loss and the divergence verdict."""

    def __init__(self, t, device: str, env: DistEnv | None = None):
        self.t, self.watch = t, DivergenceWatch(t.diverge_loss, device, env)

    def after_backward(self, loss: torch.Tensor, step: int) -> StepOutcome:
        """The outcome of the 0-based step `step`, whose forward/backward gave `loss`, before
        its update; a collective under torchrun when it reads (every rank reads at the same
        steps)."""
        self.watch.add(loss, step)
        done, t = step + 1, self.t
        log = t.log_due(done)
        if not (log or t.eval_due(done) or t.ckpt_due(done)):
            return StepOutcome()
        diverged_at, value = self.watch.read()
        return StepOutcome(read=True, log=log, loss=value, diverged_at=diverged_at)
