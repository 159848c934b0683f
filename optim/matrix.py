"""Matrix update rules as short chains of links, run on stacks of same-shape matrices.

The papers' unified view: momentum -> normalization -> spectral transform -> adaptive scale ->
shape scale -> weight decay. A `Chain` has three links:

  precondition  per parameter, elementwise, with state (torch._foreach ops): Muon's EMA
                momentum, heavy-ball momentum, or Adam's m̂ / (sqrt(v̂) + eps);
  transform     ONE batched call on the (S, m, n) stack of a shape group: Newton-Schulz, the SVD
                polar factor, U Σ^p Vᵀ, the top-r polar factor (optim/spectral.py). This is the
                only matrix-sized work; a distributed mode shards this one call;
  step_size     per matrix or per column: lr, adaptive scale (NAMO, NAMO-D), shape scale and the
                weight-decay factor, as (eta, rho) for W <- rho W - eta D.

Under torch.distributed (torchrun, world size W > 1) the matrix-sized work is shared: each shape
group's stack of S matrices is cut into W slices of k = ceil(S / W) rows, rank r transforms rows
[r k, (r + 1) k) and an all-gather assembles the stack (as modded-nanogpt and Dion do).

A param group holds the matrices of one shape (a split (3C, C) q/k/v weight counts as three
(C, C) matrices), its hyperparameters and `matrix_shape`; links read the group every step, so a
schedule that sets group["lr"] takes effect.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from optim import spectral

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """optimizer.ns_dtype -> the Newton-Schulz matmul dtype. auto: bfloat16 on GPUs (Muon's
    choice: fast tensor cores, accurate enough), float32 elsewhere, since a CPU without native
    bf16 (no AVX512-BF16/AMX) runs bf16 matmuls 20-30x slower than float32 (a 128 x 512 x 128
    product: 9.7 ms vs 0.36 ms on this project's 2-core AMD EPYC)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def _zeros(states: list[dict], key: str, shapes, like: Tensor) -> list[Tensor]:
    """The per-parameter state tensor `key` of each parameter, created as zeros like `like`."""
    for s, shape in zip(states, shapes):
        if key not in s:
            s[key] = torch.zeros(shape, dtype=like.dtype, device=like.device)
    return [s[key] for s in states]


# ---- precondition: per-parameter elementwise links -------------------------------------------

def ema_momentum(group, grads, states):
    """Muon's B <- mu B + (1 - mu) G; with Nesterov the update uses (1 - mu) G + mu B."""
    mu = group["momentum"]
    bufs = _zeros(states, "momentum_buffer", [g.shape for g in grads], grads[0])
    torch._foreach_lerp_(bufs, grads, 1 - mu)
    return torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs


def heavy_ball(group, grads, states):
    """mSGD's B <- mu B + G."""
    bufs = _zeros(states, "momentum_buffer", [g.shape for g in grads], grads[0])
    torch._foreach_mul_(bufs, group["momentum"])
    torch._foreach_add_(bufs, grads)
    return bufs


def adam_normalize(group, grads, states):
    """Adam's bias-corrected, RMS-normalized update m̂ / (sqrt(v̂) + eps)."""
    (b1, b2), t = group["betas"], states[0]["step"]
    m = _zeros(states, "exp_avg", [g.shape for g in grads], grads[0])
    v = _zeros(states, "exp_avg_sq", [g.shape for g in grads], grads[0])
    torch._foreach_lerp_(m, grads, 1 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, grads, grads, 1 - b2)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, math.sqrt(1 - b2 ** t))
    torch._foreach_add_(denom, group["eps"])
    out = torch._foreach_div(m, denom)
    torch._foreach_div_(out, 1 - b1 ** t)
    return out


# ---- transform: one batched call per shape group ---------------------------------------------

def orthogonalize(group, X: Tensor) -> Tensor:
    """Muon's O: quintic Newton-Schulz on X / ||X||_F, or the exact U Vᵀ with ns=svd."""
    return spectral.orthogonalize(X, method=group["ns"], steps=group["ns_steps"],
                                  dtype=ns_dtype(group["ns_dtype"], X.device))


def rank_limited_polar(group, X: Tensor) -> Tensor:
    """U_r V_rᵀ from the top r singular directions; rank None = the full polar factor."""
    r = group["rank"]
    return spectral.polar_svd(X) if r is None else spectral.top_rank_polar(X, r)


def spectral_power(group, X: Tensor) -> Tensor:
    """Psi_p(X) = U Σ^p Vᵀ (arXiv 2602.04669); p = 1 is the identity."""
    p = group["power"]
    if p == 1:
        return X
    return spectral.spectral_power(X, p, steps=group["coupled_steps"], ns_steps=group["ns_steps"],
                                   method="svd" if group["ns"] == "svd" else "iterative",
                                   ns_dtype=ns_dtype(group["ns_dtype"], X.device))


# ---- step size: lr, adaptive and shape scales, weight decay -> (eta, rho) -----------------------

def shape_scale(style: str, m: int, n: int) -> float:
    if style == "moonlight":        # Moonlight / NAMO: match AdamW's update RMS
        return 0.2 * math.sqrt(max(m, n))
    if style == "original":         # Keller Jordan's Muon
        return math.sqrt(max(1.0, m / n))
    return 1.0


def fixed_step(group, grads, X, states):
    """Muon and the spectral family: eta = lr s, decoupled decay rho = 1 - lr wd."""
    lr = group["lr"]
    return lr * shape_scale(group["scale"], *group["matrix_shape"]), 1 - lr * group["weight_decay"]


def _namo_lr(group, t: int) -> float:
    """NAMO's bias-corrected lr_t = lr sqrt(1 - mu2^t) / (1 - mu^t)."""
    return group["lr"] * math.sqrt(1 - group["mu2"] ** t) / (1 - group["momentum"] ** t)


def namo_step(group, grads, X, states):
    """NAMO: v <- mu2 v + (1 - mu2) ||G||_F^2 per matrix, alpha = lr_t ||M||_F / (sqrt(v) + eps);
    eta = min(alpha s, 1); rho = 1 - wd min(alpha, 1) (adaptive) or 1 - lr_t wd (decoupled)."""
    lr_t, blocks = _namo_lr(group, states[0]["step"]), [len(g) for g in grads]
    G = torch.cat(grads).float()
    v = _zeros(states, "grad_norm_sq", [(k,) for k in blocks], G)
    g_norm_sq = torch.linalg.vector_norm(G, dim=(1, 2)).square()                    # (S,)
    torch._foreach_lerp_(v, list(g_norm_sq.split(blocks)), 1 - group["mu2"])
    m_norm = torch.linalg.vector_norm(X.float(), dim=(1, 2))
    alpha = (lr_t * m_norm / (torch.cat(v).sqrt() + group["eps"])).view(-1, 1, 1)
    eta = (alpha * shape_scale(group["scale"], *group["matrix_shape"])).clamp(max=1.0)
    if group["decay_style"] == "adaptive":
        return eta, 1 - group["weight_decay"] * alpha.clamp(max=1.0)
    return eta, 1 - lr_t * group["weight_decay"]


def namo_d_step(group, grads, X, states):
    """NAMO-D: per column j, V_j <- mu2 V_j + (1 - mu2) ||G[:, j]||^2, d_j = ||M[:, j]|| /
    (sqrt(V_j) + eps) clamped to [c mean(d), mean(d) / c]; eta_j = min(d_j lr_t s, 1),
    rho_j = 1 - wd min(d_j lr_t, 1) (adaptive) or 1 - lr_t wd (decoupled)."""
    lr_t, blocks, c = _namo_lr(group, states[0]["step"]), [len(g) for g in grads], group["clamp_c"]
    G = torch.cat(grads).float()
    V = _zeros(states, "col_grad_norm_sq", [(k, G.shape[2]) for k in blocks], G)
    col_norm_sq = torch.linalg.vector_norm(G, dim=1).square()                       # (S, n)
    torch._foreach_lerp_(V, list(col_norm_sq.split(blocks)), 1 - group["mu2"])
    d = torch.linalg.vector_norm(X.float(), dim=1) / (torch.cat(V).sqrt() + group["eps"])
    mean = d.mean(dim=1, keepdim=True)
    d = torch.minimum(torch.maximum(d, c * mean), mean / c).unsqueeze(1)            # (S, 1, n)
    eta = (d * (lr_t * shape_scale(group["scale"], *group["matrix_shape"]))).clamp(max=1.0)
    if group["decay_style"] == "adaptive":
        return eta, 1 - group["weight_decay"] * (d * lr_t).clamp(max=1.0)
    return eta, 1 - lr_t * group["weight_decay"]


@dataclass(frozen=True)
class Chain:
    precondition: Callable   # (group, grads, states) -> list of (k, m, n) tensors
    transform: Callable      # (group, X: (S, m, n)) -> D: (S, m, n)
    step_size: Callable      # (group, grads, X, states) -> (eta, rho), floats or tensors


def apply_update(params: list[Tensor], D: Tensor, eta, rho, blocks: list[int]) -> None:
    """W <- rho W - eta D for every matrix; eta and rho broadcast over (S, m, n)."""
    if isinstance(rho, Tensor):
        torch._foreach_mul_(params, list(rho.split(blocks)))
    elif rho != 1.0:
        torch._foreach_mul_(params, rho)
    if isinstance(eta, Tensor):
        torch._foreach_sub_(params, list((D * eta).split(blocks)))
    else:
        torch._foreach_add_(params, list(D.split(blocks)), alpha=-eta)


def world_and_rank(distributed: bool) -> tuple[int, int]:
    """(W, r) of the default process group if `distributed` and one is initialized, else (1, 0)."""
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class MatrixOptimizer(torch.optim.Optimizer):
    """A Chain over matrix parameters, one param group per matrix shape (`matrix_shape`).

    distributed (world size W > 1): rank r runs the transform on its k = ceil(S / W) rows of each
        stack and all_gather_into_tensor assembles the stack. DDP has all-reduced the gradients,
        so the elementwise links and the step sizes (cheap, computed by every rank on the whole
        stack) agree bit for bit, and so do the parameters. The state stays replicated: the
        checkpoint is the single-process one.
    shard_state (ZeRO-1, implies distributed): rank r also keeps the state of its rows only, runs
        the whole chain on them, and the updated rows are all-gathered. consolidate_state_dict()
        (a collective) rebuilds the unsharded per-parameter state that state_dict() returns, and
        load_state_dict() keeps this rank's rows of it, so checkpoints load at any world size.
    """

    def __init__(self, groups: list[dict], chain: Chain, distributed: bool = True,
                 shard_state: bool = False, **defaults):
        self.chain = chain
        self.world, self.rank = world_and_rank(distributed or shard_state)
        self.shard_state = shard_state and self.world > 1
        self._full_state = None   # consolidate_state_dict()'s result, for one state_dict()
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params and self.shard_state:
                self._update_own_rows(group)
            elif params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[Tensor]) -> None:
        m, n = group["matrix_shape"]
        W = [p.view(-1, m, n) for p in params]
        G = [p.grad.view(-1, m, n) for p in params]
        blocks = [w.shape[0] for w in W]
        states = [self.state[p] for p in params]
        for s in states:  # the matrices of a group step together
            s["step"] = s.get("step", 0) + 1
        X = torch.cat(self.chain.precondition(group, G, states))
        D = self._transform(group, X)
        eta, rho = self.chain.step_size(group, G, X, states)
        apply_update(W, D, eta, rho, blocks)

    # ---- distributed: a share of the rows per rank -----------------------------------------

    def _rows(self, S: int) -> tuple[int, int, int]:
        """k = ceil(S / W) rows per rank, and this rank's [lo, hi) (short or empty at the end)."""
        k = -(-S // self.world)
        return k, min(self.rank * k, S), min((self.rank + 1) * k, S)

    def _gather_rows(self, mine: Tensor, k: int, S: int, to: int | None = None) -> Tensor | None:
        """The (S, ...) stack from every rank's rows (each padded to k for the collective), on
        every rank, or with `to` on that rank only (None elsewhere)."""
        if len(mine) < k:
            mine = torch.cat([mine, mine.new_zeros(k - len(mine), *mine.shape[1:])])
        if to is None:
            out = mine.new_empty(self.world * k, *mine.shape[1:])
            # synchronous: no torn updates. torch 2.13 renamed all_gather_into_tensor.
            all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            all_gather(out, mine.contiguous())
            return out[:S]
        parts = [torch.empty_like(mine) for _ in range(self.world)] if self.rank == to else None
        dist.gather(mine.contiguous(), parts, dst=to)
        return torch.cat(parts)[:S] if parts else None

    def _transform(self, group: dict, X: Tensor) -> Tensor:
        if self.world == 1:
            return self.chain.transform(group, X)
        k, lo, hi = self._rows(len(X))
        mine = self.chain.transform(group, X[lo:hi]) if hi > lo else X[lo:hi]
        return self._gather_rows(mine, k, len(X))

    def _own_rows(self, group: dict) -> tuple[list[Tensor], list[tuple[Tensor, slice]], int, int]:
        """Every parameter of the group as a (-1, m, n) view; this rank's rows as (param, rows of
        that parameter) pairs; k; the stack height S. Rows are counted over all of the group's
        parameters, with or without a gradient, so the owner of a row never changes."""
        m, n = group["matrix_shape"]
        W = [p.view(-1, m, n) for p in group["params"]]
        S = sum(len(w) for w in W)
        k, lo, hi = self._rows(S)
        own, start = [], 0
        for p, w in zip(group["params"], W):
            a, b = max(lo - start, 0), min(hi - start, len(w))
            if a < b:
                own.append((p, slice(a, b)))
            start += len(w)
        return W, own, k, S

    def _update_own_rows(self, group: dict) -> None:
        """ZeRO-1: the chain on this rank's rows with their (sharded) state, then the updated
        rows of every rank are all-gathered into the parameters."""
        m, n = group["matrix_shape"]
        W, own, k, S = self._own_rows(group)
        stepping = [(p, rows) for p, rows in own if p.grad is not None]
        if stepping:
            Ws = [p.view(-1, m, n)[rows] for p, rows in stepping]
            G = [p.grad.view(-1, m, n)[rows] for p, rows in stepping]
            states = [self.state[p] for p, _ in stepping]
            for s in states:
                s["step"] = s.get("step", 0) + 1
            X = torch.cat(self.chain.precondition(group, G, states))
            D = self.chain.transform(group, X)
            eta, rho = self.chain.step_size(group, G, X, states)
            apply_update(Ws, D, eta, rho, [len(w) for w in Ws])
        mine = torch.cat([p.view(-1, m, n)[rows] for p, rows in own]) if own else W[0][:0]
        full = self._gather_rows(mine, k, S)
        torch._foreach_copy_(W, list(full.split([len(w) for w in W])))

    # ---- ZeRO-1 checkpoints: consolidate to the unsharded format, load any world size -------

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather the sharded state on rank `to`, as per-parameter state (on the CPU) for its
        next state_dict(). A collective: every rank calls it."""
        if not self.shard_state:
            return
        # The state's layout comes from rank 0, which holds the first rows of every group.
        layout = [self._layout(group) for group in self.param_groups]
        dist.broadcast_object_list(layout, src=0)
        full = defaultdict(dict)
        for group, keys in zip(self.param_groups, layout):
            W, own, k, S = self._own_rows(group)
            for key, spec in keys.items():
                if key == "step":   # the matrices of a group step together
                    for p in group["params"]:
                        full[p]["step"] = spec
                    continue
                shape, dtype = spec
                mine = [self.state[p].get(key, W[0].new_zeros(rows.stop - rows.start, *shape,
                                                              dtype=dtype)) for p, rows in own]
                mine = torch.cat(mine) if mine else W[0].new_zeros(0, *shape, dtype=dtype)
                stack = self._gather_rows(mine, k, S, to=to)
                if stack is not None:
                    for p, rows in zip(group["params"], stack.cpu().split([len(w) for w in W])):
                        full[p][key] = rows.clone()
        self._full_state = full if self.rank == to else None

    def _layout(self, group: dict) -> dict:
        """{key: (shape after the row dim, dtype)} of this rank's state in the group, and
        "step": the group's step count."""
        for p, _ in self._own_rows(group)[1]:
            if self.state.get(p):
                return {key: v if key == "step" else (tuple(v.shape[1:]), v.dtype)
                        for key, v in self.state[p].items()}
        return {}

    def state_dict(self) -> dict:
        if not self.shard_state:
            return super().state_dict()
        if self._full_state is None:
            raise RuntimeError(f"MatrixOptimizer with sharded state: call consolidate_state_dict("
                               f"to={self.rank}) on every rank before state_dict() on rank "
                               f"{self.rank}")
        sharded, self.state = self.state, self._full_state
        try:
            return super().state_dict()
        finally:
            self.state, self._full_state = sharded, None

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads unsharded state (any world size's checkpoint); with shard_state, keeps this
        rank's rows only."""
        super().load_state_dict(state_dict)
        if not self.shard_state:
            return
        full, self.state = self.state, defaultdict(dict)
        for group in self.param_groups:
            for p, rows in self._own_rows(group)[1]:
                if p in full:
                    self.state[p] = {key: v[rows].clone() if isinstance(v, Tensor) else v
                                     for key, v in full[p].items()}
