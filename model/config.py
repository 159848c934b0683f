"""The `model` config group's schema: GPTConfig, one YAML per model size in configs/model/.
Torch-free, so that loading the config tree stays cheap. model.arch picks the module: gpt2
(model/gpt.py) or track3 (model/track3.py, modded-nanogpt's optimization-track GPT)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from configs.errors import UserError

GELUS = ("tanh", "exact")
ARCHS = ("gpt2", "track3")
EMBED_DTYPES = ("float32", "bfloat16")
# model.init (track3 only): default, train_gpt_simple.py's loop (output projections and head zero);
# the Hyperball records' own (which give every hidden matrix a nonzero norm to keep):
# normal_scaled, result #5 MuonH's; torch_scaled, results #4 AdamH's and #8 NorMuonH's.
INITS = ("default", "normal_scaled", "torch_scaled")


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_head: Optional[int] = 4    # null: n_embd // head_dim (heads of a fixed width: a width ladder)
    n_embd: int = 128
    block_size: int = 1024       # set from train.block_size by train.py
    vocab_size: int = 50304      # set from the dataset's vocabulary by train.py
    dropout: float = 0.0
    bias: bool = True            # biases in Linear and LayerNorm, as GPT-2
    pad_vocab_to: int = 64       # vocab padded up to a multiple of this (50257 -> 50304)
    # The MLP's GELU: tanh, GPT-2's own ("gelu_new"; HF weights give HF's logits); exact, the
    # erf GELU of nn.GELU() that nanoGPT, the NAMO and the BeyondMuon repos train with.
    gelu: str = "tanh"
    # track3: modded-nanogpt Track 3's GPT (RMSNorm, RoPE, QK-norm, ReLU^2, untied head, logit
    # soft-cap). Heads are head_dim wide and n_head must be n_embd // head_dim (checked, so the
    # printed config never disagrees with the model); it always has biases and no dropout, and
    # ignores gelu. embed_dtype=bfloat16 is theirs: the forward then runs in bf16 throughout.
    arch: str = "gpt2"
    head_dim: int = 128          # track3; any arch with n_head: null
    embed_dtype: str = "float32"  # track3 only: float32 | bfloat16
    init: str = "default"        # INITS; not default only with track3

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise UserError(f"model.arch={self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.n_head is None:
            if self.head_dim < 1 or self.n_embd % self.head_dim:
                raise UserError(f"model.n_head=null takes n_embd // head_dim heads, but "
                                f"model.n_embd={self.n_embd} is not a multiple of model.head_dim="
                                f"{self.head_dim}; pick a head_dim that divides it")
            self.n_head = self.n_embd // self.head_dim
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
        if self.embed_dtype not in EMBED_DTYPES:
            raise UserError(f"model.embed_dtype={self.embed_dtype!r} is not one of "
                            f"{', '.join(EMBED_DTYPES)}")
        if self.init not in INITS:
            raise UserError(f"model.init={self.init!r} is not one of {', '.join(INITS)}")
        if self.arch == "track3":
            self._check_track3()
        elif self.init != "default":
            raise UserError(f"model.init={self.init} is an init of model.arch=track3 (the "
                            f"Hyperball records'); model.arch={self.arch} has only model.init=default")

    def _check_track3(self):
        if self.head_dim < 1 or self.n_embd % self.head_dim:
            raise UserError(f"model.n_embd={self.n_embd} is not a multiple of model.head_dim="
                            f"{self.head_dim} (model.arch=track3); e.g. 768 and 128")
        if self.n_head != self.n_embd // self.head_dim:
            raise UserError(f"model.n_head={self.n_head} must be model.n_embd // model.head_dim = "
                            f"{self.n_embd // self.head_dim} for model.arch=track3; set "
                            f"model.n_head={self.n_embd // self.head_dim}")
        if not self.bias:
            raise UserError("model.bias=false: model.arch=track3 has a bias on every Linear")
        if self.dropout:
            raise UserError(f"model.dropout={self.dropout}: model.arch=track3 has no dropout")
