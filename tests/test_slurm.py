"""Sweeps through submitit (sweeper/slurm.py): a 2-point sweep of real jobs on submitit's local
executor, end to end, and a re-run that submits nothing; the sbatch script submitit writes for
sweep.launcher=slurm, with the requested resources (sbatch and srun are stand-ins: nothing is
submitted); a job still queued or running is never submitted twice; a preempted job stops its
run at a checkpoint and its requeued copy resumes it to the end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import sweep
from sweeper import slurm
from sweeper.points import plan, split_args
from sweeper.runner import run_points, train_command


def sweep_args(tmp_path: Path, source: Path, *extra: str) -> list[str]:
    return [f"sweep.dir={tmp_path / 'sw'}", "sweep.name=t", "sweep.overrides=[]",
            "sweep.seeds=[0]", "sweep.max_extend=0", "sweep.optimizers=[adamw]",
            "sweep.lrs=[1e-3,3e-3]", "model=tiny", "data=shakespeare_char",
            f"data.source={source}", f"data.root={tmp_path / 'data'}", "train.batch_size=4",
            "train.block_size=32", "train.max_iters=10", "train.eval_interval=5",
            "train.eval_iters=1", "train.warmup_iters=1", "device=cpu", *extra]


def stand_ins(tmp_path: Path, monkeypatch, sacct_state: str = "RUNNING") -> Path:
    """srun, sbatch and sacct on PATH that submit nothing: sbatch answers job 4242, sacct says
    the jobs of its array are in `sacct_state`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"srun": "exit 0",
               "sbatch": 'echo "Submitted batch job 4242"',
               "sacct": 'echo "JobID|State|NodeList"; for i in 0 1 2; do '
                        f'echo "4242_$i|{sacct_state}|node1"; done'}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_local_submitit_sweep_and_a_rerun_that_submits_nothing(tmp_path, small_text, capsys):
    args = sweep_args(tmp_path, small_text, "sweep.launcher=local_submitit", "sweep.jobs=2")
    assert sweep.main(args) == 0
    d = tmp_path / "sw"
    runs = sorted((d / "runs").iterdir())
    assert len(runs) == 2
    jobs = {}
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert json.loads((run / "exit.json").read_text())["returncode"] == 0
        jobs[run.name] = json.loads((run / slurm.JOB_FILE).read_text())
        assert jobs[run.name]["cluster"] == "local"
        assert "sweep.py launches:" in (run / "train.log").read_text()
    assert "2 completed" in capsys.readouterr().out
    submitted = sorted(p.name for p in (d / "submitit").iterdir())
    assert sweep.main(args) == 0
    assert "waited for 0 job(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (d / "submitit").iterdir()) == submitted
    assert {r.name: json.loads((r / slurm.JOB_FILE).read_text()) for r in runs} == jobs
    assert (d / "results.csv").read_text().count("completed") == 2


def test_sbatch_script_asks_for_the_resources(tmp_path, monkeypatch):
    stand_ins(tmp_path, monkeypatch)
    p = plan([f"sweep.dir={tmp_path / 'sw'}", "sweep=namo_gpt2", "sweep.launcher=slurm",
              "sweep.slurm.partition=gpu", "sweep.slurm.time=720", "sweep.slurm.cpus_per_task=32",
              "sweep.slurm.mem=200G", "sweep.slurm.account=proj", "sweep.slurm.qos=high",
              "sweep.slurm.constraint=h100", "sweep.slurm.array_parallelism=2",
              "sweep.slurm.setup=[module load cuda]"], [])
    executor = slurm.make_executor(p, p.cfg.path / "submitit")
    points = p.points[:3]
    jobs = slurm.submit(executor, p, points, slurm.threads_per_process(p, 1))
    [script] = (p.cfg.path / "submitit").glob("*_submission.sh")
    text = script.read_text()
    for line in ("--partition=gpu", "--time=720", "--gpus-per-node=4", "--cpus-per-task=32",
                 "--mem=200G", "--account=proj", "--qos=high", "--constraint=h100",
                 "--nodes=1", "--ntasks-per-node=1", "--array=0-2%2", "--signal=USR2@120",
                 "--job-name=namo_gpt2"):
        assert f"#SBATCH {line}\n" in text, (line, text)
    assert "module load cuda\n" in text and "submitit.core._submit" in text
    # one job of the array per point, its id in the run's directory
    for i, pt in enumerate(points):
        record = json.loads((p.cfg.path / "runs" / pt.run_id / slurm.JOB_FILE).read_text())
        assert record["job_id"] == f"4242_{i}" == jobs[pt.run_id].job_id
        assert record["cluster"] == "slurm"
    # what each job runs: torchrun with 4 processes, 8 threads each (32 cpus / 4)
    from submitit.core.utils import DelayedSubmission

    pickled = sorted((p.cfg.path / "submitit").glob("4242_*_submitted.pkl"))
    assert len(pickled) == 3
    job = DelayedSubmission.load(pickled[0]).function
    assert isinstance(job, slurm.TrainJob) and job.cmd[:3] == train_command(4)[:3]   # torchrun
    assert job.cmd[3].startswith("--signals_to_handle=") and "SIGUSR2" in job.cmd[3]
    assert job.cmd[4:7] == train_command(4)[3:]    # --standalone --nproc_per_node=4 train.py
    assert "resume=true" in job.cmd and "threads=8" in job.cmd
    assert job.run_dir == str(p.cfg.path / "runs" / points[0].run_id)


def test_a_queued_or_running_job_is_not_submitted_again(tmp_path, monkeypatch, small_text):
    runs_dir = tmp_path / "runs"
    for i, rid in enumerate(["a", "b"]):
        (runs_dir / rid).mkdir(parents=True)
        (runs_dir / rid / slurm.JOB_FILE).write_text(json.dumps(
            {"job_id": f"4242_{i}", "cluster": "slurm", "folder": str(tmp_path / "submitit")}))
    stand_ins(tmp_path, monkeypatch, sacct_state="PENDING")
    assert sorted(slurm.earlier_jobs(runs_dir, ["a", "b"])) == ["a", "b"]
    later = tmp_path / "later"
    later.mkdir()
    stand_ins(later, monkeypatch, sacct_state="COMPLETED")   # ended: a re-run submits them
    assert slurm.earlier_jobs(runs_dir, ["a", "b"]) == {}
    # local_submitit: while the job's controller process lives
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (runs_dir / "a" / slurm.JOB_FILE).write_text(json.dumps({"job_id": str(proc.pid),
                                                                 "cluster": "local"}))
        assert list(slurm.earlier_jobs(runs_dir, ["a", "b"])) == ["a"]
    finally:
        proc.kill()
        proc.wait()
    assert slurm.earlier_jobs(runs_dir, ["a"]) == {}

    # the scheduler waits for an earlier job and submits only the other point
    p = plan(*split_args(sweep_args(tmp_path, small_text, "sweep.launcher=local_submitit")))
    first, second = p.points
    (p.cfg.path / "runs" / first.run_id).mkdir(parents=True)
    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    (p.cfg.path / "runs" / first.run_id / slurm.JOB_FILE).write_text(
        json.dumps({"job_id": str(waiting.pid), "cluster": "local"}))
    submitted = []

    class Done:
        job_id, state = "x", "RUNNING"

        def done(self):
            return True

    monkeypatch.setattr(slurm, "submit", lambda ex, pl, points, threads: (
        submitted.extend(q.run_id for q in points) or {q.run_id: Done() for q in points}))
    monkeypatch.setattr(slurm, "make_executor", lambda *a: None)
    reaper = threading.Thread(target=waiting.wait)
    reaper.start()
    assert run_points(p, p.points, slurm.SubmititBackend(p, 1), on_end=lambda: None)
    reaper.join()
    assert submitted == [second.run_id]


def test_preempted_job_checkpoints_and_its_requeued_copy_resumes(tmp_path, small_text):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = [a for a in sweep_args(tmp_path, small_text) if not a.startswith("sweep")]
    cmd = train_command(1) + [*args, "train.max_iters=400", "train.log_interval=10",
                              "train.ckpt_interval=0", "train.eval_interval=400",
                              f"out_dir={run_dir}", "resume=true", "threads=1"]
    job = slurm.TrainJob(cmd, str(run_dir), {"PYTHONUNBUFFERED": "1"})
    status = []
    worker = threading.Thread(target=lambda: status.append(job()))
    worker.start()
    deadline = time.time() + 120
    while not (run_dir / "metrics.jsonl").exists() or \
            len((run_dir / "metrics.jsonl").read_text().splitlines()) < 2:
        assert time.time() < deadline and worker.is_alive(), (run_dir / "train.log").read_text()
        time.sleep(0.1)
    requeued = job.checkpoint()          # what submitit calls on SIGUSR2
    worker.join(timeout=120)
    assert status == ["interrupted"]
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and 0 < stopped["steps"] < 400
    assert (run_dir / "ckpt.pt").exists()
    assert requeued.function is not job and requeued.function.cmd == cmd
    assert requeued.result() == "completed"   # the requeued job, resuming from the checkpoint
    done = json.loads((run_dir / "summary.json").read_text())
    assert done["status"] == "completed" and done["steps"] == 400
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "lr" in json.loads(l)]
    assert steps == sorted(set(steps)) and steps[-1] == 400
