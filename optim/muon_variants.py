"""Muon variants as links of a Chain (optim/rules.py): NorMuon and AdaMuon, and NorMuonH's
variance link (Track 3's result #8; its hyperball step is optim/rules.py's hyperball_apply).

Both keep Muon's momentum and orthogonalization (any optimizer.ns) and rescale the orthogonalized
update O with an Adam-style second moment of O itself, in a `post` link (after the transform, on
the whole gathered stack, with per-parameter state), then align the update's RMS to 0.2 (Adam's
typical update RMS), so the lr is the one a Moonlight-scaled Muon takes. The step size is
Muon's fixed_step with shape scale `none`: W <- (1 - lr wd) W - lr D.

NorMuon (Li, Liu, Liang, Chen, Zhao, arXiv 2510.05491, Algorithm 1), per matrix (m x n, rows the
output neurons):
    M_t = mu M_{t-1} + (1 - mu) G_t,   O_t = NS(M_t)
    v_t = mu2 v_{t-1} + (1 - mu2) mean_cols(O_t ⊙ O_t)            (one number per row)
    Ô_t = O_t / (sqrt(v_t) + eps)   (v_t broadcast along the row)
    W_t = W_{t-1} - lr wd W_{t-1} - lr (0.2 sqrt(m n) / ||Ô_t||_F) Ô_t
That is optimizer.scale_rule=paper (the default; every committed study ran it). The released
code (zichongli5/NorMuon, normuon.py) steps instead by
    W_t = W_{t-1} - lr wd W_{t-1} - lr sqrt(max(1, m/n)) (||O_t||_F / (||Ô_t||_F + eps)) Ô_t
(optimizer.scale_rule=released; its eps is 1e-10 in both places: optimizer.eps=1e-10): the
update keeps O's Frobenius norm (about sqrt(min(m, n)) for an orthogonalized O) and takes Keller
Jordan's Muon scale. At equal lr the paper's step is 0.2 sqrt(max(m, n)) / sqrt(max(1, m/n))
times the released one for an exactly orthogonal O (configs/optimizer/normuon.yaml measures it
on GPT-2's shapes), so the two rules want lrs about that factor apart.
AdaMuon (Si, Zhang, Shen, arXiv 2507.11005, Algorithm 1 of v2/v3), per matrix:
    M_t = mu M_{t-1} + (1 - mu) G_t,   O_t = NS(Sign(M_t))        (sign-stabilized)
    V_t = mu2 V_{t-1} + (1 - mu2) O_t ⊙ O_t                        (one number per entry)
    Ô_t = O_t / (sqrt(V_t) + eps)
    W_t = W_{t-1} - lr wd W_{t-1} - lr (0.2 sqrt(m n) / ||Ô_t||_F) Ô_t
The momentum is Muon's link (ema_momentum), so optimizer.nesterov applies to both: the update
uses (1 - mu) G + mu M instead of M (the released codes of both papers do; Algorithm 1 of each
writes plain M_t). No bias correction of v / V: the RMS alignment cancels it (up to eps), as
both papers note.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from optim.rules import _zeros, ema_momentum, shape_scale

UPDATE_RMS = 0.2        # both papers: match AdamW's typical update RMS


def sign_momentum(group, grads, states, out):
    """AdaMuon's precondition: Sign(M_t) of Muon's (Nesterov) EMA momentum."""
    ema_momentum(group, grads, states, out)
    torch._foreach_sign_(out)


def _float(D: Tensor) -> Tensor:
    """D in float32 at least (Newton-Schulz may return bf16); never modified in place."""
    return D.to(torch.promote_types(D.dtype, torch.float32))


def rms_aligned(U: Tensor) -> Tensor:
    """U 0.2 sqrt(m n) / ||U||_F per matrix of the (S, m, n) stack: every matrix's update RMS
    becomes 0.2 (a zero matrix stays zero)."""
    m, n = U.shape[-2:]
    norm = torch.linalg.vector_norm(U, dim=(-2, -1), keepdim=True)
    return U * (UPDATE_RMS * math.sqrt(m * n) / norm.clamp_min(1e-30))


def norm_kept(O: Tensor, U: Tensor, eps: float) -> Tensor:
    """NorMuon's released step (normuon.py's normuon_update): U ||O||_F / (||U||_F + eps) per
    matrix of the (S, m, n) stack, times sqrt(max(1, m / n)) (Keller Jordan's Muon scale)."""
    m, n = U.shape[-2:]
    ratio = (torch.linalg.vector_norm(O, dim=(-2, -1), keepdim=True)
             / (torch.linalg.vector_norm(U, dim=(-2, -1), keepdim=True) + eps))
    return U * (ratio * math.sqrt(max(1.0, m / n)))


def normuon_post(group, D: Tensor, states: list[dict], blocks: list[int]) -> Tensor:
    """NorMuon: per-row second moment v of O (state "row_second_moment", (k, m, 1) per
    parameter), Ô = O / (sqrt(v) + eps), then the step size of optimizer.scale_rule: paper (RMS
    aligned to 0.2) or released (||O||_F kept, times sqrt(max(1, m/n)); norm_kept)."""
    O = _float(D)
    row_sq = O.square().mean(dim=-1, keepdim=True)                              # (S, m, 1)
    v = _zeros(states, "row_second_moment", [(k, *row_sq.shape[1:]) for k in blocks], row_sq)
    torch._foreach_lerp_(v, list(row_sq.split(blocks)), 1 - group["mu2"])
    U = O / (torch.cat(v).sqrt() + group["eps"])
    # .get: a checkpoint saved before scale_rule existed resumes with its param groups
    released = group.get("scale_rule", "paper") == "released"
    return norm_kept(O, U, group["eps"]) if released else rms_aligned(U)


def adamuon_post(group, D: Tensor, states: list[dict], blocks: list[int]) -> Tensor:
    """AdaMuon: per-entry second moment V of O (state "update_second_moment", like the
    parameter), Ô = O / (sqrt(V) + eps), RMS aligned to 0.2."""
    O = _float(D)
    sq = O.square()
    V = _zeros(states, "update_second_moment", [(k, *sq.shape[1:]) for k in blocks], sq)
    torch._foreach_lerp_(V, list(sq.split(blocks)), 1 - group["mu2"])
    return rms_aligned(O / (torch.cat(V).sqrt() + group["eps"]))


def normuonh_post(group, D: Tensor, states: list[dict], blocks: list[int]) -> Tensor:
    """NorMuonH (Track 3's result #8, modded-nanogpt normuon_update): U = s O with s the shape
    scale (optimizer.scale, `original` there: sqrt(max(1, m/n))); an EMA v of the mean of U²
    along the long axis, one number per row where m >= n, else per column (state
    "short_axis_second_moment", (k, m, 1) or (k, 1, n) per parameter), v <- mu2 v + (1 - mu2)
    mean(U²); D' = U / sqrt(max(v, eps)). No bias correction, no RMS alignment: the hyperball
    step divides by ||D'||."""
    m, n = D.shape[-2:]
    U = _float(D) * shape_scale(group["scale"], m, n)
    v_new = U.square().mean(dim=-1 if m >= n else -2, keepdim=True)
    v = _zeros(states, "short_axis_second_moment", [(k, *v_new.shape[1:]) for k in blocks], v_new)
    torch._foreach_lerp_(v, list(v_new.split(blocks)), 1 - group["mu2"])
    return U * torch.cat(v).clamp_min(group["eps"]).rsqrt()
