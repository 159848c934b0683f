"""Atomic checkpoints: write to a temporary file, then rename, so a kill never leaves a
half-written ckpt.pt. Loaded with torch.load(weights_only=True): tensors and plain
containers only, no pickled code."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def atomic_write_bytes(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def save(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)
