"""The optimizer registry: a name in the config maps to one builder (torchtitan style).

    build_optimizer(model, cfg, log, zero=False) -> torch.optim.Optimizer

Every param group carries "base_lr" (its peak lr) and "kind" (all | matrix | vector); the
training loop sets group["lr"] = group["base_lr"] * schedule(step) and each optimizer reads
group["lr"] every step. Names:

  adamw, torch_adam, sgd, rmsprop   torch.optim classes on all parameters, weight decay on the
                                    2-D ones only (nanoGPT's grouping). `torch_adam` is
                                    torch.optim.Adam: the name `adam` is the spectral family's.
  muon, namo, namo_d, muon_svd      matrix chains (links in optim/rules.py, run by optim/matrix.py's
                                    MatrixOptimizer) + AdamW backup for vectors
  normuon, adamuon                  Muon + a per-row / per-entry second moment of the
                                    orthogonalized update (post links in optim/muon_variants.py)
  muonh, adamh, normuonh            Track 3's hyperball results #5, #4, #8: Muon's, Adam's,
                                    NorMuonH's update applied by the hyperball step (every hidden
                                    matrix keeps its Frobenius norm; optim/rules.py hyperball_apply)
  soap_muon                         SOAP's rotation + Adam normalization of Muon's momentum before
                                    Newton-Schulz (a precondition link, optim/soap_muon.py)
  dynmuon                           U Σ^p Vᵀ of Nesterov heavy-ball momentum, p scheduled from
                                    +1/4 to -1/4 (links in optim/dynmuon.py)
  dion                              rank-r orthonormal update by one power-iteration step with
                                    error feedback (optim/dion.py)
  adam adams adamq adamz            spectral family (arXiv 2602.04669): Psi_p, p = 1, 1/2, 1/4, 0,
  msgd msgds msgdq msgdz            of Adam's normalized update / of heavy-ball momentum
  shampoo, soap                     pytorch_optimizer's Shampoo / SOAP on matrices + AdamW backup
  external                          any torch.optim.Optimizer subclass by import path

Under torchrun (world size > 1) the matrix chains share their work across ranks, whole matrices
per rank with their state (optimizer.distributed, see MatrixOptimizer: ZeRO-1 with or without
train.zero). zero=True (train.zero) also shards the state of torch and library classes, through
torch.distributed.optim.ZeroRedundancyOptimizer (whole tensors per rank). The AdamW backup stays
replicated: ZeroRedundancyOptimizer places whole tensors, and the tied embedding is nearly all of
the backup (GPT-2 small: 38.6M of 39.5M), so sharding it would add a broadcast per step without
lowering any rank's peak memory. Checkpoints are consolidated into the unsharded format.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch
import torch.distributed as dist

from configs.errors import UserError
from optim.combined import CombinedOptimizer
from optim.config import OptimizerConfig
from optim.matrix import MatrixOptimizer
from optim.params import (decay_groups, describe_roles, log_split, named_params, param_role,
                          role_groups, shape_groups, split_params, summarize)
from optim import capability
from optim.muon_variants import adamuon_post, normuon_post, normuonh_post, sign_momentum
from optim.dynmuon import dynmuon_momentum, dynmuon_transform
from optim.soap_muon import soap_momentum
from optim.dion import dion_momentum, dion_post, dion_step, identity_transform
from optim.rules import (Chain, adam_normalize, always, ema_momentum, fixed_step, heavy_ball,
                         hyperball_apply, hyperball_step, namo_d_step, namo_step,
                         newton_schulz_dtype, ns_result_dtype, orthogonalize_transform,
                         rank_limited_transform, spectral_identity, spectral_power_transform,
                         spectral_result_dtype, zeroth_power)

Builder = Callable[[torch.nn.Module, OptimizerConfig, Callable, bool], torch.optim.Optimizer]
registry: dict[str, Builder] = {}
UW_FLOOR_NAMES: set[str] = set()   # chains with an orthogonal update and a fixed step size


def available() -> list[str]:
    return sorted(registry)


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig, log=print,
                    zero: bool = False) -> torch.optim.Optimizer:
    """zero: shard the optimizer state over the ranks of torch.distributed (ZeRO-1). cfg has
    checked its own values (OptimizerConfig.__post_init__)."""
    if cfg.name not in registry:
        raise UserError(f"unknown optimizer.name={cfg.name!r}; "
                        f"registered: {', '.join(available())}")
    if cfg.uw_floor is not None and cfg.name not in UW_FLOOR_NAMES:
        raise UserError(f"optimizer.uw_floor={cfg.uw_floor} needs an orthogonalizing matrix chain "
                        f"({', '.join(sorted(UW_FLOOR_NAMES))}), not optimizer={cfg.name}")
    if zero and not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        log("train.zero=true: one process has no optimizer state to shard; ignored")
        zero = False
    opt = registry[cfg.name](model, cfg, log, zero)
    if cfg.ema_nesterov.enabled:
        from optim.ema_nesterov import EmaNesterov
        e = cfg.ema_nesterov
        opt = EmaNesterov(opt, gamma=e.gamma, beta=e.beta, start=e.start, stop=e.stop)
        log(f"optimizer: wrapped in EMA-Nesterov (gamma {e.gamma}, lookahead {e.beta} x lr/peak "
            f"from step {e.start} to {'the end' if e.stop is None else e.stop})")
    return opt


# ---- helpers ------------------------------------------------------------------------------

FUSABLE = (torch.optim.AdamW, torch.optim.Adam)


def speed_flags(cls, cfg: OptimizerConfig, device_type: str) -> dict:
    """foreach / fused as the config sets them, where the class takes them; unset, torch's
    fused Adam(W) kernel on CUDA (one launch for all tensors; nanoGPT's choice)."""
    accepted = inspect.signature(cls).parameters
    flags = {f: getattr(cfg, f) for f in ("foreach", "fused")
             if getattr(cfg, f) is not None and f in accepted}
    if cls in FUSABLE and device_type == "cuda" and cfg.fused is None and not cfg.foreach:
        flags["fused"] = True
    return flags


def _device_type(params) -> str:
    first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
    return first.device.type


def _construct(cls, params, cfg: OptimizerConfig, zero: bool = False,
               **kwargs) -> torch.optim.Optimizer:
    """cls(params, **kwargs, **cfg.kwargs), with speed_flags and a library's argument errors
    turned into one UserError line; ZeRO-1 sharded with zero."""
    kwargs.update(speed_flags(cls, cfg, _device_type(params)))
    kwargs.update(cfg.kwargs)
    try:
        if zero:  # imported here: torch.distributed.optim takes a second to import
            from torch.distributed.optim import ZeroRedundancyOptimizer
            return ZeroRedundancyOptimizer(params, optimizer_class=cls, **kwargs)
        return cls(params, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{cls.__module__}.{cls.__name__}: {' '.join(str(exc).split())}; "
                        f"check optimizer.kwargs") from None


def _with_lr(groups: list[dict], lr: float, kind: str) -> list[dict]:
    for g in groups:
        g.update(base_lr=lr, kind=kind)
    return groups


def adamw_backup(vector, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW for the vector params (embeddings, tied head, LayerNorm, biases)."""
    lr = cfg.lr if cfg.vector_lr is None else cfg.vector_lr
    if cfg.roles.any():   # optimizer.roles: one group per role, each with its overrides
        groups = role_groups(vector, None, cfg.roles, lr=lr, kind="vector", decay=lambda role: (
            0.0 if role in ("embed", "head") and not cfg.decay_embeddings
            else cfg.vector_weight_decay))
    elif cfg.decay_embeddings or not cfg.vector_weight_decay:
        groups = [{"params": [p for _, p in vector]}]
    else:   # two groups only where they differ: the backup's state keeps its old layout
        embeds = [p for n, p in vector if param_role([n], p) in ("embed", "head")]
        rest = [p for n, p in vector if param_role([n], p) not in ("embed", "head")]
        groups = [g for g in ({"params": rest}, {"params": embeds, "weight_decay": 0.0})
                  if g["params"]]
    for g in groups:   # role groups carry their own lr; the others take the backup's
        g.setdefault("base_lr", g.get("lr", lr))
        g["kind"] = "vector"
    kwargs = dict(lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.vector_weight_decay,
                  **speed_flags(torch.optim.AdamW, cfg, _device_type(groups)))
    return torch.optim.AdamW(groups, **kwargs)


def with_backup(matrix_opt: torch.optim.Optimizer | None, vector, cfg) -> CombinedOptimizer:
    parts = {}
    if matrix_opt is not None:
        parts["matrix"] = matrix_opt
    if vector:
        parts["vector"] = adamw_backup(vector, cfg)
    return CombinedOptimizer(**parts)


# ---- torch.optim classes on all parameters -------------------------------------------------

def all_param_groups(named, aliases, cfg: OptimizerConfig) -> list[dict]:
    """A torch class's groups over every parameter: nanoGPT's decay grouping, or with
    optimizer.roles one group per role (the same decay where a role sets none)."""
    if not cfg.roles.any():
        return _with_lr(decay_groups(named, cfg.weight_decay, cfg.decay_embeddings, aliases),
                        cfg.lr, "all")
    return role_groups(named, aliases, cfg.roles, lr=cfg.lr, kind="all", decay=lambda role: (
        cfg.weight_decay if role == "hidden" or (role != "scalar" and cfg.decay_embeddings)
        else 0.0))


def _torch_builder(cls, hyper: Callable[[OptimizerConfig], dict]) -> Builder:
    def build(model, cfg, log, zero):
        named, aliases = named_params(model)
        groups = all_param_groups(named, aliases, cfg)
        decayed = sum(p.ndim >= 2 and (cfg.decay_embeddings or
                                       param_role(aliases[id(p)], p) == "hidden") for _, p in named)
        which = "dim >= 2" if cfg.decay_embeddings else "dim >= 2 except embeddings and head"
        log(f"optimizer: {cls.__name__}{' (ZeRO-1)' if zero else ''} on all {len(named)} tensors "
            f"({sum(p.numel() for _, p in named):,} params), weight decay {cfg.weight_decay} "
            f"on the {decayed} with {which}: {summarize(named)}")
        if cfg.roles.any():
            log(f"optimizer: groups by role (optimizer.roles): {describe_roles(groups)}")
        return _construct(cls, groups, cfg, zero, lr=cfg.lr, **hyper(cfg))
    return build


def _adam_hyper(c):
    return dict(betas=tuple(c.betas), eps=c.eps)


registry["adamw"] = _torch_builder(torch.optim.AdamW, _adam_hyper)
registry["torch_adam"] = _torch_builder(torch.optim.Adam, _adam_hyper)
registry["sgd"] = _torch_builder(torch.optim.SGD, lambda c: dict(
    momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0))
registry["rmsprop"] = _torch_builder(torch.optim.RMSprop, lambda c: dict(eps=c.eps))


# ---- matrix chains + AdamW backup ------------------------------------------------------------

def _chain_builder(chain: Chain, scale: str, power: float | None = None) -> Builder:
    """`scale` and `power` are the family's defaults, used where the config leaves them None."""
    def build(model, cfg, log, zero):
        matrix, vector = split_params(model, cfg)
        groups = [{"params": [p for _, p in ps], "matrix_shape": shape}
                  for shape, ps in shape_groups(matrix, cfg).items()]
        if cfg.rank is not None and chain.transform is rank_limited_transform:  # muon_svd
            smallest = min((min(g["matrix_shape"]) for g in groups), default=cfg.rank)
            if cfg.rank > smallest:
                raise UserError(f"optimizer.rank={cfg.rank} exceeds min(rows, cols)={smallest} of "
                                f"the smallest matrix; use 1..{smallest} or null (full rank)")
        if chain.apply is hyperball_apply and (cfg.weight_decay or cfg.cautious_wd):
            raise UserError(f"optimizer={cfg.name} keeps every hidden matrix's norm fixed, so "
                            f"weight decay does nothing but shrink the step: set "
                            f"optimizer.weight_decay=0 and cautious_wd=false (have "
                            f"{cfg.weight_decay}, {cfg.cautious_wd})")
        opt = None
        if groups:
            opt = MatrixOptimizer(_with_lr(groups, cfg.lr, "matrix"), chain,
                                  distributed=cfg.distributed, shard_state=zero,
                                  **cfg.hyperparameters(scale=scale, power=power))
        stacks = ", ".join(f"{sum(p.numel() for p in g['params']) // (m * n)}x({m}, {n})"
                           for g in groups for m, n in [g["matrix_shape"]])
        shared = f"; {opt.sharing()}" if opt is not None and opt.world > 1 else ""
        log_split(log, matrix, vector,
                  f"{cfg.name}, stacked by shape as {stacks or 'nothing'}{shared}")
        combined = with_backup(opt, vector, cfg)
        if cfg.roles.any() and "vector" in combined.parts:
            log(f"optimizer: AdamW backup by role (optimizer.roles): "
                f"{describe_roles(combined.parts['vector'].param_groups)}")
        if opt is not None and (dtype := newton_schulz_dtype(chain, opt.param_groups[0],
                                                             matrix[0][1].device)) is not None:
            combined.ns_dtype = str(dtype).removeprefix("torch.")
            why = (capability.ns_auto(matrix[0][1].device.type).reason
                   if cfg.ns_dtype == "auto" else "set explicitly")
            log(f"optimizer: Newton-Schulz in {combined.ns_dtype} (optimizer.ns_dtype="
                f"{cfg.ns_dtype}: {why})")
        if chain.apply is hyperball_apply and (zeros := sum(
                int(not p.detach().any()) for _, p in matrix)):
            log(f"optimizer: {cfg.name}: {zeros} hidden matrices are zero and stay zero under the "
                f"hyperball step (the records initialize them nonzero: model.init=normal_scaled "
                f"or torch_scaled, see configs/optimizer/{cfg.name}.yaml)")
        return combined
    return build


def orthogonalizing(precondition, step_size, **links) -> Chain:
    """A chain whose transform is optimizer.ns's polar factor, in that one's dtype rule."""
    return Chain(precondition, orthogonalize_transform, step_size, result_dtype=ns_result_dtype,
                 orthogonalizes=always, **links)


# Chain(precondition, transform, step size) and the family's shape scale (and power)
for name, step_size in (("muon", fixed_step), ("namo", namo_step), ("namo_d", namo_d_step)):
    registry[name] = _chain_builder(orthogonalizing(ema_momentum, step_size), "moonlight")
# optimizer.uw_floor: its u = shape scale x D needs a fixed step size and an orthogonal D
UW_FLOOR_NAMES.update(("muon", "normuon", "adamuon", "track3_baseline", "muon_svd", "adamz", "soap_muon",
                       "msgdz"))
# Muon variants: a post link after the transform rescales O; RMS aligned there, so no shape scale
registry["normuon"] = _chain_builder(orthogonalizing(ema_momentum, fixed_step, post=normuon_post),
                                     "none")
registry["adamuon"] = _chain_builder(orthogonalizing(sign_momentum, fixed_step, post=adamuon_post),
                                     "none")
# Track 3 result #44's SOAP-Muon: SOAP precondition link, then Muon's orthogonalization
registry["soap_muon"] = _chain_builder(orthogonalizing(soap_momentum, fixed_step), "original")
# Track 3 result #28's DynMuon: Psi_p at a scheduled p (negative included) by its Taylor kernel
registry["dynmuon"] = _chain_builder(Chain(dynmuon_momentum, dynmuon_transform, fixed_step),
                                     "original")
# Dion: rank-r power iteration with error feedback in the post link (optim/dion.py)
registry["dion"] = _chain_builder(Chain(dion_momentum, identity_transform, dion_step,
                                        identity=always, post=dion_post), "none")
# Track 3's result #36 (modded-nanogpt records/track_3_optimization): Muon with its settings in
# configs/optimizer/track3_baseline.yaml (cubic Newton-Schulz, per-role AdamW backup)
registry["track3_baseline"] = registry["muon"]
# Track 3's hyperball results (modded-nanogpt records/track_3_optimization, the YAMLs name the
# files): the update of Muon (#5), of Adam (#4), of NorMuonH (#8), applied by hyperball_apply
registry["muonh"] = _chain_builder(orthogonalizing(ema_momentum, hyperball_step,
                                                   apply=hyperball_apply), "none")
registry["adamh"] = _chain_builder(Chain(adam_normalize, identity_transform, hyperball_step,
                                         identity=always, apply=hyperball_apply), "none")
registry["normuonh"] = _chain_builder(orthogonalizing(ema_momentum, hyperball_step,
                                                      post=normuonh_post, apply=hyperball_apply),
                                      "original")
registry["muon_svd"] = _chain_builder(Chain(ema_momentum, rank_limited_transform, fixed_step),
                                      "moonlight")
SPECTRAL_SUFFIXES = {"": 1, "s": 0.5, "q": 0.25, "z": 0}   # square root, quarter, zeroth power
for suffix, p in SPECTRAL_SUFFIXES.items():
    for family, precondition in (("adam", adam_normalize), ("msgd", heavy_ball)):
        registry[family + suffix] = _chain_builder(
            Chain(precondition, spectral_power_transform, fixed_step, identity=spectral_identity,
                  result_dtype=spectral_result_dtype, orthogonalizes=zeroth_power), "none", p)


# ---- library optimizers and any class by import path ----------------------------------------

def import_optimizer_class(path: str | None):
    if not path:
        raise UserError("optimizer=external needs optimizer.target=<module.Class>, "
                        "e.g. optimizer.target=torch.optim.NAdam")
    module, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"optimizer.target={path} is not importable ({exc}); "
                        f"give module.Class, e.g. torch.optim.NAdam") from None
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        raise UserError(f"optimizer.target={path} is not a torch.optim.Optimizer subclass")
    return cls


def _library_builder(target: str | None, split: bool | None, hyper: Callable) -> Builder:
    """cls(matrix params, lr, weight_decay, **hyper, **cfg.kwargs) + AdamW backup when split,
    else cls on all params with nanoGPT's decay grouping. None: from cfg.target / cfg.split."""
    def build(model, cfg, log, zero):
        cls = import_optimizer_class(target or cfg.target)
        name = target or cfg.target
        if split if split is not None else cfg.split:
            matrix, vector = split_params(model, cfg)
            opt = None
            if matrix:
                group = {"params": [p for _, p in matrix], "base_lr": cfg.lr, "kind": "matrix"}
                opt = _construct(cls, [group], cfg, zero, lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, **hyper(cfg))
            log_split(log, matrix, vector, name)
            return with_backup(opt, vector, cfg)
        named, aliases = named_params(model)
        groups = all_param_groups(named, aliases, cfg)
        log(f"optimizer: {name} on all {len(named)} tensors, weight decay on dim >= 2: "
            f"{summarize(named)}")
        return _construct(cls, groups, cfg, zero, lr=cfg.lr, **hyper(cfg))
    return build


# pytorch_optimizer (eager PyTorch, runs on CPU, already a dependency; heavyball needs
# torch.compile). Its plain Shampoo keeps tensor-only state, so checkpoints load with
# weights_only=True; ScalableShampoo keeps Python objects in its state (use it via `external`).
registry["shampoo"] = _library_builder("pytorch_optimizer.Shampoo", True,
                                       lambda c: dict(weight_decouple=True))
registry["soap"] = _library_builder("pytorch_optimizer.SOAP", True,
                                    lambda c: dict(betas=tuple(c.betas), eps=c.eps))
registry["external"] = _library_builder(None, None, lambda c: {})
