"""Graceful stop: SIGTERM (a scheduler's preemption), SIGUSR1 (SLURM's `--signal=USR1@90`),
SIGUSR2 (submitit's warning before a time limit or a preemption, which SLURM may send to every
process of the job) and SIGINT (Ctrl-C, sweep.py stopping its runs) during training let the loop
finish its step, write ckpt.pt and summary.json (status interrupted) and exit with EXIT_INTERRUPTED
(trainer/outputs.py); `resume=true` then goes on exactly. A second signal ends the process at
once (the last checkpoint stays valid); one that follows the first within COPIES_S seconds is
taken as a copy of it (SLURM signals every process of a job step, and torchrun and sweep.py pass
a signal on, so one request can arrive twice).

Under torchrun the ranks must stop at the same step, or one would wait forever in a collective.
A handler only sets its rank's host-side flag; every step the ranks all-reduce (MAX) the flags
on the device and copy the result to pinned host memory without waiting, and read the copy one
step later (long done by then: no host sync on the step's critical path). Every rank reads the
same value at the same step, so they stop together, one step after the step in which a rank
first saw its signal. A single process stops after the step it is in.
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
        self.agreed = False                  # torchrun: a rank had one, read one step late
        self.seen_at: Optional[int] = None   # the step after which this rank first saw its signal
        self._pending = None                 # (host copy of the all-reduced flag, its CUDA event)
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

    def exchange(self, step: int) -> None:
        """Under torchrun, after every step (a collective: every rank calls it at each step):
        read the previous step's agreed flag, then start this step's all-reduce (MAX) of the
        flags and its non-blocking copy to the host."""
        if self.signal is not None and self.seen_at is None:
            self.seen_at = step
            if self.env.enabled:
                say(f"rank {self.env.rank}: {self.name} seen after step {step}")
        if not self.env.enabled:
            return
        if self._pending is not None:
            host, event = self._pending
            if event is not None:
                event.synchronize()   # the copy of a step ago: done long since
            self.agreed = self.agreed or bool(host.item() > 0)
        flag = torch.full((), float(self.signal is not None), device=self.env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)   # NCCL: queued on the device, no host wait
        if flag.is_cuda:
            host = torch.empty((), dtype=flag.dtype, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event)
        else:
            self._pending = (flag, None)

    def now(self) -> bool:
        """Whether the loop stops after this step: the same answer on every rank."""
        return self.agreed if self.env.enabled else self.signal is not None
