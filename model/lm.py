"""What the language models of model/ share (GPT in model/gpt.py, Track3GPT in model/track3.py):
the pre-norm residual block, the config and the padded vocabulary, the loss from the logits, the
parameter and FLOPs counts. A subclass says which embedding its count leaves out and how wide its attention is."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import GPTConfig


def padded_vocab(vocab_size: int, multiple: int) -> int:
    return vocab_size if multiple <= 1 else -(-vocab_size // multiple) * multiple


def pre_norm_block(x, norm_attn, attn, norm_mlp, mlp):
    """x + attn(norm_attn(x)), then + mlp(norm_mlp(.)): GPT-2's block and Track 3's alike."""
    x = x + attn(norm_attn(x))
    return x + mlp(norm_mlp(x))


class PreNormBlock(nn.Module):
    """A block whose forward is pre_norm_block over its sub-modules named in PARTS (norm_attn,
    attn, norm_mlp, mlp): each model keeps its own names (its weights' keys) and the order it
    registers them in (its init's RNG stream)."""
    PARTS: tuple = ()

    def forward(self, x):
        return pre_norm_block(x, *(getattr(self, name) for name in self.PARTS))


class LanguageModel(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.vocab_size = padded_vocab(cfg.vocab_size, cfg.pad_vocab_to)

    def uncounted_embedding(self) -> nn.Embedding:
        """The embedding num_params() leaves out by default (a lookup, no matmul)."""
        raise NotImplementedError

    def attention_width(self) -> int:
        """The width of q (heads x head size): the H Q of the attention FLOPs."""
        raise NotImplementedError

    @staticmethod
    def output(logits: torch.Tensor, targets, return_logits: bool):
        """(logits, None) without targets; with them (None, the mean float32 cross-entropy,
        targets -1 ignored): the logits too only if return_logits, so neither they nor their
        float32 copy outlive the loss (1.2 GB in bf16 a micro-step at GPT-2's batch)."""
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1)
        return (logits if return_logits else None), loss

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (a tied head counted once); without uncounted_embedding() by default."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.uncounted_embedding().weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L H Q T."""
        T = seq_len or self.config.block_size
        return 6 * self.num_params() + 12 * self.config.n_layer * self.attention_width() * T
