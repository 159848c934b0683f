"""The `model` config group's schema: GPTConfig, one YAML per model size in configs/model/.
Torch-free, so that loading the config tree stays cheap."""
from __future__ import annotations

from dataclasses import dataclass

from configs.errors import UserError

GELUS = ("tanh", "exact")


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 1024       # set from train.block_size by train.py
    vocab_size: int = 50304      # set from the dataset's vocabulary by train.py
    dropout: float = 0.0
    bias: bool = True            # biases in Linear and LayerNorm, as GPT-2
    pad_vocab_to: int = 64       # vocab padded up to a multiple of this (50257 -> 50304)
    # The MLP's GELU: tanh, GPT-2's own ("gelu_new"; HF weights give HF's logits); exact, the
    # erf GELU of nn.GELU() that nanoGPT, the NAMO and the BeyondMuon repos train with.
    gelu: str = "tanh"

    def __post_init__(self):
        for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, key) < 1:
                raise UserError(f"model.{key}={getattr(self, key)} must be at least 1")
        if self.n_embd % self.n_head:
            raise UserError(f"model.n_embd={self.n_embd} is not a multiple of model.n_head="
                            f"{self.n_head}; pick sizes where it is (e.g. 768 and 12)")
        if self.gelu not in GELUS:
            raise UserError(f"model.gelu={self.gelu!r} is not one of {', '.join(GELUS)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout={self.dropout} must be in [0, 1)")
