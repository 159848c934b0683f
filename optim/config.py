"""The `optimizer` config group's schema: one dataclass for every registry name, its checks, and
the param-group hyperparameters the matrix chains read. Torch-free (trainer/config.py's RunConfig holds it).

configs/optimizer/<name>.yaml sets `name` (the registry key) and that optimizer's defaults (the
papers' GPT-2-small values); fields an optimizer does not use are ignored by its builder. A
field left None means "the family's own default" (see optim/registry.py).

Every field not in ROUTING is a hyperparameter of the matrix chains: it lands in each matrix param
group under its own name (OptimizerConfig.hyperparameters), where the links of optim/rules.py read
it. Adding one takes the field here (with its check in __post_init__) and the YAML(s) that set it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from configs.errors import UserError

# Fields that route parameters or configure a builder, never read by a chain link.
ROUTING = ("name", "route", "vector_lr", "vector_weight_decay", "decay_embeddings", "roles",
           "distributed", "split_qkv", "ema_nesterov",
           "qkv_patterns", "matrix_patterns", "vector_patterns", "target", "kwargs", "split",
           "foreach", "fused")
POWERS = (1, 0.5, 0.25, 0)                          # the spectral family's p (optim/spectral.py)
NS_DTYPES = ("bfloat16", "float32", "float16")      # torch dtype names; "auto" picks per device
CHOICES = {"decay_style": ("adaptive", "decoupled"),
           "ns": ("newton_schulz", "cubic", "svd", "polar_express", "gram"),   # optim/polar.py
           "scale": (None, "moonlight", "original", "none"),
           "ns_dtype": ("auto", *NS_DTYPES),
           "ns_norm": ("frobenius", "schatten4"),
           "scale_rule": ("paper", "released"),
           "route": ("patterns", "all_2d")}


@dataclass
class RoleConfig:
    """Overrides for the parameters of one role (optim/params.py ROLES); None: the optimizer's
    own value (lr: vector_lr or lr; weight_decay: vector_weight_decay in the AdamW backup,
    weight_decay or 0 in a torch class's grouping; betas, eps: the optimizer's)."""
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    betas: Optional[List[float]] = None
    eps: Optional[float] = None

    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


@dataclass
class RolesConfig:
    """optimizer.roles.<role>.<key>: per-role hyperparameters of the parameters that are not
    hidden matrices (the token / position embeddings, the head, the gains and biases). The
    hidden matrices take the optimizer's own lr, weight_decay, betas. Unset (the default), the
    param groups are exactly those of before roles existed."""
    embed: RoleConfig = field(default_factory=RoleConfig)
    head: RoleConfig = field(default_factory=RoleConfig)
    scalar: RoleConfig = field(default_factory=RoleConfig)

    def any(self) -> bool:
        return any(getattr(self, f.name).any() for f in fields(self))


@dataclass
class EmaNesterovConfig:
    """optimizer.ema_nesterov: the EMA-Nesterov wrapper (arXiv 2605.25395, Track 3 result #39;
    optim/ema_nesterov.py) around any optimizer of the registry. Off by default."""
    enabled: bool = False
    gamma: float = 0.99                  # EMA of the per-step parameter displacement
    beta: float = 0.6                    # lookahead = beta x lr / peak lr (the last step's lr)
    start: int = 500                     # first step with a lookahead (the EMA fills from step 0)
    stop: Optional[int] = None           # first step without again; null: never (#39: 2400 of 3150)


@dataclass
class OptimizerConfig:
    name: str = "adamw"                  # registry key, see optim/registry.py
    lr: float = 1e-3                     # peak lr of the matrix (or only) parameters
    vector_lr: Optional[float] = None    # AdamW backup lr for vector params; None = lr
    weight_decay: float = 0.1
    cautious_wd: bool = False            # matrix chains: decay only where update and weight agree
                                         # in sign (arXiv 2510.12402)
    # Orthogonalizing chains: a matrix's update u (shape scale included, lr not) with ||u||_F /
    # ||W||_F below this is scaled up to it (Track 3 result #9, 0.35); null: off.
    uw_floor: Optional[float] = None
    ema_nesterov: EmaNesterovConfig = field(default_factory=EmaNesterovConfig)
    vector_weight_decay: float = 0.0
    # Whether the token / position embeddings and the head take weight decay (torch classes: at
    # weight_decay; the AdamW backup: at vector_weight_decay). true: nanoGPT's grouping (every
    # tensor of dim >= 2); false: the NAMO repo's (only the hidden matrices). optim/params.py ROLES.
    decay_embeddings: bool = True
    roles: RolesConfig = field(default_factory=RolesConfig)   # optimizer.roles.embed.lr=0.7, ...
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    momentum: float = 0.95
    nesterov: bool = True
    mu2: float = 0.99                    # second-moment decay: NAMO (of the gradient norm), NorMuon
                                         # (per row of O), AdaMuon (per entry of O), soap_muon (per
                                         # entry of the rotated momentum)
    clamp_c: float = 0.1                 # NAMO-D: per-column scales clamped to [c, 1/c] x mean; 0: no clamp
    decay_style: str = "adaptive"        # NAMO: adaptive | decoupled
    scale: Optional[str] = None          # shape scale: moonlight | original | none; None = family's
    ns: str = "newton_schulz"            # orthogonalization: newton_schulz (quintic) | cubic | svd
                                         # | polar_express | gram (optim/polar.py's table)
    ns_steps: int = 5
    ns_eps: float = 1e-7                 # Newton-Schulz starts from X / (||X||_F + ns_eps)
    ns_dtype: str = "auto"               # Newton-Schulz matmuls: auto (bf16 on GPUs and on CPUs
                                         # with AVX512-BF16/AMX, else fp32; optim/capability.py)
                                         # | bfloat16 | float32 | float16
    ns_norm: str = "frobenius"           # Newton-Schulz's starting scale: frobenius (X / ||X||_F)
                                         # | schatten4 (X / ||X Xᵀ||_F^(1/2): soap_muon's record)
    # NorMuon's step size (optim/muon_variants.py): paper (Algorithm 1: update RMS 0.2, what the
    # committed studies ran) | released (zichongli5/NorMuon's normuon.py: keep ||O||_F, times
    # sqrt(max(1, m/n))). Read by normuon only; another name with `released` is an error.
    scale_rule: str = "paper"
    power: Optional[float] = None        # spectral family: p in {1, 1/2, 1/4, 0}; None = the name's
    coupled_steps: int = 15              # coupled Newton-Schulz iterations for p in {1/2, 1/4}
    # soap_muon (optim/soap_muon.py): SOAP's rotation of the momentum before Newton-Schulz
    shampoo_beta: float = 0.95           # EMA of the row / column statistics G Gᵀ, Gᵀ G
    precondition_frequency: int = 10     # eigenbases refreshed (one QR power step) every k steps
    soap_eps: float = 1e-8               # floor of sqrt(v) in the rotated basis
    # dynmuon (optim/dynmuon.py): U Σ^p Vᵀ with p moving from power_start to power_end on a
    # sigmoid centred at power_tau x power_steps, of width power_width x power_steps
    grad_divisor: float = 1.0            # the gradient is divided by it first (Ψ_p is not scale-free)
    power_start: float = 0.25
    power_end: float = -0.25
    power_tau: float = 0.04
    power_width: float = 0.04
    power_steps: int = 3200              # the record's train_steps: q = (step - 1) / power_steps
    rank: Optional[int] = None           # muon_svd: keep the top-r singular directions; dion: its rank
    rank_fraction: float = 1.0           # dion without rank: r = ceil(fraction x min(m, n))
    # dion: run the power iteration on Xᵀ of a wide matrix (m < n), as microsoft/dion's
    # dion_reference.py (and dion.py) do; false: never transpose, as its dion_simple.py (and every
    # committed study) does. optim/dion.py.
    dion_transpose: bool = False
    distributed: bool = True             # torchrun: each rank transforms its share of the matrices
    split_qkv: bool = False              # treat packed q, k, v as three matrices
    qkv_patterns: List[str] = field(default_factory=lambda: ["*c_attn.weight"])  # what is packed
    # Which tensors the matrix chain updates. patterns: 2-D, untied, matching matrix_patterns and
    # no vector_patterns (the hidden weights; embeddings and the tied head go to the AdamW
    # backup). all_2d: every tensor with >= 2 dims, the tied embedding/head and the position
    # embedding included (the spectral paper's published GPT-2 setup); 1-D ones to the backup.
    route: str = "patterns"
    matrix_patterns: List[str] = field(default_factory=lambda: ["*"])   # glob on param names
    vector_patterns: List[str] = field(default_factory=lambda: ["*wte*", "*wpe*", "*lm_head*",
                                                                "*embed*"])   # model/track3.py's
    target: Optional[str] = None         # external: import path of an optimizer class
    kwargs: Dict[str, Any] = field(default_factory=dict)   # extra keyword args of a library class
    split: bool = False                  # external: matrix/vector split with AdamW backup
    foreach: Optional[bool] = None
    fused: Optional[bool] = None

    def __post_init__(self):
        """Each key's check, as one UserError line."""
        def bad(key, want):
            value = getattr(self, key)
            raise UserError(f"optimizer.{key}={list(value) if key == 'betas' else value} {want}")
        for key in ("lr", "ns_eps"):
            if getattr(self, key) <= 0:
                bad(key, "must be positive")
        if self.vector_lr is not None and self.vector_lr < 0:
            bad("vector_lr", "must be >= 0 (or null: the same as optimizer.lr)")
        if not 0 <= self.clamp_c <= 1:
            bad("clamp_c", "must be in [0, 1] (0: no clamp)")
        if self.power is not None and self.power not in POWERS:
            bad("power", "is not in the spectral family; use one of 1, 0.5, 0.25, 0")
        if not 0 <= self.shampoo_beta < 1:
            bad("shampoo_beta", "must be in [0, 1)")
        for key in ("precondition_frequency", "power_steps", "ns_steps", "coupled_steps"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "must be an integer >= 1")
        for key in ("grad_divisor", "power_width", "soap_eps"):
            if not getattr(self, key) > 0:
                bad(key, "must be positive")
        for key in ("power_start", "power_end"):
            if not -1 <= getattr(self, key) <= 1:
                bad(key, "must be in [-1, 1] (the exponent p of U Σ^p Vᵀ)")
        if not math.isfinite(self.power_tau):
            bad("power_tau", "must be a finite number (the sigmoid's centre, a fraction of power_steps)")
        if self.rank is not None and self.rank < 1:
            bad("rank", "must be >= 1 (or null: full rank)")
        if not 0 < self.rank_fraction <= 1:
            bad("rank_fraction", "must be in (0, 1]")
        if not self.decay_embeddings and self.route == "all_2d" and self.weight_decay:
            raise UserError(f"optimizer.decay_embeddings=false with optimizer.route=all_2d and "
                            f"weight_decay={self.weight_decay}: the matrix chain decays every "
                            f"matrix alike; set weight_decay=0 or route=patterns")
        for role in ("embed", "head", "scalar"):
            r = getattr(self.roles, role)
            for key in ("lr", "weight_decay", "eps"):
                value = getattr(r, key)
                if value is not None and (value < 0 or (key != "weight_decay" and value == 0)):
                    raise UserError(f"optimizer.roles.{role}.{key}={value} must be "
                                    f"{'>= 0' if key == 'weight_decay' else 'positive'} (or null)")
            if r.betas is not None and (len(r.betas) != 2 or not all(0 <= b < 1 for b in r.betas)):
                raise UserError(f"optimizer.roles.{role}.betas={list(r.betas)} must be two numbers "
                                f"in [0, 1) (or null)")
            if self.route == "all_2d" and role != "scalar" and r.any():
                raise UserError(f"optimizer.roles.{role} with optimizer.route=all_2d: the "
                                f"{role} is a matrix of the chain there; set route=patterns")
        if self.uw_floor is not None and self.uw_floor <= 0:
            bad("uw_floor", "must be positive (or null: off)")
        if isinstance(self.ema_nesterov, dict):   # OptimizerConfig(ema_nesterov={...}) in Python
            self.ema_nesterov = EmaNesterovConfig(**self.ema_nesterov)
        e = self.ema_nesterov
        if not 0 <= e.gamma < 1 or e.beta < 0:
            raise UserError(f"optimizer.ema_nesterov.gamma={e.gamma} must be in [0, 1) and "
                            f"optimizer.ema_nesterov.beta={e.beta} >= 0")
        if e.start < 0 or (e.stop is not None and e.stop < e.start):
            raise UserError(f"optimizer.ema_nesterov.start={e.start} must be >= 0 and stop={e.stop} "
                            "at least start (or null: never)")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                bad(key, f"must be one of {', '.join(str(a) for a in allowed)}")
        if self.scale_rule != "paper" and self.name != "normuon":
            bad("scale_rule", f"is NorMuon's step-size rule; optimizer.name={self.name} has "
                              f"none (leave it at paper)")
        if self.dion_transpose and self.name != "dion":
            bad("dion_transpose", f"is Dion's; optimizer.name={self.name} does not read it")
        for key in ("momentum", "mu2"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must be in [0, 1)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad("betas", "must be two numbers in [0, 1)")

    def hyperparameters(self, **family) -> dict:
        """{field: value} of every field not in ROUTING, for the matrix param groups. A field
        left None takes the family's default from `family` (scale, power); lists become tuples,
        and a configured power a float."""
        hyper = {}
        for f in fields(self):
            if f.name not in ROUTING:
                value = getattr(self, f.name)
                hyper[f.name] = (family.get(f.name) if value is None
                                 else tuple(value) if isinstance(value, list) else value)
        if self.power is not None:
            hyper["power"] = float(self.power)
        return hyper
