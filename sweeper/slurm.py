"""Sweep points as submitit jobs: sweep.launcher=slurm (a SLURM job each, the sweep's points of a
stage submitted as one job array) or local_submitit (submitit's local executor: the same path on
this machine, sweep.jobs at once). The job a point runs (TrainJob: train.py, through torchrun for
sweep.nproc_per_run > 1), its requeue from its checkpoint on preemption or time-out (submitit's
checkpoint hook), the job id kept in the run directory (job.json) so that a re-run waits for a
job still queued or running instead of submitting it again, and the loop that submits, waits
and shows progress (run_points, as sweeper/runner.py's for local processes).

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
from typing import Callable, Optional

from sweeper.points import Plan, Point, run_args
from sweeper.runner import (STOP_GRACE_S, finished, open_log, prepare_run, record_exit,
                            run_status, train_command, train_env)
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


def run_points(plan: Plan, points: list[Point], gpus: list[str], threads: int,
               on_end: Callable[[], None]) -> bool:
    """Runs every unfinished point as a submitit job and waits for them, `on_end()` after each
    ends; points whose earlier job is still queued or running are waited for, not submitted.
    Returns False when interrupted (the jobs go on; the same command waits for them again)."""
    from tqdm.auto import tqdm

    cfg = plan.cfg
    runs_dir = cfg.path / "runs"
    executor = make_executor(plan, cfg.path / "submitit")
    threads = threads_per_process(plan, threads)
    todo = [p for p in points if not finished(runs_dir / p.run_id)]
    live = earlier_jobs(runs_dir, [p.run_id for p in todo])
    todo = [p for p in todo if p.run_id not in live]
    bar = tqdm(total=len(points), initial=len(points) - len(todo) - len(live), desc=cfg.name,
               unit="run", dynamic_ncols=True, smoothing=0.1)
    if live:
        bar.write(f"{cfg.name}: waiting for {len(live)} job(s) of an earlier invocation: "
                  f"{', '.join(str(j.job_id) for j in live.values())}")
    counts = {status: 0 for status in (*Status.RESULTS, Status.FAILED, Status.INTERRUPTED,
                                       Status.UNFINISHED)}
    # SLURM runs sweep.slurm.array_parallelism of the array at once; locally, sweep.jobs.
    at_once = len(points) if cfg.launcher == "slurm" else cfg.jobs
    try:
        while todo or live:
            for rid, job in list(live.items()):
                if job.done():
                    status, _ = run_status(runs_dir / rid, read_json(runs_dir / rid / "summary.json") or {})
                    counts[status if status in counts else Status.UNFINISHED] += 1
                    del live[rid]
                    bar.update(1)
                    if status != Status.COMPLETED:
                        bar.write(f"{rid}: {status} (job {job.job_id})")
                    on_end()
            batch, todo = todo[:max(0, at_once - len(live))], todo[max(0, at_once - len(live)):]
            if batch:
                live.update(submit(executor, plan, batch, threads))
                bar.write(f"{cfg.name}: submitted {len(batch)} job(s) "
                          f"({', '.join(str(live[p.run_id].job_id) for p in batch[:3])}"
                          f"{', ...' if len(batch) > 3 else ''})")
            states = [state_of(job) for job in live.values()]
            queued = sum(s in QUEUED for s in states)
            bar.set_postfix_str(f"queued {queued}, running {len(states) - queued}, left {len(todo)}",
                                refresh=False)
            bar.refresh()
            time.sleep(1.0)
    except KeyboardInterrupt:
        bar.write(f"interrupted: {len(live)} job(s) were submitted or waited for "
                  f"({', '.join(str(j.job_id) for j in live.values())}); the same command waits "
                  "for those still queued or running (scancel stops SLURM jobs)")
        bar.close()
        return False
    bar.close()
    print(f"{cfg.name}: this invocation waited for {sum(counts.values())} job(s)"
          + "".join(f", {v} {k}" for k, v in counts.items() if v))
    return True
