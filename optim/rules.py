"""Matrix update rules as short chains of links: the update math only (the engine that runs a
Chain on stacks of same-shape matrices, alone or across ranks, is optim/matrix.py).

The papers' unified view: momentum -> normalization -> spectral transform -> adaptive scale ->
shape scale -> weight decay. A `Chain` has three links:

  precondition  per parameter, elementwise, with state (torch._foreach ops): Muon's EMA
                momentum, heavy-ball momentum, or Adam's m̂ / (sqrt(v̂) + eps), written straight
                into the engine's (S, m, n) stack (no per-step temporaries, no torch.cat);
  transform     ONE batched call on the (S, m, n) stack of a shape group: Newton-Schulz, the SVD
                polar factor, U Σ^p Vᵀ, the top-r polar factor (kernels in optim/spectral.py).
                The matrix-sized work. It returns D in its result_dtype (bf16 for the
                iterations in bf16: what the distributed engine gathers); given the engine's
                Workspace (CPU) in the workspace's memory, valid until the group's next
                transform;
  step_size     per matrix or per column: lr, adaptive scale (NAMO, NAMO-D), shape scale and the
                weight-decay factor, as (eta, rho) for W <- rho W - eta D (apply_update).

An optional fourth link, `post` (default: none), rescales D after the transform with its own
state (NorMuon's per-row, AdaMuon's per-entry second moment of O; optim/muon_variants.py; Dion's
power iteration, optim/dion.py). Every link but `apply` is per matrix: the distributed engine
runs them on each rank's own matrices only, and `apply` on every rank for every matrix.
With optimizer.cautious_wd, apply_update decays only the entries where D and W agree in sign.
With optimizer.uw_floor (orthogonalizing chains only), uw_floor raises eta per matrix after the
step size, so that ||u||_F / ||W||_F is at least the floor (Track 3 result #9).
The last link, `apply` (default: apply_update, W <- rho W - eta D), is swapped by the hyperball
names (muonh, adamh, normuonh) for hyperball_apply: a step of size lr ||W|| along D / ||D||,
then W rescaled back to its norm before the step.

Links read their hyperparameters from the param group (group["momentum"], group["ns_steps"],
...: the fields of optim/config.py by name) every step, so a schedule that sets group["lr"]
takes effect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from optim import capability, polar, spectral
from optim.config import NS_DTYPES

TORCH_DTYPES = {name: getattr(torch, name) for name in NS_DTYPES}


def resolve_ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """optimizer.ns_dtype -> the Newton-Schulz matmul dtype: an explicit dtype as given; auto by
    what the device's matmuls are fast in (optim/capability.py: bf16 on CUDA and on CPUs with
    AVX512-BF16/AMX, float32 on other CPUs)."""
    if name == "auto":
        return capability.ns_auto(torch.device(device).type).dtype
    return TORCH_DTYPES[name]


def _zeros(states: list[dict], key: str, shapes, like: Tensor) -> list[Tensor]:
    """The per-parameter state tensor `key` of each parameter, created as zeros like `like`."""
    for s, shape in zip(states, shapes):
        if key not in s:
            s[key] = torch.zeros(shape, dtype=like.dtype, device=like.device)
    return [s[key] for s in states]


# ---- precondition: per-parameter elementwise links -------------------------------------------

# Each writes its result into `out`, the engine's views of the stack (one per parameter), with
# in-place ops on a copy: the same kernels as their out-of-place forms, so the same numbers.

def ema_momentum(group, grads, states, out):
    """Muon's B <- mu B + (1 - mu) G; with Nesterov the update uses (1 - mu) G + mu B."""
    mu = group["momentum"]
    bufs = _zeros(states, "momentum_buffer", [g.shape for g in grads], grads[0])
    torch._foreach_lerp_(bufs, grads, 1 - mu)
    if group["nesterov"]:
        torch._foreach_copy_(out, grads)
        torch._foreach_lerp_(out, bufs, mu)         # lerp(G, B, mu)
    else:
        torch._foreach_copy_(out, bufs)


def heavy_ball(group, grads, states, out):
    """mSGD's B <- mu B + G."""
    bufs = _zeros(states, "momentum_buffer", [g.shape for g in grads], grads[0])
    torch._foreach_mul_(bufs, group["momentum"])
    torch._foreach_add_(bufs, grads)
    torch._foreach_copy_(out, bufs)


def adam_normalize(group, grads, states, out):
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
    torch._foreach_copy_(out, m)
    torch._foreach_div_(out, denom)
    torch._foreach_div_(out, 1 - b1 ** t)


# ---- transform: one batched call per shape group (the kernels are optim/spectral.py's) -------

def orthogonalize_transform(group, X: Tensor, work=None) -> Tensor:
    """Muon's O: optimizer.ns's polar factor (optim/polar.py ORTHOGONALIZERS; by default the
    quintic Newton-Schulz on X / ||X||_F). The iterations return their own dtype
    (ns_result_dtype): the apply computes in W's dtype as if D were cast first, and the
    distributed engine gathers it as it is."""
    dtype = resolve_ns_dtype(group["ns_dtype"], X.device)
    return polar.orthogonalize(X, method=group["ns"], steps=group["ns_steps"], dtype=dtype,
                               eps=group["ns_eps"], work=work,
                               norm=group.get("ns_norm", "frobenius"), out_dtype=dtype)


def rank_limited_transform(group, X: Tensor, work=None) -> Tensor:
    """U_r V_rᵀ from the top r singular directions; rank None = the full polar factor."""
    r = group["rank"]
    return spectral.polar_svd(X) if r is None else spectral.top_rank_polar(X, r)


def spectral_power_transform(group, X: Tensor, work=None) -> Tensor:
    """Psi_p(X) = U Σ^p Vᵀ (arXiv 2602.04669); p = 1 is the identity. p = 0 is optimizer.ns's
    iteration (orthogonalize_transform), except the quintic: spectral_power's own p = 0, which
    starts from ||X||_F whatever optimizer.ns_norm says (as it always has). With ns=svd every p
    is the exact SVD's (its p = 0 maps singular values below a relative 1e-7 to zero)."""
    p = group["power"]
    if p == 1:
        return X
    iterative = polar.orthogonalizer(group["ns"]).iterative
    if p == 0 and iterative and group["ns"] != "newton_schulz":
        return orthogonalize_transform(group, X, work)
    return spectral.spectral_power(X, p, steps=group["coupled_steps"], ns_steps=group["ns_steps"],
                                   ns_eps=group["ns_eps"],
                                   method="iterative" if iterative else "svd",
                                   ns_dtype=resolve_ns_dtype(group["ns_dtype"], X.device),
                                   work=work,
                                   out_dtype=resolve_ns_dtype(group["ns_dtype"], X.device))


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
    # per parameter: stacking the gradients would copy them all for S numbers
    g_norm_sq = [torch.linalg.vector_norm(g.float(), dim=(1, 2)).square() for g in grads]
    v = _zeros(states, "grad_norm_sq", [(k,) for k in blocks], g_norm_sq[0])
    torch._foreach_lerp_(v, g_norm_sq, 1 - group["mu2"])
    m_norm = torch.linalg.vector_norm(X.float(), dim=(1, 2))
    alpha = (lr_t * m_norm / (torch.cat(v).sqrt() + group["eps"])).view(-1, 1, 1)
    eta = (alpha * shape_scale(group["scale"], *group["matrix_shape"])).clamp(max=1.0)
    if group["decay_style"] == "adaptive":
        return eta, 1 - group["weight_decay"] * alpha.clamp(max=1.0)
    return eta, 1 - lr_t * group["weight_decay"]


SQUARE_CHUNK = 8      # matrices col_sum_sq squares per op on CPU (a buffer of this many)
_SQUARES: dict = {}   # col_sum_sq's reused (c, m, n) buffer per (m, n, dtype), CPU only


def _square_buffer(c: int, m: int, n: int, dtype: torch.dtype) -> Tensor:
    buf = _SQUARES.get((m, n, dtype))
    if buf is None or len(buf) < c:
        buf = _SQUARES[(m, n, dtype)] = torch.empty(c, m, n, dtype=dtype)
    return buf[:c]


def _cpu_exact(X: Tensor) -> bool:
    """col_sum_sq's buffered path: a CPU stack already in float32 or wider."""
    return X.device.type == "cpu" and X.dtype == torch.promote_types(X.dtype, torch.float32)


def col_sum_sq(X: Tensor) -> Tensor:
    """sum_i X[:, i, j]² of a (k, m, n) stack as (k, n), in float32 at least. A sum of squares:
    torch vectorizes that column reduction, not vector_norm's (4-5x slower on CPU). Elsewhere
    (GPUs; bf16) the whole stack in one op (a float32 temporary of the stack: a few kernels
    where one per matrix launched ~250 a step). On CPU a float32/float64 stack squares
    SQUARE_CHUNK matrices per op into one buffer kept between calls (the same kernels and the
    same numbers, tested): a fresh temporary page-faults on every step (see
    spectral.Workspace), and on a busy machine every parallel op waits for its threads, so
    fewer, larger ops win (NAMO-D was 10% slower than Muon with one op per matrix)."""
    if not (_cpu_exact(X) and len(X)):
        return X.to(torch.promote_types(X.dtype, torch.float32)).square().sum(dim=1)
    m, n = X.shape[1:]
    return torch.cat([torch.mul(x, x, out=_square_buffer(len(x), m, n, X.dtype)).sum(dim=1)
                      for x in X.split(SQUARE_CHUNK)])


def col_sum_sq_each(tensors: list[Tensor]) -> list[Tensor]:
    """col_sum_sq of each (k_i, m, n) tensor, as a list of (k_i, n). On CPU (float32 or wider,
    one dtype) up to SQUARE_CHUNK matrices are first copied into the buffer together, then
    squared and summed by one op each: the same numbers as one by one, in a few ops."""
    if not all(t.dtype == tensors[0].dtype for t in tensors):
        return [col_sum_sq(t) for t in tensors]
    if not all(_cpu_exact(t) for t in tensors):   # GPUs: one stack, one reduction
        return list(col_sum_sq(torch.cat(tensors)).split([len(t) for t in tensors]))
    (m, n), out, i = tensors[0].shape[1:], [], 0
    while i < len(tensors):
        j, c = i + 1, len(tensors[i])
        while j < len(tensors) and c + len(tensors[j]) <= SQUARE_CHUNK:
            c, j = c + len(tensors[j]), j + 1
        if j == i + 1:   # one tensor: square it straight into the buffer
            out.append(col_sum_sq(tensors[i]))
        else:
            buf = torch.cat(tensors[i:j], out=_square_buffer(c, m, n, tensors[i].dtype))
            out += list(buf.mul_(buf).sum(dim=1).split([len(t) for t in tensors[i:j]]))
        i = j
    return out


def namo_d_step(group, grads, X, states):
    """NAMO-D: per column j, V_j <- mu2 V_j + (1 - mu2) ||G[:, j]||^2, d_j = ||M[:, j]|| /
    (sqrt(V_j) + eps) clamped to [c mean(d), mean(d) / c] (c = 0: not clamped, as the published
    class reads it); eta_j = min(d_j lr_t s, 1), rho_j = 1 - wd min(d_j lr_t, 1) (adaptive) or
    1 - lr_t wd (decoupled)."""
    lr_t, c = _namo_lr(group, states[0]["step"]), group["clamp_c"]
    col_norm_sq = col_sum_sq_each(grads)                                             # (k, n)
    V = _zeros(states, "col_grad_norm_sq", [s.shape for s in col_norm_sq], col_norm_sq[0])
    torch._foreach_lerp_(V, col_norm_sq, 1 - group["mu2"])
    d = col_sum_sq(X).sqrt() / (torch.cat(V).sqrt() + group["eps"])
    mean = d.mean(dim=1, keepdim=True)
    if c > 0:
        d = torch.minimum(torch.maximum(d, c * mean), mean / c)
    d = d.unsqueeze(1)                                                               # (S, 1, n)
    eta = (d * (lr_t * shape_scale(group["scale"], *group["matrix_shape"]))).clamp(max=1.0)
    if group["decay_style"] == "adaptive":
        return eta, 1 - group["weight_decay"] * (d * lr_t).clamp(max=1.0)
    return eta, 1 - lr_t * group["weight_decay"]


def uw_floor(group, W: list[Tensor], D: Tensor, eta):
    """Track 3 result #9's u/w floor (20260501_skylight001, Muon.step): with u = s D (D after
    the transform and any post link, s the shape scale; the lr not included) and W before this
    step's update and decay, per matrix: if ||u||_F / ||W||_F < floor, u is scaled by floor
    ||W||_F / ||u||_F (both norms clamped at 1e-8, as there), so eta becomes eta x that scale.
    The record takes ||s D|| of the product in D's dtype, here s ||D||: equal up to rounding.
    None (the default): eta as it is."""
    floor = group.get("uw_floor")
    if floor is None:
        return eta
    dtype = torch.promote_types(W[0].dtype, torch.float32)
    w = torch.cat([torch.linalg.vector_norm(x, dim=(1, 2), dtype=dtype) for x in W]).clamp_min(1e-8)
    u = (torch.linalg.vector_norm(D, dim=(1, 2), dtype=dtype)
         * shape_scale(group["scale"], *group["matrix_shape"])).clamp_min(1e-8)
    scale = torch.where(u / w < floor, floor * w / u, torch.ones_like(w))
    return eta * scale.view(-1, 1, 1)


# ---- the chain and the update it ends in ---------------------------------------------------

def never(group) -> bool:
    return False


def always(group) -> bool:
    return True


def input_dtype(group, X: Tensor) -> torch.dtype:
    return X.dtype


def ns_result_dtype(group, X: Tensor) -> torch.dtype:
    """optimizer.ns's dtype rule (optim/polar.py): the iterations compute and end in ns_dtype
    and return that (orthogonalize_transform): what the distributed engine gathers (half the
    bytes of float32 for bf16). The SVD's result is in X's dtype."""
    return polar.orthogonalizer(group["ns"]).result_dtype(
        resolve_ns_dtype(group["ns_dtype"], X.device), X.dtype)


def newton_schulz_dtype(chain: "Chain", group: dict, device) -> torch.dtype | None:
    """The dtype the chain's transform runs optimizer.ns's iteration in for this group; None
    when it runs none (ns=svd, muon_svd, the spectral powers p != 0: chain.orthogonalizes)."""
    if chain.orthogonalizes(group) and polar.orthogonalizer(group["ns"]).iterative:
        return resolve_ns_dtype(group["ns_dtype"], device)
    return None


def zeroth_power(group) -> bool:
    """p = 0: Psi_p is optimizer.ns's polar factor."""
    return group["power"] == 0


def spectral_identity(group) -> bool:
    """p = 1: Psi_p is the identity, so there is nothing for the ranks to share."""
    return group["power"] == 1


def spectral_result_dtype(group, X: Tensor) -> torch.dtype:
    return ns_result_dtype(group, X) if group["power"] == 0 else X.dtype


def hyperball_step(group, grads, X, states):
    """The hyperball names' step size: eta = lr, no decay (the norm of W is fixed by the step,
    so decay would only shrink the step; the records run without it) and no shape scale (the
    step divides D by its norm, so a constant scale of D cancels)."""
    return group["lr"], 1.0


@dataclass(frozen=True)
class Chain:
    precondition: Callable   # (group, grads, states, out: (k, m, n) views of X) -> None
    transform: Callable      # (group, X: (S, m, n), work: Workspace | None) -> D: (S, m, n)
    step_size: Callable      # (group, grads, X, states) -> (eta, rho), floats or (S, 1, 1 | n)
                             # tensors; must take zero matrices (the distributed engine
                             # learns its form so, MatrixOptimizer._forms)
    identity: Callable = never              # (group) -> the transform returns X as it is
    orthogonalizes: Callable = never        # (group) -> the transform is optimizer.ns's polar
                                            # factor (newton_schulz_dtype reports its dtype)
    result_dtype: Callable = input_dtype    # (group, X) -> a dtype holding D exactly
    post: Callable | None = None            # (group, D, states, blocks) -> D' after the transform
    apply: Callable | None = None           # (params, D, eta, rho, blocks, work, cautious) -> None;
                                            # None: apply_update (the engine's). D: a stack or
                                            # its pieces per parameter (rules.pieces)


def post_transform(chain: Chain, group: dict, D: Tensor, states: list[dict],
                   blocks: list[int]) -> Tensor:
    """The chain's post link on the transform's result D (blocks: matrices per parameter), or
    D itself for chains without one (all but NorMuon and AdaMuon: their numbers unchanged)."""
    return D if chain.post is None else chain.post(group, D, states, blocks)


def pieces(D, blocks: list[int]) -> list[Tensor]:
    """D per parameter: a (S, m, n) stack split by blocks, or already a list of (k, m, n)
    pieces (the distributed engine's, views of its gathered buffer)."""
    return list(D.split(blocks)) if isinstance(D, Tensor) else list(D)


def cautious_decay(params: list[Tensor], D, rho, blocks: list[int]) -> None:
    """Cautious weight decay (arXiv 2510.12402, Algorithm 1: x <- x - eta (u + lambda
    I(u x >= 0) x)): W <- W - (1 - rho) I(D W >= 0) W entrywise, i.e. the decoupled decay of
    W <- rho W only where the update D (subtracted with eta > 0) and W agree in sign (a zero
    counts as agreeing, as the paper's >= 0); elsewhere W keeps its value."""
    if not isinstance(rho, Tensor) and rho == 1.0:
        return
    decays = (list((1 - rho).split(blocks)) if isinstance(rho, Tensor)
              else [1 - rho] * len(params))
    for w, d, decay in zip(params, pieces(D, blocks), decays):
        agree = torch.sign(d).to(w.dtype) * torch.sign(w) >= 0
        w.sub_(torch.where(agree, w, 0) * decay)


def scaled(D, eta: Tensor, blocks: list[int], work: spectral.Workspace | None) -> list[Tensor]:
    """eta D per parameter (eta (S, 1, 1) or (S, 1, n)), in a reused buffer with `work`. D as a
    list of pieces: one product per piece, the same elementwise products as on the stack."""
    if isinstance(D, Tensor):
        shape = torch.broadcast_shapes(D.shape, eta.shape)
        out = (None if work is None else
               work.get("update", shape, torch.promote_types(D.dtype, eta.dtype), D.device))
        return list(torch.mul(D, eta, out=out).split(blocks))
    D, etas = list(D), list(eta.split(blocks))
    if work is None:
        return [d * e for d, e in zip(D, etas)]
    shape = (sum(blocks), *torch.broadcast_shapes(D[0].shape[1:], eta.shape[1:]))
    buf = work.get("update", shape, torch.promote_types(D[0].dtype, eta.dtype), D[0].device)
    return [torch.mul(d, e, out=o) for d, e, o in zip(D, etas, buf.split(blocks))]


def apply_update(params: list[Tensor], D, eta, rho, blocks: list[int],
                 work: spectral.Workspace | None = None, cautious: bool = False) -> None:
    """W <- rho W - eta D for every matrix; eta and rho broadcast over (S, m, n). D: the
    (S, m, n) stack or its pieces per parameter (see pieces). D may be in a narrower dtype than
    W (Newton-Schulz's bf16): every op computes in W's dtype, exactly as if D were cast first.
    With `work`, eta D goes to a reused buffer. cautious: the decay only where D and W agree in
    sign (cautious_decay)."""
    if cautious:
        cautious_decay(params, D, rho, blocks)
    elif isinstance(rho, Tensor):
        torch._foreach_mul_(params, list(rho.split(blocks)))
    elif rho != 1.0:
        torch._foreach_mul_(params, rho)
    if isinstance(eta, Tensor):
        torch._foreach_sub_(params, scaled(D, eta, blocks, work))
    else:
        torch._foreach_add_(params, pieces(D, blocks), alpha=-eta)


HYPERBALL_EPS = 1e-10   # the records' clamp on ||D|| and on the norm after the step


def hyperball_apply(params: list[Tensor], D, eta, rho, blocks: list[int],
                    work: spectral.Workspace | None = None, cautious: bool = False) -> None:
    """The hyperball step of Track 3's results #4, #5, #8 (modded-nanogpt
    scale_invariant_update_), per matrix of the stack, in W's dtype:
        W' = W - ((eta D) ||W||) / max(||D||, 1e-10),   W <- (W' / max(||W'||, 1e-10)) ||W||
    (Frobenius norms, in the records' order of operations): a step of size eta ||W|| along
    D / ||D||, then back onto the sphere of W's radius, so ||W|| never changes (a zero matrix
    stays zero). rho is 1 (hyperball_step; the builder refuses weight decay); cautious unused."""
    for w, d in zip(params, pieces(D, blocks)):
        d = d.to(w.dtype)
        p_norm = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
        u_norm = torch.linalg.vector_norm(d, dim=(1, 2), keepdim=True).clamp(min=HYPERBALL_EPS)
        new = w - eta * d * p_norm / u_norm
        new_norm = torch.linalg.vector_norm(new, dim=(1, 2), keepdim=True).clamp(min=HYPERBALL_EPS)
        w.copy_(new / new_norm * p_norm)
