"""Language-model task: batches of a prepared dataset (data/prepare.py's .bin files, or the
pre-tokenized shards of data/shards.py, memory-mapped where they lie).

data.sampling=random (the default): random windows. Batches are a pure function of (seed,
split, step, micro_step, rank), so a resumed run sees the batches it would have seen, and each
DDP rank draws its own windows. Evaluation always uses the same eval_iters batches per split
(seeded by the eval index and train.eval_seed, not the step or the run's seed), so the losses of
successive evaluations, and of runs with different optimizers or seeds, are comparable.
data.sampling=sequential: modded-nanogpt Track 3's batches (its `distributed_data_generator`).
Step s takes the next tokens_per_step = batch_size * block_size * grad_accum_steps tokens of
the train stream (+1 for the targets); a shard whose remaining tokens cannot hold that (+1) is
left for the next, at its start. Global micro-batch m (micro_step, 0 .. grad_accum_steps - 1)
is the m-th batch_size * block_size slice of the step's tokens, cut into block_size sequences:
Track 3's rank slices, so N ranks or N micro-steps train on the same tokens per step. The
position is a pure function of the step (Sequential), so a resume needs no saved state. The
val loss is over the first data.val_tokens tokens of the val split, the same for every run.
`final_eval` scores the whole val split in non-overlapping windows: the number a comparison
should rank by.
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

    def __init__(self, data_cfg, *, block_size: int, seed: int, eval_seed: int | None = None,
                 grad_accum_steps: int = 1, batch_size: int | None = None,
                 max_iters: int | None = None):
        """grad_accum_steps (global micro-steps per step) places sequential micro-batches;
        with batch_size and max_iters, a train stream too short for the run is refused now."""
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
        self.sampling, self.grad_accum_steps = data_cfg.sampling, grad_accum_steps
        # Each split's token files in stream order, as (path, byte offset, tokens): a .bin file
        # whole, or each shard past its header (memory-mapped in place, never copied).
        if "shards" in meta:
            from data.shards import HEADER_BYTES
            self.pieces = {s: [(p, HEADER_BYTES, n) for p, n in meta["shards"][s]] for s in SPLITS}
        else:
            self.pieces = {s: [(self.dir / f"{s}.bin", 0, meta["tokens"][s])] for s in SPLITS}
        for split in SPLITS:
            if meta["tokens"][split] <= block_size:
                raise UserError(f"train.block_size={block_size} needs more than {block_size} tokens "
                                f"but the {split} split of {data_cfg.name} has {meta['tokens'][split]}; "
                                "use a smaller train.block_size or more data")
        self.cfg = data_cfg
        if self.sampling == "sequential":
            self.val_count = self._val_sequences(data_cfg)
            if batch_size is not None and max_iters is not None:
                self.sequential("train", batch_size).check(max_iters, data_cfg)

    # ---- token access ----------------------------------------------------------------------

    def _memmap(self, piece) -> np.ndarray:
        # Re-open the memmap each batch: a long-lived one grows the process's memory (nanoGPT).
        path, offset, count = piece
        return np.memmap(path, dtype=self.dtype, mode="r", offset=offset, shape=(count,))

    def _gather(self, split: str, index: np.ndarray) -> np.ndarray:
        """The tokens at `index` (positions in the split's stream, its pieces joined) as int64."""
        pieces = self.pieces[split]
        if len(pieces) == 1:
            return self._memmap(pieces[0])[index].astype(np.int64)
        out, start = np.empty(index.shape, dtype=np.int64), 0
        for piece in pieces:
            inside = (index >= start) & (index < start + piece[2])
            if inside.any():
                out[inside] = self._memmap(piece)[index[inside] - start]
            start += piece[2]
        return out

    def _batch(self, split: str, batch_size: int, g: torch.Generator, device="cpu"):
        if len(self.pieces[split]) == 1:   # a .bin file: exactly the windows it always drew
            data = self._memmap(self.pieces[split][0])
            start = torch.randint(len(data) - self.block_size, (batch_size,), generator=g).numpy()
            windows = torch.from_numpy(data[start[:, None] + np.arange(self.block_size + 1)].astype(np.int64))
            return split_windows(windows, device)
        # shards: windows anywhere in the joined stream (one may span two shards)
        total = self.meta["tokens"][split]
        start = torch.randint(total - self.block_size, (batch_size,), generator=g).numpy()
        windows = self._gather(split, start[:, None] + np.arange(self.block_size + 1))
        return split_windows(torch.from_numpy(windows), device)

    def sequential(self, split: str, batch_size: int) -> "Sequential":
        return Sequential([p[2] for p in self.pieces[split]],
                          batch_size * self.block_size * self.grad_accum_steps)

    def _contiguous(self, split: str, piece: int, pos: int, sequences: int, device):
        """`sequences` block_size sequences cut from the tokens at `pos` of piece `piece` (and
        the next token, for the last target), as Track 3 views its buffer."""
        data = self._memmap(self.pieces[split][piece])
        offsets = np.arange(sequences)[:, None] * self.block_size + np.arange(self.block_size + 1)
        return split_windows(torch.from_numpy(data[pos + offsets].astype(np.int64)), device)

    def _micro_batch(self, split: str, batch_size: int, step: int, micro_step: int, device):
        """Sequential sampling's micro-batch `micro_step` of `step`."""
        if not 0 <= micro_step < self.grad_accum_steps:
            raise ValueError(f"micro_step={micro_step} outside 0..{self.grad_accum_steps - 1}")
        piece, pos = self.sequential(split, batch_size).locate(step, self.cfg)
        return self._contiguous(split, piece, pos + micro_step * batch_size * self.block_size,
                                batch_size, device)

    def get_batch(self, split: str, batch_size: int, *, step: int, micro_step: int = 0,
                  rank: int = 0, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        if self.sampling == "sequential":
            return self._micro_batch(split, batch_size, step, micro_step, device)
        return self._batch(split, batch_size, generator(self.seed, split, step, micro_step, rank),
                           device)

    def _val_sequences(self, data_cfg) -> int:
        """Sequential sampling's val set: the first val_tokens (all: None) of the val split as
        this many block_size sequences (a last partial sequence is left out)."""
        have = self.meta["tokens"]["val"]
        want = have - 1 if data_cfg.val_tokens is None else data_cfg.val_tokens
        if want + 1 > have:   # Track 3 reads val_tokens + 1 tokens (the last target)
            raise UserError(f"data.val_tokens={data_cfg.val_tokens} needs {want + 1} tokens but the "
                            f"val split of {data_cfg.name} has {have}; pass data.val_tokens="
                            f"{have - 1} or less")
        if want < self.block_size:
            raise UserError(f"data.val_tokens={data_cfg.val_tokens} is less than one sequence of "
                            f"train.block_size={self.block_size} tokens; pass a larger data.val_tokens")
        return want // self.block_size

    @torch.no_grad()
    def evaluate(self, model, *, batch_size: int, eval_iters: int, device, autocast,
                 rank: int = 0, world: int = 1, reduce=None) -> dict[str, float]:
        """Random sampling: the mean loss of eval_iters fixed batches per split. Sequential:
        val/loss over the first data.val_tokens val tokens (Track 3's val loss), train/loss
        over the first eval_iters micro-batches the run trains on. Rank r of `world` evaluates
        batches r, r + world, ...; `reduce` (an all-reduce sum) fills in the others' losses, so
        every rank gets the one-process mean. One host sync per split."""
        was_training = model.training
        model.eval()
        try:
            if self.sampling == "sequential":
                return self._evaluate_sequential(model, batch_size, eval_iters, device, autocast,
                                                 rank, world, reduce)
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

    def _evaluate_sequential(self, model, batch_size, eval_iters, device, autocast, rank, world,
                             reduce) -> dict[str, float]:
        # val: the val sequences in batches of batch_size (the last may be short), weighted
        # by their tokens, so the loss is the mean over all of them (Track 3 sums token losses
        # and divides by val_tokens)
        sizes = [min(batch_size, self.val_count - i) for i in range(0, self.val_count, batch_size)]
        losses = torch.zeros(len(sizes), device=device)
        for k in range(rank, len(sizes), world):
            x, y = self._contiguous("val", 0, k * batch_size * self.block_size, sizes[k], device)
            with autocast():
                _, loss = model(x, y)
            losses[k] = loss
        if reduce is not None:
            reduce(losses)
        weights = torch.tensor(sizes, dtype=losses.dtype, device=device)
        out = {"val/loss": ((losses * weights).sum() / weights.sum()).item()}
        # train: micro-batch j is step j // grad_accum_steps's micro-batch j % grad_accum_steps
        losses = torch.zeros(eval_iters, device=device)
        for j in range(rank, eval_iters, world):
            x, y = self._micro_batch("train", batch_size, j // self.grad_accum_steps,
                                     j % self.grad_accum_steps, device)
            with autocast():
                _, loss = model(x, y)
            losses[j] = loss
        if reduce is not None:
            reduce(losses)
        out["train/loss"] = losses.mean().item()
        return out

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
            data = self._memmap(self.pieces["val"][0])   # val is one file (.bin or shard)
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


class Sequential:
    """Where sequential sampling's steps lie in a stream of pieces (shards) of `lengths` tokens,
    by Track 3's rule: a step takes `tokens_per_step` tokens (+1) at `pos` of the current piece,
    and moves to the next piece, at 0, when pos + tokens_per_step + 1 >= the piece's length.
    So a piece of L tokens serves (L - 2) // tokens_per_step steps (Track 3's shards of 100M
    tokens: 190 of 524,288). A piece that serves none is skipped (Track 3 would fail there)."""

    def __init__(self, lengths: list[int], tokens_per_step: int):
        self.lengths, self.tokens_per_step = lengths, tokens_per_step
        self.steps = [max(0, (n - 2) // tokens_per_step) for n in lengths]
        self.ends = np.cumsum(self.steps)      # steps served by pieces 0..i

    @property
    def total(self) -> int:
        return int(self.ends[-1])

    def locate(self, step: int, cfg=None) -> tuple[int, int]:
        """(piece, token position) of `step`'s first token: a pure function of the step."""
        if not 0 <= step < self.total:
            raise UserError(self.too_short(step + 1, cfg))
        piece = int(np.searchsorted(self.ends, step, side="right"))
        first = int(self.ends[piece - 1]) if piece else 0
        return piece, (step - first) * self.tokens_per_step

    def too_short(self, steps: int, cfg=None) -> str:
        msg = (f"{steps} steps of {self.tokens_per_step:,} tokens need more than the train "
               f"stream's {self.total} such steps ({sum(self.lengths):,} tokens in "
               f"{len(self.lengths)} file(s))")
        if cfg is not None and cfg.shard_repo:
            per = max(self.steps)
            more = -(-(steps - self.total) // per) if per else None
            if more:
                n = cfg.shards + more
                root = "" if cfg.root == "data_cache" else f" data.root={cfg.root}"
                return (f"{msg}; run: python -m data.prepare data={cfg.name}{root} data.shards={n} "
                        f"and train with data.shards={n}")
        return f"{msg}; use fewer train.max_iters or more data"

    def check(self, max_iters: int, cfg) -> None:
        if max_iters > self.total:
            raise UserError(self.too_short(max_iters, cfg))
