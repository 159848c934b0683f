"""Helpers for tests that start train.py as a real process (one, or several through torchrun)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_args(tmp_path: Path, source: Path, *extra: str) -> list[str]:
    """train.py overrides for a run of the `tiny` model on a small text (seconds on a CPU): the
    one place the tests spell it. Later overrides win, so `extra` may change any of these."""
    return ["model=tiny", "data=shakespeare_char", f"data.source={source}",
            f"data.root={tmp_path / 'data'}", "train.batch_size=4", "train.block_size=32",
            "train.max_iters=40", "train.eval_interval=20", "train.eval_iters=2",
            "train.warmup_iters=5", "train.log_interval=5", "threads=1", *extra]


def launch(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "train.py"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "train.py"]
    return subprocess.run(prefix + args, cwd=REPO, capture_output=True, text=True, timeout=600)


def train_losses(out: Path) -> dict[int, float]:
    """step -> train loss of the run's metrics.jsonl."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in recs if "lr" in r}


def why(proc: subprocess.CompletedProcess) -> str:
    """A failed run's story: under torchrun a rank's own error comes long before the launcher's
    closing summary, so show the lines that name an error as well as the end."""
    lines = proc.stderr.splitlines()
    errors = [l for l in lines if any(k in l for k in ("Error", "error:", "terminate", "abort", "what()"))]
    return "\n".join(errors[:30]) + "\n...\n" + proc.stderr[-1500:]
