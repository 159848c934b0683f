"""ckpt.pt: the whole training state (model, optimizer, grad scaler, RNG, step, best val loss,
config), saved and restored here and nowhere else.

Written atomically (trainer/outputs.write_atomic), so a kill never leaves half a checkpoint.
Loaded with torch.load(weights_only=True): tensors and plain containers only, no pickled code.
Under ZeRO-1 every rank sends its optimizer-state shard to rank 0 first, so a checkpoint is
always the unsharded one and resumes at any world size.
"""
from __future__ import annotations

from pathlib import Path

import torch

from configs.errors import UserError
from trainer.outputs import write_atomic

FILE = "ckpt.pt"


def save(out_dir: Path, *, model, optimizer, scaler, step: int, best_val_loss: float,
         config: dict, device: str, is_main: bool, consolidate: bool) -> None:
    """A collective when `consolidate` (ZeRO-1): call it on every rank; rank 0 writes."""
    if consolidate:
        optimizer.consolidate_state_dict(to=0)
    if not is_main:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "best_val_loss": best_val_loss,
             "rng_cpu": torch.get_rng_state(), "config": config}
    if device.startswith("cuda"):
        state["rng_cuda"] = torch.cuda.get_rng_state()
    write_atomic(Path(out_dir) / FILE, lambda f: torch.save(state, f))


def load(path: Path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path} cannot be read ({first}); it is damaged: delete it to restart "
                        "the run from its start, or pass overwrite=true") from None


def restore(out_dir: Path, *, model, optimizer, scaler, device: str) -> tuple[int, float]:
    """Load ckpt.pt into the model, optimizer, scaler and RNG; returns (step, best val loss)."""
    state = load(Path(out_dir) / FILE, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"].cpu())
    if "rng_cuda" in state and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["rng_cuda"].cpu())
    return state["step"], state["best_val_loss"]
