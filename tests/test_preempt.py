"""Graceful stop (trainer/stop.py) with signals sent to real processes on the tiny model: SIGTERM,
SIGUSR1 and SIGINT end the step, write ckpt.pt and summary.json (status interrupted) and exit 3;
resume=true then ends exactly where an uninterrupted run ends; a second signal ends at once
(copies of one request count once); under torchrun (2 gloo ranks) the ranks agree on the step,
whether torchrun passes the signal on or one rank alone gets it; sweep.py's stop ends its runs
interrupted and the same command resumes them. Every wait is for a file (a metrics line, a
checkpoint), never a fixed time."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from trainer.outputs import EXIT_INTERRUPTED, read_metrics
from runs import tiny_args

REPO = Path(__file__).resolve().parents[1]


def checkpointed_args(tmp_path: Path, source: Path, out: Path, *extra: str) -> list[str]:
    """A 400-step tiny run into `out` with a checkpoint every 100 steps (dropout on, so a resume
    must also restore the random state)."""
    return tiny_args(tmp_path, source, "train.max_iters=400", "train.eval_interval=100",
                     "train.ckpt_interval=100", "model.dropout=0.1", f"out_dir={out}", *extra)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A process of ours in the background, its output in `log` (a pipe could fill and block).
    SIGINT is set back to its default in it, as in a shell's foreground job: under a pytest
    that itself runs in the background (`nohup ... &`), the child would inherit SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler (Ctrl-C to sweep.py did nothing)."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def start_train(args: list[str], log: Path, nproc: int = 1) -> subprocess.Popen:
    prefix = [sys.executable, "train.py"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "train.py"]
    return start(prefix + args, log)


def wait_for(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"ended (code {proc.returncode}) before {what}:\n{tail(log)}"
        assert time.time() < deadline, f"no {what} after {timeout} s:\n{tail(log)}"
        time.sleep(0.05)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def trained(out: Path) -> bool:
    """A train record is in metrics.jsonl: the loop is running."""
    try:
        return any("lr" in r for r in read_metrics(out))
    except Exception:   # a line being written
        return False


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running after {timeout} s:\n{tail(log)}")


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def ckpt_step(out: Path) -> int:
    return torch.load(out / "ckpt.pt", weights_only=True)["step"]


def events(out: Path) -> list[tuple]:
    """(step, kind, loss) of every record: a resumed run must log each event once, the same."""
    return [(r["step"], "val/loss" in r, r.get("val/loss", r.get("train/loss")))
            for r in read_metrics(out)]


def check_interrupted(out: Path, max_iters: int) -> dict:
    s = summary(out)
    assert s["status"] == "interrupted" and s["final_val_loss"] is None, s
    assert 0 < s["steps"] < max_iters and ckpt_step(out) == s["steps"], s
    assert max(r["step"] for r in read_metrics(out)) <= s["steps"]
    return s


# ---------------------------------------------------------------------------------------------
# One process

def test_sigterm_stops_after_the_step_and_resume_is_exact(tmp_path, small_text):
    full, out = tmp_path / "full", tmp_path / "stopped"
    assert train.main(checkpointed_args(tmp_path, small_text, full)) == 0   # also prepares the data
    log = tmp_path / "stopped.log"
    proc = start_train(checkpointed_args(tmp_path, small_text, out), log)
    wait_for("a train record", lambda: trained(out), proc, log)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, log) == EXIT_INTERRUPTED, tail(log)
    assert "SIGTERM: finishing the current step" in tail(log)
    s = check_interrupted(out, 400)
    assert f"stopped by SIGTERM after step {s['steps']}" in tail(log)
    assert not list(out.glob(".*.tmp"))
    # A fresh run is refused (the directory holds a run); resume=true goes on exactly.
    assert train.main(checkpointed_args(tmp_path, small_text, out)) == 2
    assert train.main(checkpointed_args(tmp_path, small_text, out, "resume=true")) == 0
    resumed, reference = summary(out), summary(full)
    assert resumed["status"] == "completed" and resumed["steps"] == 400
    for key in ("final_val_loss", "final_val_loss_full", "best_val_loss"):
        assert resumed[key] == reference[key], key
    assert events(out) == events(full)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT],
                         ids=["SIGUSR1", "SIGUSR2", "SIGINT"])   # SIGUSR2: submitit's warning
def test_sigusr1_and_sigint_stop_cleanly(tmp_path, small_text, sig):
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_train(checkpointed_args(tmp_path, small_text, out, "train.max_iters=100000"), log)
    wait_for("a train record", lambda: trained(out), proc, log)
    proc.send_signal(sig)
    assert finish(proc, log) == EXIT_INTERRUPTED, tail(log)
    check_interrupted(out, 100000)
    assert "Traceback" not in tail(log) and "KeyboardInterrupt" not in tail(log)


def test_second_signal_ends_at_once(tmp_path, small_text):
    """A step that takes a minute: the first SIGTERM waits for it, a copy sent right after is
    the same request, a SIGTERM seconds later ends the process at once and leaves no summary."""
    out, log, marker = tmp_path / "run", tmp_path / "run.log", tmp_path / "in_step"
    args = checkpointed_args(tmp_path, small_text, out, "train.max_iters=100000")
    code = (f"import sys, time, train\nreal = train.optimizer_step\n"
            f"def slow(*a, **k):\n    real(*a, **k)\n    open({str(marker)!r}, 'w').close()\n"
            f"    time.sleep(120)\ntrain.optimizer_step = slow\nsys.exit(train.main({args!r}))\n")
    proc = start([sys.executable, "-c", code], log)
    wait_for("the slow step", marker.exists, proc, log)
    proc.send_signal(signal.SIGTERM)
    wait_for("the first signal's message", lambda: "SIGTERM: finishing" in tail(log), proc, log)
    proc.send_signal(signal.SIGTERM)          # a copy (e.g. torchrun passing it on)
    time.sleep(2.5)                           # past trainer.stop.COPIES_S
    assert proc.poll() is None, f"a copy of the first signal ended the run:\n{tail(log)}"
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, log) == -signal.SIGTERM, tail(log)
    assert "SIGTERM again: ending at once" in tail(log)
    assert not (out / "summary.json").exists() and not list(out.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# torchrun, 2 gloo ranks

def torchrun_args(tmp_path: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return checkpointed_args(tmp_path, source, out, "train.grad_accum_steps=2",
                             "train.max_iters=200", "train.eval_interval=50",
                             "train.ckpt_interval=50", *extra)


def test_torchrun_stop_and_resume(tmp_path, small_text):
    """SIGTERM to torchrun: it passes it on, both ranks stop at the same step (ranks_in_sync),
    rank 0 writes the checkpoint; resumed under torchrun, the run ends where an uninterrupted
    2-process run ends."""
    full, out = tmp_path / "full", tmp_path / "stopped"
    log = tmp_path / "full.log"
    code = finish(start_train(torchrun_args(tmp_path, small_text, full), log, 2), log)
    assert code == 0, tail(log)
    log = tmp_path / "stopped.log"
    proc = start_train(torchrun_args(tmp_path, small_text, out), log, 2)
    wait_for("a train record", lambda: trained(out), proc, log)
    proc.send_signal(signal.SIGTERM)
    finish(proc, log)   # torchrun itself exits 1 after passing a signal on
    s = check_interrupted(out, 200)
    assert s["world_size"] == 2 and s["ranks_in_sync"] is True, s
    log = tmp_path / "resumed.log"
    resume = start_train(torchrun_args(tmp_path, small_text, out, "resume=true"), log, 2)
    assert finish(resume, log) == 0, tail(log)
    resumed, reference = summary(out), summary(full)
    assert resumed["status"] == "completed" and resumed["ranks_in_sync"] is True
    for key in ("final_val_loss", "final_val_loss_full", "best_val_loss"):
        assert resumed[key] == reference[key], key
    assert events(out) == events(full)


def worker_pid(torchrun: subprocess.Popen, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (a child of torchrun with RANK=<rank>)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != torchrun.pid:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    return None


def test_torchrun_signal_to_one_rank(tmp_path, small_text):
    """SIGUSR1 reaches rank 1 only: the ranks agree one step after the step in which rank 1 saw
    it (its flag is all-reduced every step and read one step late), and both stop there."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_train(torchrun_args(tmp_path, small_text, out, "train.max_iters=100000"), log, 2)
    wait_for("a train record", lambda: trained(out), proc, log)
    pid = worker_pid(proc, 1)
    assert pid is not None, "rank 1's process not found"
    os.kill(pid, signal.SIGUSR1)
    finish(proc, log)
    s = check_interrupted(out, 100000)
    assert s["world_size"] == 2 and s["ranks_in_sync"] is True, s
    seen = re.search(r"rank 1: SIGUSR1 seen after step (\d+)", log.read_text())
    assert seen is not None, tail(log)
    assert s["steps"] == int(seen.group(1)) + 1, (s["steps"], seen.group(0))


# ---------------------------------------------------------------------------------------------
# sweep.py

def test_sweep_stop_interrupts_runs_and_the_same_command_resumes(tmp_path, small_text):
    """Ctrl-C (SIGINT) to the launcher of a torchrun run: the run ends interrupted (its own
    train.lock and the launcher's sweep.lock side by side), the launcher exits 3, results.csv
    says interrupted; the same command resumes the run to its end."""
    d = tmp_path / "sw"
    args = [f"sweep.dir={d}", "sweep.name=t", "sweep.overrides=[]", "sweep.seeds=[0]",
            "sweep.jobs=1", "sweep.nproc_per_run=2", "sweep.max_extend=0",
            "sweep.optimizers=[adamw]", "sweep.lrs=[1e-3]", "model=tiny", "data=shakespeare_char",
            f"data.source={small_text}", f"data.root={tmp_path / 'data'}", "train.batch_size=4",
            "train.block_size=32", "train.grad_accum_steps=2", "train.max_iters=600",
            "train.eval_interval=100", "train.eval_iters=2", "train.warmup_iters=5",
            "train.log_interval=5", "train.ckpt_interval=100"]
    log = tmp_path / "sweep.log"
    launcher = start([sys.executable, "sweep.py", *args], log)
    runs = lambda: list(d.glob("runs/*/metrics.jsonl"))  # noqa: E731
    wait_for("a run's train record", lambda: any(trained(m.parent) for m in runs()), launcher, log)
    launcher.send_signal(signal.SIGINT)
    assert finish(launcher, log) == EXIT_INTERRUPTED, tail(log)
    run = runs()[0].parent
    check_interrupted(run, 600)
    assert json.loads((run / "exit.json").read_text())["status"] == "interrupted"
    assert (d / "results.csv").read_text().splitlines()[1].count(",interrupted,") == 1
    rerun = subprocess.run([sys.executable, "sweep.py", *args], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    s = summary(run)
    assert s["status"] == "completed" and s["steps"] == 600
    assert (run / "train.log").read_text().count("sweep.py launches") == 2
    steps = [e[:2] for e in events(run)]
    assert len(steps) == len(set(steps)), "an event logged twice after the resume"


# ---------------------------------------------------------------------------------------------
# A kill right after an evaluation that improved best_val_loss, at a checkpoint step

# train.py in a child process that stops itself right after the evaluation of step 20 (a
# checkpoint step and an eval step: the checkpoint of step 20 is written before that
# evaluation, so it holds the best_val_loss of step 0 only). SIGKILL: nothing more is written;
# SIGTERM: the graceful stop ends step 20's update and checkpoints step 21.
KILL_AFTER_EVAL = """
import os, signal, sys
import train
SIG, ARGS = getattr(signal, sys.argv[1]), sys.argv[2:]   # before Hydra rewrites sys.argv
evaluate = train.Run.evaluate
def evaluate_then_stop(self):
    evaluate(self)
    if self.progress.step == 20:
        if self.ckpt_writer is not None:
            self.ckpt_writer.wait()       # the checkpoint of step 20 is on disk
        os.kill(os.getpid(), SIG)
train.Run.evaluate = evaluate_then_stop
sys.exit(train.main(ARGS))
"""


def eval_records(out: Path) -> list[tuple]:
    return [(r["step"], r["val/loss"]) for r in read_metrics(out) if "val/loss" in r]


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_stop_right_after_an_improving_eval_at_a_checkpoint_step(tmp_path, small_text, sig):
    """30 steps, evaluations at 0 and 20 only (no evaluation at the end), checkpoints every 20:
    the run is stopped right after the evaluation of step 20, which improved best_val_loss. The
    resumed run's best_val_loss, final_val_loss and eval records equal an uninterrupted run's
    exactly, with the evaluation of step 20 recorded once."""
    args = tiny_args(tmp_path, small_text, "train.max_iters=30", "train.eval_interval=20",
                     "train.ckpt_interval=20", "train.eval_at_end=false", "model.dropout=0.1")
    full, out = tmp_path / "full", tmp_path / "stopped"
    assert train.main(args + [f"out_dir={full}"]) == 0
    reference = summary(full)
    (e0, l0), (e20, l20) = eval_records(full)
    assert (e0, e20) == (0, 20) and l20 < l0          # the evaluation of step 20 improved it
    assert reference["best_val_loss"] == l20 and reference["final_val_loss"] == l20

    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_EVAL, sig, *args, f"out_dir={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert not (out / "summary.json").exists() and ckpt_step(out) == 20
    else:
        assert proc.returncode == EXIT_INTERRUPTED, proc.stderr[-2000:]
        assert summary(out)["best_val_loss"] == l20 and ckpt_step(out) == 21
    assert eval_records(out) == [(0, l0), (20, l20)]  # the stopped run did log that evaluation

    assert train.main(args + [f"out_dir={out}", "resume=true"]) == 0
    resumed = summary(out)
    assert resumed["status"] == "completed" and resumed["steps"] == 30
    for key in ("best_val_loss", "final_val_loss", "final_val_loss_full"):
        assert resumed[key] == reference[key], key
    assert eval_records(out) == eval_records(full)    # step 20 once, the same value
    assert events(out) == events(full)


def test_a_muon_checkpoint_does_not_resume_as_namo(tmp_path, small_text, capsys):
    """optimizer.name is one of checkpoint.STATE_KEYS: resuming an optimizer=muon run with
    optimizer=namo is refused by name (one error line, exit 2), nothing loaded or changed."""
    out = tmp_path / "run"
    args = tiny_args(tmp_path, small_text, "train.max_iters=5", "optimizer=muon", f"out_dir={out}")
    assert train.main(args) == 0
    before = (out / "ckpt.pt").read_bytes(), (out / "summary.json").read_text()
    capsys.readouterr()
    assert train.main(args + ["optimizer=namo", "resume=true"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.name=muon there, namo here" in err, err
    assert ((out / "ckpt.pt").read_bytes(), (out / "summary.json").read_text()) == before
