"""What train.py trains on: the Task protocol, and `build_task` that picks one from the config.

A task serves batches and evaluates; the training loop knows nothing else about the data.
Batches are a pure function of (seed, split, step, micro_step, rank), so a resumed run and a
run on N ranks see exactly the batches of an uninterrupted single-process run.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol


class Task(Protocol):
    vocab_size: int
    block_size: int              # tokens per sequence
    train_size: Optional[int]    # sequences in a finite train set (grokking), None for a stream

    def get_batch(self, split: str, batch_size: int, *, step: int, micro_step: int = 0,
                  rank: int = 0, device="cpu"):
        """(x, y) token tensors of shape (batch, block_size), on `device`."""

    def evaluate(self, model, *, batch_size: int, eval_iters: int, device, autocast: Callable,
                 rank: int = 0, world: int = 1, reduce: Optional[Callable] = None) -> dict[str, float]:
        """{"train/loss", "val/loss", ...} of the model, in eval mode, without gradients; under
        torchrun rank r may evaluate its share and `reduce` (an all-reduce sum) the rest."""

    # Optional: final_eval(model, *, batch_size, device, autocast, max_tokens, rank, world) ->
    # (sum of token losses, tokens) of this rank's share of the whole val split, for
    # summary.json's final_val_loss_full (the language-model task; grokking's periodic
    # evaluation already covers its whole val set).

    def done(self, history: list[dict]) -> bool:
        """Whether the run may end now, given its eval records so far (a solved task)."""

    def summary(self, history: list[dict]) -> dict:
        """The task's own fields of summary.json (e.g. grokking_step)."""


def build_task(cfg) -> Task:
    """The task of a composed run config (uses cfg.task, cfg.data, cfg.seed and cfg.train's
    block_size, eval_seed, and grad_accum_steps, batch_size, max_iters for sequential data)."""
    if cfg.task.name == "grokking":
        from data.grokking import GrokkingTask
        return GrokkingTask(cfg.task, seed=cfg.seed)
    from data.lm import LMTask    # TaskConfig admits lm and grokking only
    return LMTask(cfg.data, block_size=cfg.train.block_size, seed=cfg.seed,
                  eval_seed=cfg.train.eval_seed, grad_accum_steps=cfg.train.grad_accum_steps,
                  batch_size=cfg.train.batch_size, max_iters=cfg.train.max_iters)
