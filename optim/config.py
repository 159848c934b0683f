"""The `optimizer` config group's schema: one dataclass for every registry name.

configs/optimizer/<name>.yaml sets `name` (the registry key) and that optimizer's defaults (the
papers' GPT-2-small values); fields an optimizer does not use are ignored by its builder. A
field left None means "the family's own default" (see optim/registry.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class OptimizerConfig:
    name: str = "adamw"                  # registry key, see optim/registry.py
    lr: float = 1e-3                     # peak lr of the matrix (or only) parameters
    vector_lr: Optional[float] = None    # AdamW backup lr for vector params; None = lr
    weight_decay: float = 0.1
    vector_weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    momentum: float = 0.95
    nesterov: bool = True
    mu2: float = 0.99                    # NAMO: second-moment decay of the gradient norm
    clamp_c: float = 0.1                 # NAMO-D: per-column scales clamped to [c, 1/c] x mean
    decay_style: str = "adaptive"        # NAMO: adaptive | decoupled
    scale: Optional[str] = None          # shape scale: moonlight | original | none; None = family's
    ns: str = "newton_schulz"            # orthogonalization: newton_schulz | svd
    ns_steps: int = 5
    ns_dtype: str = "auto"               # Newton-Schulz matmuls: auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float32 | float16
    power: Optional[float] = None        # spectral family: p in {1, 1/2, 1/4, 0}; None = the name's
    coupled_steps: int = 15              # coupled Newton-Schulz iterations for p in {1/2, 1/4}
    rank: Optional[int] = None           # muon_svd: keep the top-r singular directions
    distributed: bool = True             # torchrun: each rank transforms its share of the matrices
    split_qkv: bool = False              # treat packed q, k, v as three matrices
    qkv_patterns: List[str] = field(default_factory=lambda: ["*c_attn.weight"])  # what is packed
    matrix_patterns: List[str] = field(default_factory=lambda: ["*"])   # glob on param names
    vector_patterns: List[str] = field(default_factory=lambda: ["*wte*", "*wpe*", "*lm_head*"])
    target: Optional[str] = None         # external: import path of an optimizer class
    kwargs: Dict[str, Any] = field(default_factory=dict)   # extra keyword args of a library class
    split: bool = False                  # external: matrix/vector split with AdamW backup
    foreach: Optional[bool] = None
    fused: Optional[bool] = None
