"""Dion (Ahn, Xu, Abreu, Langford, "Dion: Distributed Orthonormalized Updates", arXiv 2504.05295,
Algorithm 1) as links of a Chain (optim/rules.py): a rank-r update P Qᵀ (P orthonormal columns,
Q unit columns: orthonormal as the power iteration converges) from one step of power iteration
per optimizer step, with error feedback into the momentum.

Per matrix X (m x n), momentum M (m x n) and right factor Q (n x r), each step:
    B = M + G                       (precondition: dion_momentum)
    P = QR(B Q)                     (m x r, orthonormal columns: one power-iteration step)
    R = Bᵀ P                        (n x r)
    M <- B - (1 - mu) P Rᵀ          (error feedback: what the rank-r update left out stays in M)
    Q <- R with unit columns
    X <- (1 - lr wd) X - lr sqrt(m / n) P Qᵀ      (dion_step)
At full rank P Pᵀ B = B, so the feedback is plain momentum (M <- mu B) and, once Q holds B's right
singular vectors, P Qᵀ is B's polar factor U Vᵀ; at rank r < min(m, n) the part of B outside
span(P) is kept in M whole. Q starts as one fixed orthonormal n x r matrix per shape (a seeded
Gaussian's QR; the paper starts from a random one): the same on every rank and for every matrix,
so 2 ranks (ZeRO-1 included) compute what one process does.

Wide matrices (m < n, GPT-2's mlp.c_proj 768 x 3072): by default the step runs on X as it is, as
microsoft/dion's dion_simple.py does (and every committed study). Its dion_reference.py and
dion.py transpose them (the power iteration on Xᵀ, so the exact QR lands on the long side and
Q is m x r): optimizer.dion_transpose=true does that. Both reach B's polar factor as the power
iteration converges; they differ while it has not (configs/optimizer/dion.yaml gives the
measured size on mlp.c_proj's shape).

The transform is the identity (nothing for the ranks to share: Dion's work is the r-column
products) and the power-iteration step is the chain's `post` link, on the whole stack with each
matrix's state. The rank: optimizer.rank (r), else ceil(optimizer.rank_fraction x min(m, n)),
at most min(m, n).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from optim.rules import _zeros

Q_SEED = 20250407   # the fixed start of Q (any orthonormal start works)


def dion_rank(group) -> int:
    m, n = group["matrix_shape"]
    if group["rank"] is not None:
        return min(group["rank"], m, n)
    return max(1, min(m, n, math.ceil(group["rank_fraction"] * min(m, n))))


def dion_momentum(group, grads, states, out):
    """B = M + G into the stack (the buffer holds B until the post link feeds back)."""
    bufs = _zeros(states, "momentum_buffer", [g.shape for g in grads], grads[0])
    torch._foreach_add_(bufs, grads)
    torch._foreach_copy_(out, bufs)


def identity_transform(group, X: Tensor, work=None) -> Tensor:
    return X


def initial_q(n: int, r: int, like: Tensor) -> Tensor:
    """The fixed orthonormal n x r start of Q (float64 QR of a seeded Gaussian)."""
    g = torch.Generator().manual_seed(Q_SEED + 7919 * n + r)
    q = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64)).Q
    return q.to(dtype=like.dtype, device=like.device)


def transposed(group) -> bool:
    """optimizer.dion_transpose on a wide matrix (m < n): dion_reference.py's is_transposed."""
    m, n = group["matrix_shape"]   # .get: groups of checkpoints from before the option
    return bool(group.get("dion_transpose", False)) and m < n


def dion_post(group, B: Tensor, states: list[dict], blocks: list[int]) -> Tensor:
    """One power-iteration step on the stack B (S, m, n): D = P Qᵀ, momentum and Q updated.
    Transposed (optimizer.dion_transpose, m < n): the same step on Bᵀ (Q is m x r, P n x r),
    the feedback and D transposed back; the momentum keeps the parameter's layout."""
    flip = transposed(group)
    if flip:
        B = B.transpose(-2, -1)
    n, r = B.shape[-1], dion_rank(group)
    for s, k in zip(states, blocks):
        if "right_factor" not in s:
            s["right_factor"] = initial_q(n, r, B).expand(k, n, r).clone()
    Q = torch.cat([s["right_factor"] for s in states])                        # (S, n, r)
    P = torch.linalg.qr(B @ Q).Q                                               # (S, m, r)
    R = B.transpose(-2, -1) @ P                                                # (S, n, r)
    fed_back = B - (1 - group["momentum"]) * (P @ R.transpose(-2, -1))
    if flip:
        fed_back = fed_back.transpose(-2, -1)
    torch._foreach_copy_([s["momentum_buffer"] for s in states], list(fed_back.split(blocks)))
    Q = R / torch.linalg.vector_norm(R, dim=-2, keepdim=True).clamp_min(1e-30)
    torch._foreach_copy_([s["right_factor"] for s in states], list(Q.split(blocks)))
    D = P @ Q.transpose(-2, -1)
    return D.transpose(-2, -1) if flip else D


def dion_step(group, grads, X, states):
    """eta = lr sqrt(m / n) (the paper's shape factor), decoupled decay rho = 1 - lr wd."""
    m, n = group["matrix_shape"]
    lr = group["lr"]
    return lr * math.sqrt(m / n), 1 - lr * group["weight_decay"]
