"""Graceful stop: SIGTERM (a scheduler's preemption), SIGUSR1 (SLURM's `--signal=USR1@90`),
SIGUSR2 (submitit's warning before a time limit or a preemption, which SLURM may send to every
process of the job) and SIGINT (Ctrl-C, sweep.py stopping its runs) during training let the loop
finish its step, write ckpt.pt and summary.json (status interrupted) and exit with EXIT_INTERRUPTED
(trainer/outputs.py); `resume=true` then goes on exactly. A second signal ends the process at
once (the last checkpoint stays valid); one that follows the first within COPIES_S seconds is
taken as a copy of it (SLURM signals every process of a job step, and torchrun and sweep.py pass
a signal on, so one request can arrive twice).

Under torchrun the ranks must stop at the same step, or one would wait forever in a collective.
A handler only sets its rank's host-side flag; the ranks agree at the loop's existing host sync
(train.py's must_look steps: log, eval, checkpoint and last steps) with an all-reduce (MAX) of
the flags whose result is read in that same sync, so a CUDA run keeps one host sync per log
interval and stops at most train.log_interval steps after the signal. A single process stops
after the step it is in.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional

import torch
import torch.distributed as dist

from trainer.distributed import DistEnv
from trainer.outputs import EXIT_INTERRUPTED

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
COPIES_S = 2.0


def say(line: str) -> None:
    """A line on stderr from a signal handler (print could re-enter a write it interrupted)."""
    os.write(2, (line + "\n").encode())


class GracefulStop:
    """The signal handlers of a training loop (a context manager: installed on entry, the
    previous ones back on exit; only in the main thread, where Python runs handlers)."""

    def __init__(self, env: DistEnv):
        self.env = env
        self.signal: Optional[int] = None    # the first signal this process received
        self.first_at = 0.0
        self.agreed = False                  # torchrun: a rank had one at the last agreement
        self.previous = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "a signal"

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.signal is None:
            self.signal, self.first_at = signum, now
            if self.env.is_main:
                say(f"{self.name}: finishing the current step, then ckpt.pt, summary.json (status "
                    f"interrupted) and exit code {EXIT_INTERRUPTED}; another signal ends at once")
            return
        if now - self.first_at < COPIES_S:
            return   # the same request, passed on by a launcher
        say(f"{signal.Signals(signum).name} again: ending at once; the last checkpoint stays valid")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def shared(self) -> list:
        """Under torchrun, [every rank's flag all-reduced (MAX)] as a device scalar for the
        caller to read in its own host sync, then pass to agree(); [] in a single process.
        A collective: every rank calls it at the same steps."""
        if not self.env.enabled:
            return []
        flag = torch.full((), float(self.signal is not None), device=self.env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return [flag]

    def agree(self, values: list) -> None:
        """The value read of shared()'s flag (nothing in a single process)."""
        if values:
            self.agreed = values[0] > 0

    def now(self) -> bool:
        """Whether the loop stops after this step: the same answer on every rank."""
        return self.agreed if self.env.enabled else self.signal is not None
