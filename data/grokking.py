"""Grokking (Power et al. 2022): learn "a op b =" -> answer on all pairs mod a prime p.

The dataset is every pair (a, b) of 0..p-1 (b != 0 for division), generated in memory and
split into train and val by `train_fraction`, reproducibly from the run seed. Tokens: the
numbers 0..p-1, then the operation token p and "=" token p + 1. The model sees
[a, op, b, =] and only the last position has a target (the answer); the rest are -1, which
GPT.forward ignores, so loss and accuracy are on the answer alone.

A run is summarized by when it memorizes (train accuracy reaches task.acc_threshold) and
when it groks (val accuracy comes within 1% of its maximum, if that maximum is at least
95%); a run that never groks is a result, grokking_step None.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


# The answer of each operation on tensors a, b mod p; division by b is multiplication by
# b's inverse b^(p-2) (Fermat), so it needs a prime p.
OPERATIONS = {
    "addition": lambda a, b, p: (a + b) % p,
    "subtraction": lambda a, b, p: (a - b) % p,
    "multiplication": lambda a, b, p: (a * b) % p,
    "division": lambda a, b, p: (a * torch.tensor([pow(v, p - 2, p) for v in range(p)])[b]) % p,
}
NEEDS_INVERSE = {"division"}
SPLITS = ("train", "val")
GROK_TOLERANCE = 0.01        # grokked: val accuracy within this (absolute) of its maximum ...
GROK_MIN_ACC = 0.95          # ... provided that maximum is at least this


def make_pairs(operation: str, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All sequences [a, op, b, =] (N, 4) and their answers (N,), in (a, b) order."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    if operation in NEEDS_INVERSE:
        a, b = a[b != 0], b[b != 0]
    answers = OPERATIONS[operation](a, b, p)
    op_token, eq_token = p, p + 1
    x = torch.stack([a, torch.full_like(a, op_token), b, torch.full_like(a, eq_token)], dim=1)
    return x, answers


def _generator(*keys: int) -> torch.Generator:
    """A torch.Generator seeded from a tuple of integers, well mixed (no Python hash())."""
    state = np.random.SeedSequence([k % 2**63 for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class GrokkingTask:
    """The Task (data/task.py) of modular arithmetic; its config is a checked TaskConfig."""

    block_size = 4  # a, op, b, =

    def __init__(self, cfg, seed: int):
        p, op = cfg.modulus, cfg.operation   # checked by TaskConfig (data/config.py)
        x, answers = make_pairs(op, p)
        n_train = round(cfg.train_fraction * len(x))
        order = torch.randperm(len(x), generator=_generator(seed, 0xC0FFEE))
        y = torch.full_like(x, -1)
        y[:, -1] = answers
        self.data = {"train": (x[order[:n_train]], y[order[:n_train]]),
                     "val": (x[order[n_train:]], y[order[n_train:]])}
        self.cfg, self.seed = cfg, seed
        self.vocab_size = p + 2
        self.train_size = n_train

    def get_batch(self, split: str, batch_size: int, *, step: int, micro_step: int = 0,
                  rank: int = 0, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """A random minibatch without replacement, the same for the same (seed, split, step,
        micro_step, rank); the whole split (full batch) when batch_size covers it."""
        x, y = self.data[split]
        if batch_size < len(x):
            g = _generator(self.seed, SPLITS.index(split), step, micro_step, rank)
            idx = torch.randperm(len(x), generator=g)[:batch_size]
            x, y = x[idx], y[idx]
        return x.to(device), y.to(device)

    @torch.no_grad()
    def evaluate(self, model, *, batch_size: int, eval_iters: int, device, autocast,
                 rank: int = 0, world: int = 1, reduce=None) -> dict:
        """Loss and accuracy on the answers of the WHOLE train and val sets (a few thousand
        sequences of 4 tokens: exact and cheap, so every rank does all of it, and eval_iters
        and batch_size are not used)."""
        was_training = model.training
        model.eval()
        out = {}
        for split in SPLITS:
            x, y = self.data[split]
            loss_sum, correct = 0.0, 0
            for i in range(0, len(x), 8192):
                xb, answer = x[i:i + 8192].to(device), y[i:i + 8192, -1].to(device)
                with autocast():
                    logits, _ = model(xb)
                logits = logits[:, -1].float()
                loss_sum += F.cross_entropy(logits, answer, reduction="sum").item()
                correct += (logits.argmax(-1) == answer).sum().item()
            out[f"{split}/loss"] = loss_sum / len(x)
            out[f"{split}/acc"] = correct / len(x)
        model.train(was_training)
        return out

    def done(self, history: list[dict]) -> bool:
        """With task.stop_when_solved, the run can end at the first evaluation with every val
        answer right (and train memorized): no later evaluation can raise the maximum val
        accuracy above 1, so the grokking and memorization steps are those of the full run."""
        last = history[-1] if history else {}
        return bool(self.cfg.stop_when_solved and last.get("val/acc") == 1.0
                    and last.get("train/acc", 0.0) >= self.cfg.acc_threshold)

    def summary(self, history: list[dict]) -> dict:
        """Memorization and grokking points of the eval records, in steps, epochs and tokens.

        An epoch is one pass over the train set: epochs = examples seen / train set size, with
        examples = the record's `examples` or else `tokens` / block_size (train.py counts
        block_size tokens per sequence)."""
        records = [r for r in history if "train/acc" in r and "val/acc" in r]
        steps = [r["step"] for r in records]
        at = {r["step"]: r for r in records}
        out = {"max_val_acc": max((r["val/acc"] for r in records), default=None),
               "max_train_acc": max((r["train/acc"] for r in records), default=None),
               "train_size": self.train_size,
               "val_size": len(self.data["val"][0])}
        points = {"memorization": memorization_step(steps, [r["train/acc"] for r in records],
                                                    self.cfg.acc_threshold),
                  "grokking": grokking_step(steps, [r["val/acc"] for r in records])}
        for name, step in points.items():
            rec = at.get(step)
            tokens = rec.get("tokens") if rec else None
            examples = rec.get("examples", tokens / self.block_size if tokens is not None
                               else None) if rec else None
            out[f"{name}_step"] = step
            out[f"{name}_epoch"] = round(examples / self.train_size, 3) if examples is not None else None
            out[f"{name}_tokens"] = tokens
        return out


def memorization_step(steps: list[int], train_acc: list[float], threshold: float = 0.99):
    """The first step whose train accuracy is at least `threshold`; None if none is."""
    return next((s for s, a in zip(steps, train_acc) if a >= threshold), None)


def grokking_step(steps: list[int], val_acc: list[float], tolerance: float = GROK_TOLERANCE,
                  min_acc: float = GROK_MIN_ACC):
    """The first step whose val accuracy is within `tolerance` (absolute) of the curve's
    maximum, counted only if that maximum is at least `min_acc`; None otherwise (the
    definition of Essential AI's grokking study)."""
    if not val_acc or max(val_acc) < min_acc:
        return None
    best = max(val_acc)
    return next(s for s, a in zip(steps, val_acc) if a >= best - tolerance)
