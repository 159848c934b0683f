"""ckpt.pt: the whole training state (model, optimizer, grad scaler, RNG, step, best val loss,
eval history, config), saved and restored here and nowhere else. A checkpoint saved before it
held the eval history resumes with the one of metrics.jsonl (legacy_history), as it did then.

Written atomically (trainer/outputs.write_atomic), so a kill never leaves half a checkpoint, and
a failed write (a full disk) leaves the previous one.
Loaded with torch.load(weights_only=True): tensors and plain containers only, no pickled code.
A damaged or foreign file, or the checkpoint of another run (STATE_KEYS differ), is one
UserError naming it, before anything is loaded into the model.
Under ZeRO-1 every rank sends its optimizer-state shard to rank 0 first, so a checkpoint is
always the unsharded one and resumes at any world size.
Off the step's path (train.async_ckpt, the default): rank 0 copies the state to host memory
(pinned, from a GPU) and a background thread serializes and writes it while training goes on;
one write at a time, and the run waits for the last one before its summary and exit.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from configs.errors import UserError
from trainer.outputs import redone_on_resume, write_atomic

FILE = "ckpt.pt"
# The config keys (a group, or one key) that shape what a checkpoint holds: resuming with another
# value of one of them would be another run, and is refused. Any other key (the lr, the length,
# logging, the world size) may change on resume.
STATE_KEYS = ("model", "task", "data.name", "data.tokenizer", "optimizer.name", "train.block_size")
PARTS = ("model", "optimizer", "scaler", "step", "best_val_loss", "rng_cpu")
HISTORY = "history"   # the eval records; absent from the checkpoints saved before it was added


def save(out_dir: Path, *, model, optimizer, scaler, step: int, best_val_loss: float,
         history: list, config: dict, device: str, is_main: bool, consolidate: bool,
         tail_ema=None, writer: "Writer | None" = None) -> None:
    """A collective when `consolidate` (under torchrun: the matrix chains and train.zero shard
    optimizer state): call it on every rank; rank 0 writes, through `writer` in the background
    when given. history: the run's eval records (plain dicts of numbers). tail_ema
    (train.eval_ema, trainer/tail_ema.py): its EMA goes along as "eval_ema"."""
    if consolidate and hasattr(optimizer, "consolidate_state_dict"):   # not a plain AdamW
        optimizer.consolidate_state_dict(to=0)
    if not is_main:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "best_val_loss": best_val_loss,
             HISTORY: history, "rng_cpu": torch.get_rng_state(), "config": config}
    if tail_ema is not None:
        state["eval_ema"] = tail_ema.state_dict()
    if device.startswith("cuda"):
        state["rng_cuda"] = torch.cuda.get_rng_state()
    if writer is None:
        write_atomic(Path(out_dir) / FILE, lambda f: torch.save(state, f))
    else:
        writer.submit(Path(out_dir) / FILE, state)


def to_host(obj):
    """A copy of a state dict whose tensors are the state's at this moment, on the host (pinned
    when from a GPU, copied without blocking; the caller syncs once): training may go on."""
    if isinstance(obj, torch.Tensor):
        if obj.is_cuda:
            out = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=True)
            return out.copy_(obj, non_blocking=True)
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj


class Writer:
    """Checkpoint writes in a background thread, one at a time: submit() copies the state to the
    host and returns; the serialization and the (atomic) write happen meanwhile. wait() blocks
    until the last write is on disk and raises its error, if any (a full disk: UserError)."""

    def __init__(self):
        self._thread = None
        self._error = None

    def submit(self, path: Path, state: dict) -> None:
        import threading

        self.wait()                         # one write at a time; surfaces the last one's error
        host = to_host(state)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()        # the non-blocking copies have landed

        def write():
            try:
                write_atomic(path, lambda f: torch.save(host, f))
            except BaseException as exc:   # re-raised by wait(), in the training thread
                self._error = exc
        self._thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def first_line(exc: BaseException) -> str:
    """The gist of an exception: the first sentence of its first line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]


def load(path: Path, map_location="cpu") -> dict:
    """The checkpoint in `path`; a file that is not one of train.py's is a UserError."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"{path} cannot be read ({first_line(exc)}): it is damaged or not a "
                        "checkpoint; delete it to restart the run from its start, or pass "
                        "overwrite=true") from None
    missing = sorted(set(PARTS) - set(state)) if isinstance(state, dict) else list(PARTS)
    if missing:
        raise UserError(f"{path} is not a checkpoint of train.py (it lacks {', '.join(missing)}); "
                        "move it away to restart the run from its start, or pass overwrite=true")
    return state


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_same_run(stored: dict, config: dict, out_dir: Path) -> None:
    """Refuse to resume the checkpoint of another run: one whose STATE_KEYS differ (keys the
    checkpoint's config lacks, from an older version, are not compared)."""
    old, new = flat(stored if isinstance(stored, dict) else {}), flat(config)
    for key in sorted(new):
        if any(key == k or key.startswith(k + ".") for k in STATE_KEYS) and key in old \
                and old[key] != new[key]:
            raise UserError(f"out_dir={out_dir} holds a run of another config ({key}={old[key]} "
                            f"there, {new[key]} here); resume it with its own config "
                            f"({Path(out_dir) / 'config.yaml'}), pass overwrite=true to replace "
                            "it, or pass another out_dir=")


class Restored(NamedTuple):
    """What a checkpoint gives the loop besides the state loaded into its objects."""
    step: int
    best_val_loss: float
    history: Optional[list]   # the eval records the resumed run keeps; None: a checkpoint saved
                              # before it held them (legacy_history)


def restore(out_dir: Path, *, model, optimizer, scaler, device: str,
            config: dict, tail_ema=None) -> Restored:
    """Load ckpt.pt into the model, optimizer, scaler and RNG; returns its step, best val loss
    and eval history, less the evaluation the resumed run does again (redone_on_resume).
    `config` is this run's: the checkpoint must be of the same run (check_same_run)."""
    path = Path(out_dir) / FILE
    state = load(path, map_location=device)
    check_same_run(state.get("config"), config, out_dir)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise UserError(f"{path} does not fit this run's model and optimizer ({first_line(exc)}); "
                        "resume with the run's own config, pass overwrite=true to replace it, "
                        "or pass another out_dir=") from None
    if tail_ema is not None:
        tail_ema.load_state_dict(state.get("eval_ema"), state["step"])
    torch.set_rng_state(state["rng_cpu"].cpu())
    if "rng_cuda" in state and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["rng_cuda"].cpu())
    step, history = state["step"], state.get(HISTORY)
    if history is not None:
        history = [r for r in history if not redone_on_resume(r, step)]
    return Restored(step, state["best_val_loss"], history)


def legacy_history(kept_metrics: list[dict]) -> list[dict]:
    """The eval history of a checkpoint saved before it held one (Restored.history None): the
    eval records of metrics.jsonl that truncate_metrics kept on resume, as resumes did then."""
    return [r for r in kept_metrics if "val/loss" in r]
