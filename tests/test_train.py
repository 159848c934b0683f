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

import train
from runs import tiny_args

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
