"""train.py end to end on the tiny model: outputs, exact resume after SIGKILL, divergence,
and the bad-input errors (one line, exit code 2, nothing overwritten)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from runs import tiny_args
from trainer.outputs import read_metrics

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, **kw)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_run_writes_outputs(tmp_path, small_text):
    out = tmp_path / "run"
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={out}")) == 0
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "ckpt.pt"):
        assert (out / name).is_file(), name
    s = read_json(out / "summary.json")
    assert s["status"] == "completed" and s["steps"] == 40 and s["diverged_at_step"] is None
    assert s["tokens"] == 40 * 4 * 32 and s["tokens_per_s"] > 0
    assert s["final_val_loss"] < 4.0 and s["best_val_loss"] <= s["final_val_loss"]
    # the whole val split, scored once at the end: close to the 2-batch estimate, not equal
    assert abs(s["final_val_loss_full"] - s["final_val_loss"]) < 0.3
    assert s["final_val_loss_full"] != s["final_val_loss"]
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "val/loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40]
    train_recs = [r for r in recs if "train/loss" in r and "lr" in r]
    assert {"step", "tokens", "lr", "train/loss", "time_s"} <= set(train_recs[0])
    # The loss goes down from the uniform-guess level.
    assert evals[-1]["val/loss"] < evals[0]["val/loss"] - 0.3
    # A second fresh run into the same out_dir is refused: nothing overwritten.
    before = (out / "summary.json").read_text()
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={out}")) == 2
    assert (out / "summary.json").read_text() == before


def test_sigkill_then_resume_is_exact(tmp_path, small_text):
    common = tiny_args(tmp_path, small_text, "train.max_iters=600", "train.eval_interval=200",
                       "train.ckpt_interval=50", "model.dropout=0.1")
    # Prepare the data once so both runs start equally fast.
    assert run_cli(common + [f"out_dir={tmp_path / 'full'}"]).returncode == 0
    full = read_json(tmp_path / "full" / "summary.json")

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *common, f"out_dir={out}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "ckpt.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # let it run past the checkpoint, so the resume redoes steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    assert run_cli(common + [f"out_dir={out}", "resume=true"]).returncode == 0
    resumed = read_json(out / "summary.json")
    assert resumed["status"] == "completed"
    assert resumed["final_val_loss"] == full["final_val_loss"]
    assert resumed["best_val_loss"] == full["best_val_loss"]
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    events = [(r["step"], "val/loss" in r) for r in recs]  # a step has a train and an eval event
    assert len(events) == len(set(events)), "an event was logged twice after the resume"
    full_recs = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(events) == sorted((r["step"], "val/loss" in r) for r in full_recs)


def test_huge_lr_diverges(tmp_path, small_text):
    out = tmp_path / "div"
    code = train.main(tiny_args(tmp_path, small_text, f"out_dir={out}", "optimizer=sgd",
                                "optimizer.lr=1e4", "train.grad_clip=0", "train.warmup_iters=0",
                                "train.max_iters=200"))
    assert code == 0
    s = read_json(out / "summary.json")
    assert s["status"] == "diverged" and 1 <= s["diverged_at_step"] < 200
    assert s["final_val_loss"] is None


@pytest.mark.parametrize("override,needle", [
    ("optimizer=nosuchopt", "optimizer/nosuchopt"),
    ("train.max_itres=3", "max_itres"),
    ("optimizer.lr=-1e-3", "optimizer.lr"),
    ("train.max_iters=abc", "max_iters"),
    ("train.schedule=linear", "train.schedule"),
    ("dtype=float16", "float16"),
])
def test_bad_input_one_line(tmp_path, small_text, override, needle):
    out = tmp_path / "bad"
    r = run_cli(tiny_args(tmp_path, small_text, f"out_dir={out}", override))
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert not out.exists()


def test_wandb_offline(tmp_path, small_text, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    assert train.main(tiny_args(tmp_path, small_text, f"out_dir={out}", "train.max_iters=10",
                                "wandb.enabled=true", "wandb.mode=offline",
                                "wandb.group=g", "wandb.name=n")) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "no offline run to `wandb sync`"
    assert (out / "metrics.jsonl").stat().st_size > 0


# ---- the eval history lives in ckpt.pt; metrics.jsonl is a log only -------------------------

def eval_history(monkeypatch, args: list[str]) -> list[dict]:
    """train.main(args)'s eval records as the run ends (those final_val_loss and the task's
    summary read), without their wall times."""
    seen, real = [], train.finish

    def finish(progress, *a, **kw):
        seen.append([{k: v for k, v in r.items() if k != "time_s"} for r in progress.history])
        return real(progress, *a, **kw)
    monkeypatch.setattr(train, "finish", finish)
    assert train.main(args) == 0
    return seen[-1]


def history_args(tmp_path: Path, small_text: Path) -> list[str]:
    return tiny_args(tmp_path, small_text, "train.eval_interval=5", "train.ckpt_interval=0",
                     "train.schedule=constant", "train.final_eval_tokens=0")


@pytest.fixture(scope="module")
def straight_history(tmp_path_factory, small_text) -> list[dict]:
    """The eval records of an uninterrupted 20-step run of history_args."""
    tmp_path = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as monkeypatch:
        return eval_history(monkeypatch, history_args(tmp_path, small_text)
                            + ["train.max_iters=20", f"out_dir={tmp_path / 'run'}"])


@pytest.mark.parametrize("ckpt_format", ["with_history", "legacy"])
def test_a_resume_takes_its_eval_history_from_the_checkpoint(tmp_path, small_text, monkeypatch,
                                                            straight_history, ckpt_format):
    """A run trained to 10 steps and resumed to 20 (constant lr, evaluations every 5 steps)
    ends with the eval records of an uninterrupted 20-step run: steps 0 and 5 restored, the
    evaluation of step 10 (in the checkpoint of the end) done again once, 15 and 20 new.
    with_history: metrics.jsonl deleted before the resume (the history is the checkpoint's).
    legacy: a checkpoint saved before it held the history (its "history" key removed) resumes
    as such checkpoints always did, with the records of metrics.jsonl."""
    assert [r["step"] for r in straight_history] == [0, 5, 10, 15, 20]
    args, out = history_args(tmp_path, small_text), tmp_path / "resumed"
    assert train.main(args + ["train.max_iters=10", f"out_dir={out}"]) == 0
    if ckpt_format == "with_history":
        (out / "metrics.jsonl").unlink()
    else:
        state = torch.load(out / "ckpt.pt", weights_only=True)
        del state["history"]
        torch.save(state, out / "ckpt.pt")
    resumed = eval_history(monkeypatch, args + ["train.max_iters=20", f"out_dir={out}",
                                                "resume=true"])
    assert resumed == straight_history
    logged = [r["step"] for r in read_metrics(out) if "val/loss" in r]
    assert logged == ([10, 15, 20] if ckpt_format == "with_history" else [0, 5, 10, 15, 20])
