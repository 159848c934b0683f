"""Helpers for tests that start train.py as a real process (one, or several through torchrun)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def launch(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "train.py"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "train.py"]
    return subprocess.run(prefix + args, cwd=REPO, capture_output=True, text=True, timeout=600)


def train_losses(out: Path) -> dict[int, float]:
    """step -> train loss of the run's metrics.jsonl."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in recs if "lr" in r}
