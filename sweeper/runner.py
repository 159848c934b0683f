"""Running a sweep: the sweep directory (sweep.json, its identity), the lock of each run
(RunLock), what each attempt of a run writes (point.json, train.log, exit.json), launching and
stopping train.py processes, and the scheduler: one loop (run_points) that runs a stage's points
through a backend and waits for them, resumable, stopped cleanly by Ctrl-C or SIGTERM; its local
backend (LocalBackend: sweep.jobs at a time, each on its GPUs or its share of the CPU cores) is
here, its submitit backend in sweeper/slurm.py. sweeper/rows.py reads the runs back.

    <sweep.dir>/sweep.json               name, setup, sweep config, command (identity)
    <sweep.dir>/runs/<run id>/           the run's out_dir (trainer/outputs.py), and:
        point.json   the Point   exit.json   how its process ended   train.log   its output
        sweep.lock   flock held while the launcher or the run lives

Stopping (Ctrl-C, SIGTERM or SIGUSR1 to the launcher) sends each run SIGINT: a run ends its step,
writes its checkpoint and summary.json (status interrupted) and exits; the next invocation
resumes it, like every run that is not a result.
"""
from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from configs.errors import UserError
from sweeper.points import Plan, Point, run_args
from trainer.outputs import FileLock, Status, read_json, write_json

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
STOP_GRACE_S = 60.0   # how long a stopped run has for its step and checkpoint before SIGKILL


# ---------------------------------------------------------------------------------------------
# The sweep directory

def read_sweep(d: Path) -> dict | None:
    """sweep.json of sweep.dir `d`: None when there is none, a UserError when it is damaged."""
    if d.exists() and not d.is_dir():
        raise UserError(f"sweep.dir={d} is a file, not a directory; pass sweep.dir=<new path>")
    path = d / "sweep.json"
    stored = read_json(path)
    if path.exists() and not (stored is not None and isinstance(stored.get("sweep"), dict)):
        raise UserError(f"{path} is damaged (not a sweep's JSON); restore it, or pass "
                        "sweep.dir=<new path>")
    return stored


def check_identity(d: Path, name: str, setup: list[str]) -> None:
    """Refuse a sweep.dir that holds another sweep's results (or anything but a sweep)."""
    stored = read_sweep(d)
    if stored is not None:
        if (stored.get("name"), stored.get("setup")) != (name, setup):
            raise UserError(
                f"sweep.dir={d} holds the results of another sweep ({stored.get('name')}: "
                f"{' '.join(stored.get('setup') or []) or 'no overrides'}); pass "
                f"sweep.dir=<new path> for this one ({name}: {' '.join(setup) or 'no overrides'})")
    elif d.exists() and any(d.iterdir()):
        raise UserError(f"sweep.dir={d} is not empty and holds no sweep.json (not a sweep's "
                        "directory); pass sweep.dir=<new path>")


def record_sweep(plan: Plan, argv: list[str]) -> None:
    """Create sweep.dir/runs and write sweep.json."""
    d = plan.cfg.path
    (d / "runs").mkdir(parents=True, exist_ok=True)
    write_json(d / "sweep.json", {
        "name": plan.cfg.name, "setup": plan.setup, "sweep": dataclasses.asdict(plan.cfg),
        "command": ["python", "sweep.py", *argv], "updated": time.strftime("%Y-%m-%d %H:%M:%S")},
        indent=1)


class RunLock(FileLock):
    """flock on <run dir>/sweep.lock. The run's process inherits the locked descriptor, so the
    lock is held while the launcher OR the run lives: a run left behind by a SIGKILLed launcher
    keeps it, and a re-run waits for that run instead of starting the point again. (train.py
    holds its own train.lock beside it.)"""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir / "sweep.lock")


def finished(run_dir: Path) -> bool:
    """Completed or diverged: a result to keep. Failed runs are retried by a re-run."""
    summary = read_json(run_dir / "summary.json")
    return summary is not None and summary.get("status") in Status.RESULTS


LAUNCH_MARK = "sweep.py launches:"
# torchrun's own lines about a failed worker: never the error of a run
LAUNCHER_LINES = ("torch.distributed.elastic", "ChildFailedError", "SignalException")


def log_error(path: Path) -> str:
    """The error of a failed run from its train.log, its last attempt only: the first
    `error: ...` line (a rank's one-line error), else the first exception line of a traceback
    (under torchrun the rank that failed first prints first; torchrun's own report is left
    out), else the last two lines."""
    try:
        text = path.read_text(errors="replace")[-200_000:]
    except FileNotFoundError:
        return ""
    text = text.rsplit(LAUNCH_MARK, 1)[-1].split("\n", 1)[-1] if LAUNCH_MARK in text else text
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    own = [ln for ln in lines if not any(k in ln for k in LAUNCHER_LINES)]
    errors = [ln for ln in own if ln.startswith("error: ")] or \
        [ln for ln in own if ln.split(":", 1)[0].endswith(("Error", "Exception", "Interrupt"))]
    return (errors[0] if errors else " | ".join(lines[-2:]))[:500]


# ---------------------------------------------------------------------------------------------
# Running

def resources(cfg, run_device: str = "auto") -> tuple[list[str], int]:
    """(GPU ids to hand out, CPU threads per process); refuses more at once than there is.
    Runs on device=cpu get no GPUs (and no CUDA_VISIBLE_DEVICES), even on a GPU host."""
    import torch

    cores = len(os.sched_getaffinity(0))
    at_once = cfg.jobs * cfg.nproc_per_run
    gpus = []
    if run_device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() > 0:
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


def prepare_run(p: Point, run_dir: Path) -> None:
    """Before a point's attempt: point.json, and no summary or exit record of a failed attempt
    (this attempt writes its own)."""
    summary = read_json(run_dir / "summary.json")
    if summary is not None:
        (run_dir / "summary.json").unlink()
    (run_dir / "exit.json").unlink(missing_ok=True)
    write_json(run_dir / "point.json", dataclasses.asdict(p), indent=1)


def train_command(nproc: int) -> list[str]:
    """train.py, through torchrun for a run of several processes."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", str(TRAIN_SCRIPT)]
    return [sys.executable, str(TRAIN_SCRIPT)]


def train_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    # torchrun gives its workers this long to stop after passing a signal on, then SIGKILLs them
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(int(STOP_GRACE_S) - 10))
    return env


def open_log(run_dir: Path, cmd: list[str]) -> io.IOBase:
    """train.log, appended, with a line marking this attempt (log_error reads the last one)."""
    log = open(run_dir / "train.log", "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {LAUNCH_MARK} {' '.join(cmd)}\n")
    log.flush()
    return log


def start_run(p: Point, run_dir: Path, lock: RunLock, args: list[str], gpus: list[str],
              threads: int, nproc: int) -> Launched:
    prepare_run(p, run_dir)
    cmd = train_command(nproc) + args
    env = train_env(threads)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    log = open_log(run_dir, cmd)
    # Own session: Ctrl-C reaches the launcher only, which stops the runs itself (see stop_runs).
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, pass_fds=(lock.fd,),
                            start_new_session=True, preexec_fn=default_sigint)
    lock.note({"launcher_pid": os.getpid(), "pid": proc.pid, "gpus": gpus, "started": time.time()})
    return Launched(p, proc, lock, gpus, log)


def end_run(run: Launched, run_dir: Path, stopped: bool = False) -> str:
    """Record how a run's process ended; returns its status (see record_exit)."""
    run.log.close()
    status = record_exit(run_dir, run.proc.returncode, stopped)
    run.lock.release()
    return status


def record_exit(run_dir: Path, rc: int, stopped: bool = False) -> str:
    """exit.json: how a run's train.py ended (exit code `rc`); returns its status (interrupted:
    a signal stopped it after a checkpoint, and the next invocation resumes it). A run its
    launcher `stopped` that wrote no summary (stopped before its loop began, or killed) is
    left unfinished, with no record."""
    summary = read_json(run_dir / "summary.json") or {}
    ended = (*Status.RESULTS, Status.INTERRUPTED)
    status = summary.get("status") if summary.get("status") in ended else Status.FAILED
    if stopped and status == Status.FAILED:
        return Status.UNFINISHED
    error = None
    if status == Status.FAILED:
        why = f"exit code {rc}" if rc >= 0 else f"killed by signal {-rc}"
        error = f"{why}: {log_error(run_dir / 'train.log') or summary.get('error') or 'no output'}"
    write_json(run_dir / "exit.json", {"returncode": rc, "status": status, "error": error,
                                       "ended": time.time()}, indent=None)
    return status


def bad_input_error(run_dir: Path, torchrun: bool) -> Optional[str]:
    """The one-line error of a run that failed on bad input (train.py's exit code 2; under
    torchrun, which exits 1 for any failed rank, a rank's `error: ...` line, which train.py
    prints for bad input only), from its exit.json; None for any other end. Bad input is the
    sweep's, not the point's: every run would fail the same way."""
    ended = read_json(run_dir / "exit.json") or {}
    error = ended.get("error") or ""
    if ended.get("status") != Status.FAILED or not (ended.get("returncode") == 2
                                                     or torchrun and ": error: " in error):
        return None
    return error.split(": error: ", 1)[-1]


def stop_runs(running: dict[str, Launched], runs_dir: Path, grace_s: float = STOP_GRACE_S) -> None:
    """Ctrl-C: SIGINT to each run's process group (torchrun passes it on to its workers), which
    ends its step, writes its checkpoint and summary.json (status interrupted); SIGKILL after
    grace_s. Either way the next invocation resumes it."""
    for run in running.values():
        with suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGINT)
    deadline = time.time() + grace_s
    for rid, run in running.items():
        try:
            run.proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
        end_run(run, runs_dir / rid, stopped=True)


# ---------------------------------------------------------------------------------------------
# The scheduler: one loop, a backend for where the runs go

class Backend(Protocol):
    """Where run_points sends a stage's runs (LocalBackend; sweeper/slurm.py's SubmititBackend),
    asked every poll_s seconds what has ended and what to start."""
    poll_s: float
    counted: tuple              # the statuses summary() counts
    threads: int                # CPU threads per process (a run's threads= argument)

    def earlier(self, todo: list[Point]) -> dict:
        """{run id: handle} of todo's points an earlier invocation still runs: waited for."""

    def waiting_line(self, live: dict) -> str:
        """The bar's line on those."""

    def launch(self, todo: list[Point], live: dict, bar) -> None:
        """Start what fits now: a started point leaves todo, its handle joins live."""

    def ended(self, rid: str, handle) -> Optional[str]:
        """The run's status once it has ended, else None."""

    def ended_line(self, rid: str, handle, status: str) -> str:
        """The bar's line on a run that ended other than completed."""

    def bad_input(self, rid: str) -> Optional[str]:
        """The one-line error of a failed run if it failed on bad input (bad_input_error)."""

    def postfix(self, todo: list[Point], live: dict) -> str:
        """The bar's postfix: what runs, what is left."""

    def interrupted(self, live: dict, bar) -> None:
        """Ctrl-C: say what becomes of the live runs, and stop those that stop."""

    def summary(self, counts: dict) -> str:
        """The last line: what this invocation ran."""


def reuse_finished(plan: Plan, todo: list[Point], threads: int) -> list[Point]:
    """Copy each point of `todo` that a sweep of sweep.reuse already ran (sweeper/reuse.py),
    under its run lock; returns the points left to run."""
    if not plan.cfg.reuse:
        return todo
    from sweeper import reuse

    found = reuse.index(reuse.check_sources(plan.cfg.reuse, plan.cfg.path))
    left, copied = [], 0
    for p in todo:
        run_dir = plan.cfg.path / "runs" / p.run_id
        source = found.get(reuse.point_key(run_args(p, run_dir, plan.launch, threads, plan.wandb))) \
            if found else None
        if source is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = RunLock(run_dir)
            if lock.acquire():
                try:
                    if not finished(run_dir):
                        reuse.copy_run(source, run_dir, dataclasses.asdict(p))
                        copied += 1
                finally:
                    lock.release()
                continue
        left.append(p)   # nothing to copy, or an earlier launcher runs it: run_points waits
    if copied:
        print(f"{plan.cfg.name}: {copied} run(s) copied from sweep.reuse "
              f"({', '.join(plan.cfg.reuse)}): the same training, already finished there")
    return left


def run_points(plan: Plan, points: list[Point], backend: Backend,
               on_end: Callable[[], None]) -> bool:
    """Runs every unfinished point through `backend` and waits for each, `on_end()` after each
    ends; a point an earlier invocation still runs is waited for, never started twice. Returns
    False when interrupted."""
    from tqdm.auto import tqdm

    cfg = plan.cfg
    todo = [p for p in points if not finished(cfg.path / "runs" / p.run_id)]
    todo = reuse_finished(plan, todo, backend.threads)
    live = backend.earlier(todo)
    todo = [p for p in todo if p.run_id not in live]
    bar = tqdm(total=len(points), initial=len(points) - len(todo) - len(live), desc=cfg.name,
               unit="run", dynamic_ncols=True, smoothing=0.1)
    if live:
        bar.write(backend.waiting_line(live))
    counts = {status: 0 for status in backend.counted}
    try:
        while todo or live:
            for rid, handle in list(live.items()):
                status = backend.ended(rid, handle)
                if status is None:
                    continue
                counts[status if status in counts else Status.UNFINISHED] += 1
                del live[rid]
                bar.update(1)
                if status != Status.COMPLETED:
                    bar.write(backend.ended_line(rid, handle, status))
                on_end()
                if status == Status.FAILED and (line := backend.bad_input(rid)):
                    backend.interrupted(live, bar)
                    bar.close()
                    raise UserError(f"run {rid} failed on bad input, which every run shares, so "
                                    f"the sweep stopped: {line}")
            backend.launch(todo, live, bar)
            bar.set_postfix_str(backend.postfix(todo, live), refresh=False)
            bar.refresh()
            time.sleep(backend.poll_s)
    except KeyboardInterrupt:
        backend.interrupted(live, bar)
        bar.close()
        return False
    bar.close()
    print(backend.summary(counts))
    return True


class LocalBackend:
    """train.py processes on this machine, sweep.jobs at once, each on its GPUs or its share of
    the CPU cores. A point whose lock a run of an earlier launcher still holds keeps its slot
    and its GPUs until that run ends; Ctrl-C stops every run cleanly (stop_runs)."""
    poll_s = 0.5
    counted = (*Status.RESULTS, Status.FAILED, Status.INTERRUPTED)

    def __init__(self, plan: Plan, gpus: list[str], threads: int):
        self.plan, self.gpus, self.threads = plan, gpus, threads
        self.runs_dir = plan.cfg.path / "runs"
        self.elsewhere: dict = {}   # run id -> lock note, of todo's runs an earlier launcher runs

    def earlier(self, todo: list[Point]) -> dict:
        return {}   # found by their locks as the loop goes (launch)

    def waiting_line(self, live: dict) -> str:
        return ""

    def launch(self, todo: list[Point], live: dict[str, Launched], bar) -> None:
        cfg, gpus, runs_dir = self.plan.cfg, self.gpus, self.runs_dir
        # Runs of an earlier launcher that still live take their slot and their GPUs.
        self.elsewhere = elsewhere = {
            p.run_id: h for p in todo
            if (h := RunLock(runs_dir / p.run_id).held_elsewhere()) is not None}
        busy = {g for h in elsewhere.values() for g in h.get("gpus") or []}
        free = [g for g in gpus if g not in busy and not any(g in r.gpus for r in live.values())]
        slots = cfg.jobs - len(live) - len(elsewhere)
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
            live[p.run_id] = start_run(p, run_dir, lock,
                                       run_args(p, run_dir, self.plan.launch, self.threads,
                                                self.plan.wandb),
                                       take, self.threads, cfg.nproc_per_run)
            slots -= 1

    def ended(self, rid: str, run: Launched) -> Optional[str]:
        return None if run.proc.poll() is None else end_run(run, self.runs_dir / rid)

    def ended_line(self, rid: str, run: Launched, status: str) -> str:
        return f"{rid}: {status}"

    def bad_input(self, rid: str) -> Optional[str]:
        return bad_input_error(self.runs_dir / rid, torchrun=self.plan.cfg.nproc_per_run > 1)

    def postfix(self, todo: list[Point], live: dict) -> str:
        return (f"running {len(live)}"
                + (f" (+{len(self.elsewhere)} of an earlier launcher)" if self.elsewhere else "")
                + f", left {len(todo) - len(self.elsewhere)}")

    def interrupted(self, live: dict[str, Launched], bar) -> None:
        bar.write(f"interrupted: stopping {len(live)} run(s); "
                  "re-run the same command to resume them")
        stop_runs(live, self.runs_dir)

    def summary(self, counts: dict) -> str:
        return (f"{self.plan.cfg.name}: this invocation ran {sum(counts.values())} run(s): "
                + ", ".join(f"{v} {k}" for k, v in counts.items()))
