"""Sweep points as submitit jobs: sweep.launcher=slurm (a SLURM job each, the sweep's points of a
stage submitted as one job array) or local_submitit (submitit's local executor: the same path on
this machine, sweep.jobs at once). The job a point runs (TrainJob: train.py, through torchrun for
sweep.nproc_per_run > 1), its requeue from its checkpoint on preemption or time-out (submitit's
checkpoint hook), the job id kept in the run directory (job.json) so that a re-run waits for a
job still queued or running instead of submitting it again, and the scheduler's backend that
submits the points and watches their jobs (SubmititBackend, for sweeper/runner.py's run_points).

    <sweep.dir>/submitit/                submitit's files of each job (pickles, logs, sbatch script)
    <sweep.dir>/runs/<run id>/job.json   {job_id, cluster, folder, submitted}

The resources are sweep.slurm.* (SlurmConfig in sweeper/config.py). sweep.dir must be on a
file system the nodes share.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sweeper.points import Plan, Point, run_args
from sweeper.rows import run_status
from sweeper.runner import (STOP_GRACE_S, bad_input_error, open_log, prepare_run, record_exit,
                            train_command, train_env)
from trainer.outputs import Status, read_json, write_json

JOB_FILE = "job.json"
# sacct's states of a job that has not ended (a requeued job passes through several)
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
          "COMPLETING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING"}


class TrainJob:
    """What a point's job runs: train.py (its output appended to the run's train.log), then
    exit.json; returns the run's status. On preemption or time-out submitit calls checkpoint():
    train.py is stopped (it writes ckpt.pt and summary.json, status interrupted) and the same
    command is requeued; it carries resume=true, so it goes on from the checkpoint."""

    def __init__(self, cmd: list[str], run_dir: str, env: dict):
        self.cmd, self.run_dir, self.env = cmd, run_dir, env
        self.proc: Optional[subprocess.Popen] = None

    def __call__(self) -> str:
        with open_log(Path(self.run_dir), self.cmd) as log:
            env = {**os.environ, **self.env}   # the node's, with the launcher's few additions
            # Own session: SLURM's signals to the job reach train.py through stop() only.
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            try:
                rc = self.proc.wait()
            except BaseException:   # the job is ending (cancelled, or requeued by checkpoint())
                self.stop()
                raise
        return record_exit(Path(self.run_dir), rc)

    def stop(self) -> None:
        """SIGINT to train.py's process group (torchrun passes it on): its step ends, then its
        checkpoint and summary (status interrupted); SIGKILL after STOP_GRACE_S."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on preemption or time-out (SIGUSR2): stop train.py, requeue the job."""
        import submitit

        self.stop()
        return submitit.helpers.DelayedSubmission(TrainJob(self.cmd, self.run_dir, self.env))

    def __getstate__(self) -> dict:   # a running process does not travel with the job
        return {**self.__dict__, "proc": None}


def make_executor(plan: Plan, folder: Path):
    """submitit's executor of this sweep: SLURM with sweep.slurm.*'s resources, or local."""
    import submitit

    cfg, s = plan.cfg, plan.cfg.slurm
    cluster = "slurm" if cfg.launcher == "slurm" else "local"
    gpus = s.gpus_per_node if s.gpus_per_node is not None else \
        (0 if plan.device == "cpu" else cfg.nproc_per_run)
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     slurm_max_num_timeout=s.max_requeue)
    slurm = {"partition": s.partition, "mem": s.mem, "account": s.account, "qos": s.qos,
             "constraint": s.constraint, "array_parallelism": s.array_parallelism,
             "signal_delay_s": s.signal_delay_s, "setup": list(s.setup) or None,
             "additional_parameters": dict(s.additional) or None}
    executor.update_parameters(
        name=cfg.name, timeout_min=s.time, nodes=1, tasks_per_node=1, gpus_per_node=gpus,
        cpus_per_task=s.cpus_per_task,
        **{f"slurm_{k}": v for k, v in slurm.items() if v is not None})
    return executor


def threads_per_process(plan: Plan, local_threads: int) -> int:
    """CPU threads of each process: a SLURM job's cpus_per_task shared by its processes (0:
    torch's default, all the job's cores), or the local share."""
    s = plan.cfg.slurm
    if plan.cfg.launcher != "slurm":
        return local_threads
    return max(1, s.cpus_per_task // plan.cfg.nproc_per_run) if s.cpus_per_task else 0


def submit(executor, plan: Plan, points: list[Point], threads: int) -> dict:
    """Submit the points (one job array on SLURM); job.json in each run directory. Returns
    {run id: job}."""
    runs_dir = plan.cfg.path / "runs"
    todo = []
    for p in points:
        run_dir = runs_dir / p.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        prepare_run(p, run_dir)
        cmd = train_command(plan.cfg.nproc_per_run) + \
            run_args(p, run_dir, plan.launch, threads, plan.wandb)
        if plan.cfg.nproc_per_run > 1:   # SLURM's USR2 may reach torchrun too: pass it on
            cmd.insert(3, "--signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2")
        env = {k: v for k, v in train_env(threads).items() if os.environ.get(k) != v
               and not (k == "OMP_NUM_THREADS" and not threads)}   # 0: the node's default
        todo.append((p, TrainJob(cmd, str(run_dir), env)))
    with executor.batch():
        jobs = [executor.submit(job) for _, job in todo]
    for (p, _), job in zip(todo, jobs):
        write_json(runs_dir / p.run_id / JOB_FILE,
                   {"job_id": str(job.job_id), "cluster": executor.cluster,
                    "folder": str(job.paths.folder), "submitted": time.time()}, indent=None)
    return {p.run_id: job for (p, _), job in zip(todo, jobs)}


@dataclass
class EarlierLocalJob:
    """A local_submitit job an earlier launcher started, while its controller process lives."""
    job_id: str
    state: str = "RUNNING"

    def done(self) -> bool:
        try:
            os.kill(int(self.job_id), 0)
        except (ProcessLookupError, ValueError):
            return True
        except PermissionError:
            return False
        return False


def earlier_jobs(runs_dir: Path, run_ids: list[str]) -> dict:
    """{run id: job} of the jobs of earlier invocations still queued or running for these run
    directories (their job.json): such a point is waited for, never submitted twice."""
    records = {rid: r for rid in run_ids if (r := read_json(runs_dir / rid / JOB_FILE))}
    live = {rid: EarlierLocalJob(r["job_id"]) for rid, r in records.items()
            if r.get("cluster") != "slurm"}
    live = {rid: job for rid, job in live.items() if not job.done()}
    on_slurm = {rid: r for rid, r in records.items() if r.get("cluster") == "slurm"}
    if on_slurm:
        import submitit

        jobs = {rid: submitit.SlurmJob(folder=r["folder"], job_id=r["job_id"])
                for rid, r in on_slurm.items()}
        watcher = next(iter(jobs.values())).watcher
        for job in jobs.values():
            watcher.register_job(job.job_id)
        watcher.update()   # one sacct call for all; a job sacct no longer knows has ended
        live.update({rid: job for rid, job in jobs.items()
                     if watcher.get_state(job.job_id, mode="cache") in ACTIVE})
    return live


def state_of(job) -> str:
    with suppress(Exception):   # sacct may fail now and then: the next poll asks again
        return job.state
    return "UNKNOWN"


class SubmititBackend:
    """sweeper/runner.py's run_points through submitit: the points to start are submitted as
    jobs (one array on SLURM, which runs sweep.slurm.array_parallelism of it at once; locally,
    sweep.jobs at once); a point whose job of an earlier invocation is still queued or running is
    waited for, never submitted again. Ctrl-C leaves the jobs be: the same command waits for
    them again."""
    poll_s = 1.0
    counted = (*Status.RESULTS, Status.FAILED, Status.INTERRUPTED, Status.UNFINISHED)

    def __init__(self, plan: Plan, threads: int):
        self.plan = plan
        self.runs_dir = plan.cfg.path / "runs"
        self.executor = make_executor(plan, plan.cfg.path / "submitit")
        self.threads = threads_per_process(plan, threads)

    def earlier(self, todo: list[Point]) -> dict:
        return earlier_jobs(self.runs_dir, [p.run_id for p in todo])

    def bad_input(self, rid: str) -> Optional[str]:
        return bad_input_error(self.runs_dir / rid, torchrun=self.plan.cfg.nproc_per_run > 1)

    def waiting_line(self, live: dict) -> str:
        return (f"{self.plan.cfg.name}: waiting for {len(live)} job(s) of an earlier invocation: "
                f"{', '.join(str(j.job_id) for j in live.values())}")

    def launch(self, todo: list[Point], live: dict, bar) -> None:
        cfg = self.plan.cfg
        # SLURM: all of them, one array (it runs sweep.slurm.array_parallelism at once); locally,
        # up to sweep.jobs at once
        batch = list(todo) if cfg.launcher == "slurm" else todo[:max(0, cfg.jobs - len(live))]
        if batch:
            del todo[:len(batch)]
            live.update(submit(self.executor, self.plan, batch, self.threads))
            bar.write(f"{cfg.name}: submitted {len(batch)} job(s) "
                      f"({', '.join(str(live[p.run_id].job_id) for p in batch[:3])}"
                      f"{', ...' if len(batch) > 3 else ''})")

    def ended(self, rid: str, job) -> Optional[str]:
        if not job.done():
            return None
        run_dir = self.runs_dir / rid
        return run_status(run_dir, read_json(run_dir / "summary.json") or {})[0]

    def ended_line(self, rid: str, job, status: str) -> str:
        return f"{rid}: {status} (job {job.job_id})"

    def postfix(self, todo: list[Point], live: dict) -> str:
        states = [state_of(job) for job in live.values()]
        queued = sum(s in QUEUED for s in states)
        return f"queued {queued}, running {len(states) - queued}, left {len(todo)}"

    def interrupted(self, live: dict, bar) -> None:
        bar.write(f"interrupted: {len(live)} job(s) were submitted or waited for "
                  f"({', '.join(str(j.job_id) for j in live.values())}); the same command waits "
                  "for those still queued or running (scancel stops SLURM jobs)")

    def summary(self, counts: dict) -> str:
        return (f"{self.plan.cfg.name}: this invocation waited for {sum(counts.values())} job(s)"
                + "".join(f", {v} {k}" for k, v in counts.items() if v))
