"""Language-model task: random windows of a prepared dataset (data/prepare.py's .bin files).

Batches are a pure function of (seed, split, step, micro_step, rank), so a resumed run sees
the batches it would have seen, and each DDP rank draws its own windows. Evaluation always
uses the same eval_iters batches per split (seeded by the eval index and train.eval_seed, not
the step or the run's seed), so the losses of successive evaluations, and of runs with
different optimizers or seeds, are comparable. `final_eval` scores the whole val split in
non-overlapping windows: the number a comparison should rank by.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from configs.errors import UserError
from data.prepare import SPLITS, dataset_dir, open_prepared, prepare, prepare_command


def generator(*parts) -> torch.Generator:
    """A torch.Generator seeded by a stable hash of `parts` (Python's hash() is salted)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def split_windows(windows: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of (batch, block_size + 1) token windows, on `device`. For a GPU the
    contiguous windows are pinned and copied once, asynchronously, and sliced there; a CPU run
    never pins (which would create a CUDA context on a GPU host)."""
    if str(device).startswith("cuda"):
        windows = windows.pin_memory().to(device, non_blocking=True)
    return windows[:, :-1], windows[:, 1:]


class LMTask:
    """The Task (data/task.py) of next-token prediction on a prepared dataset."""

    train_size = None   # a stream of windows, not a finite set

    def __init__(self, data_cfg, *, block_size: int, seed: int, eval_seed: int | None = None):
        meta = open_prepared(data_cfg)
        if meta is None:
            if not data_cfg.auto_prepare:
                raise UserError(f"{data_cfg.name} is not prepared in {dataset_dir(data_cfg)}; "
                                f"run: {prepare_command(data_cfg)}")
            meta = prepare(data_cfg, only_if_missing=True)
        self.meta, self.dir = meta, dataset_dir(data_cfg)
        self.vocab_size = meta["vocab_size"]
        self.block_size = block_size
        self.seed = seed
        self.eval_seed = seed if eval_seed is None else eval_seed
        self.dtype = np.dtype(meta["dtype"])
        for split in SPLITS:
            if meta["tokens"][split] <= block_size:
                raise UserError(f"train.block_size={block_size} needs more than {block_size} tokens "
                                f"but the {split} split of {data_cfg.name} has {meta['tokens'][split]}; "
                                "use a smaller train.block_size or more data")

    def _batch(self, split: str, batch_size: int, g: torch.Generator, device="cpu"):
        # Re-open the memmap each batch: a long-lived one grows the process's memory (nanoGPT).
        data = np.memmap(self.dir / f"{split}.bin", dtype=self.dtype, mode="r")
        start = torch.randint(len(data) - self.block_size, (batch_size,), generator=g).numpy()
        windows = torch.from_numpy(data[start[:, None] + np.arange(self.block_size + 1)].astype(np.int64))
        return split_windows(windows, device)

    def get_batch(self, split: str, batch_size: int, *, step: int, micro_step: int = 0,
                  rank: int = 0, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return self._batch(split, batch_size, generator(self.seed, split, step, micro_step, rank),
                           device)

    @torch.no_grad()
    def evaluate(self, model, *, batch_size: int, eval_iters: int, device, autocast,
                 rank: int = 0, world: int = 1, reduce=None) -> dict[str, float]:
        """The mean loss of eval_iters fixed batches per split. Rank r of `world` evaluates
        batches r, r + world, ...; `reduce` (an all-reduce sum) fills in the others' losses, so
        every rank gets the one-process mean. One host sync per split."""
        was_training = model.training
        model.eval()
        try:
            out = {}
            for split in SPLITS:
                losses = torch.zeros(eval_iters, device=device)
                for k in range(rank, eval_iters, world):
                    x, y = self._batch(split, batch_size, generator(self.eval_seed, split, "eval", k),
                                       device)
                    with autocast():
                        _, loss = model(x, y)
                    losses[k] = loss
                if reduce is not None:
                    reduce(losses)
                out[f"{split}/loss"] = losses.mean().item()
            return out
        finally:
            model.train(was_training)

    def full_val_windows(self, max_tokens: int) -> np.ndarray:
        """Start offsets of the non-overlapping block_size windows of the val split (each with
        its next-token targets), evenly spaced down to max_tokens // block_size of them."""
        n_tokens = self.meta["tokens"]["val"]
        count = (n_tokens - 1) // self.block_size
        keep = max(1, max_tokens // self.block_size)
        index = np.arange(count) if count <= keep else \
            np.unique(np.linspace(0, count - 1, keep).round().astype(np.int64))
        return index * self.block_size

    @torch.no_grad()
    def final_eval(self, model, *, batch_size: int, device, autocast, max_tokens: int,
                   rank: int = 0, world: int = 1) -> tuple[float, int]:
        """(sum of the token losses, token count) of this rank's share (every world-th window)
        of full_val_windows; the caller adds the ranks' shares."""
        was_training = model.training
        model.eval()
        try:
            data = np.memmap(self.dir / "val.bin", dtype=self.dtype, mode="r")
            starts = self.full_val_windows(max_tokens)[rank::world]
            total, count = 0.0, 0
            for i in range(0, len(starts), batch_size):
                offsets = starts[i:i + batch_size, None] + np.arange(self.block_size + 1)
                x, y = split_windows(torch.from_numpy(data[offsets].astype(np.int64)), device)
                with autocast():
                    _, loss = model(x, y)
                total += loss.item() * y.numel()
                count += y.numel()
            return total, count
        finally:
            model.train(was_training)

    def done(self, history: list[dict]) -> bool:
        return False  # language modelling runs for its full budget

    def summary(self, history: list[dict]) -> dict:
        return {}
