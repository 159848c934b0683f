"""Which parameters are "matrix" and which are "vector", and a one-screen summary of the split.

Matrix parameters are the 2-D hidden weights that a matrix optimizer (Muon, NAMO, ...) updates;
everything else (embeddings, the tied head, LayerNorm gains, biases) is a vector parameter for
the AdamW backup. The rule lives in the config (fnmatch globs), never in the optimizers.
"""
from __future__ import annotations

import re
from collections import Counter
from fnmatch import fnmatch

import torch

from configs.errors import UserError


def _matches(name: str, patterns) -> bool:
    return any(fnmatch(name, pat) for pat in patterns)


def named_params(model: torch.nn.Module) -> tuple[list[tuple[str, torch.Tensor]], dict]:
    """Trainable (name, param) pairs, each tensor once (named_parameters drops tied duplicates),
    and every name a tensor goes by (a tied wte/lm_head weight has two)."""
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return named, aliases


def split_params(model: torch.nn.Module, cfg):
    """(matrix, vector) lists of (name, param), each tensor once. optimizer.route=patterns: a
    parameter is a matrix when it is 2-D, every name it has matches a matrix pattern, none
    matches a vector pattern, and it is not shared between modules (a tied embedding/head
    weight goes to the vector side). route=all_2d: every tensor with >= 2 dims is a matrix, a
    tied one too (one tensor: routed once, updated once)."""
    named, aliases = named_params(model)
    if cfg.route == "all_2d":
        return [(n, p) for n, p in named if p.ndim >= 2], [(n, p) for n, p in named if p.ndim < 2]
    matrix, vector = [], []
    for name, p in named:
        names = aliases[id(p)]
        is_matrix = (p.ndim == 2 and len(names) == 1
                     and all(_matches(n, cfg.matrix_patterns) for n in names)
                     and not any(_matches(n, cfg.vector_patterns) for n in names))
        (matrix if is_matrix else vector).append((name, p))
    return matrix, vector


def blocks_of(name: str, p: torch.Tensor, cfg) -> int:
    """How many stacked matrices the parameter holds: 3 for a packed q/k/v with split_qkv."""
    if not (cfg.split_qkv and _matches(name, cfg.qkv_patterns)):
        return 1
    if p.shape[0] % 3:
        raise UserError(f"optimizer.split_qkv: {name} has {p.shape[0]} rows, not a multiple of 3; "
                        f"set optimizer.qkv_patterns to the packed q/k/v weights only")
    return 3


def shape_groups(matrix, cfg) -> dict[tuple[int, int], list[tuple[str, torch.Tensor]]]:
    """Matrix parameters grouped by the shape of the matrices they hold (a split (3C, C) weight
    joins the (C, C) group), so each group is one batched orthogonalization."""
    groups: dict[tuple[int, int], list] = {}
    for name, p in matrix:
        k = blocks_of(name, p, cfg)
        groups.setdefault((p.shape[0] // k, p.shape[1]), []).append((name, p))
    return groups


# What each parameter is to the model, by any of its names: the token / position embeddings (a
# tied head is the token embedding), the output head, scalars (gains, biases: every tensor of
# dim < 2) and the hidden matrices. Decay grouping (optimizer.decay_embeddings) reads it.
ROLES = ("embed", "head", "scalar", "hidden")
ROLE_PATTERNS = {"embed": ("*wte*", "*wpe*", "*embed*"), "head": ("*lm_head*",)}


def param_role(names, p: torch.Tensor) -> str:
    """One of ROLES for the tensor `p` known by `names` (every name it goes by)."""
    if p.ndim < 2:
        return "scalar"
    for role, patterns in ROLE_PATTERNS.items():
        if any(_matches(n, patterns) for n in names):
            return role
    return "hidden"


def decay_groups(named, weight_decay: float, decay_embeddings: bool = True,
                 aliases: dict | None = None) -> list[dict]:
    """nanoGPT's grouping: weight decay on tensors with dim >= 2, none on biases and gains.
    decay_embeddings=False: none on the embeddings and the head either (the NAMO repo's AdamW)."""
    def decays(name, p):
        role = param_role((aliases or {}).get(id(p), [name]), p)
        return role == "hidden" or (decay_embeddings and role in ("embed", "head"))
    decay = [p for n, p in named if decays(n, p)]
    no_decay = [p for n, p in named if not decays(n, p)]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def role_groups(named, aliases: dict | None, roles, *, lr: float, decay, kind: str) -> list[dict]:
    """Param groups by role (hidden, embed, head, scalar; the empty ones left out): each with
    its role's overrides (optimizer.roles.<role>) over `lr` and `decay(role)` (its weight
    decay), and base_lr / kind / role for the training loop and the logs."""
    by_role: dict[str, list] = {}
    for name, p in named:
        by_role.setdefault(param_role((aliases or {}).get(id(p), [name]), p), []).append(p)
    groups = []
    for role in ROLES[3:] + ROLES[:3]:        # hidden first, as decay_groups puts the decayed
        if role not in by_role:
            continue
        over = getattr(roles, role, None)
        g_lr = lr if over is None or over.lr is None else over.lr
        wd = decay(role) if over is None or over.weight_decay is None else over.weight_decay
        group = {"params": by_role[role], "lr": g_lr, "base_lr": g_lr, "kind": kind,
                 "weight_decay": wd, "role": role}
        if over is not None and over.betas is not None:
            group["betas"] = tuple(over.betas)
        if over is not None and over.eps is not None:
            group["eps"] = over.eps
        groups.append(group)
    return groups


def describe_roles(groups: list[dict]) -> str:
    """'embed: 1 tensor, lr 0.7, wd 0.001; ...' of role_groups' groups, for the start-up log."""
    return "; ".join(f"{g['role']}: {len(g['params'])} tensor(s), lr {g['lr']:g}, wd "
                     f"{g['weight_decay']:g}" + (f", betas {list(g['betas'])}" if "betas" in g else "")
                     + (f", eps {g['eps']:g}" if "eps" in g else "") for g in groups if "role" in g)


def summarize(named) -> str:
    """'12x transformer.h.*.attn.c_attn.weight (2304, 768), ...': layer indices folded."""
    counts = Counter((re.sub(r"\.\d+\.", ".*.", n), tuple(p.shape)) for n, p in named)
    return ", ".join(f"{c}x {n} {shape}" if c > 1 else f"{n} {shape}"
                     for (n, shape), c in counts.items())


def log_split(log, matrix, vector, what_matrix: str, what_vector: str = "AdamW backup") -> None:
    n_m = sum(p.numel() for _, p in matrix)
    n_v = sum(p.numel() for _, p in vector)
    log(f"optimizer: {len(matrix)} matrix tensors ({n_m:,} params) -> {what_matrix}: "
        f"{summarize(matrix) or 'none'}")
    log(f"optimizer: {len(vector)} vector tensors ({n_v:,} params) -> {what_vector}: "
        f"{summarize(vector) or 'none'}")
