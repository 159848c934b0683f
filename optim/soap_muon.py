"""SOAP-Muon's precondition link (a Chain link, optim/rules.py): SOAP's rotation and Adam-style
normalization of Muon's momentum, before the Newton-Schulz transform (Track 3 result #44,
modded-nanogpt records/track_3_optimization/results/20260609_soap_f1_auxb2_clean; the
SOAP-Muon note of Vyas et al., https://nikhilvyas.github.io/SOAP_Muon.pdf).

Per matrix (m x n, gradient G_t), with Muon's Nesterov momentum U_t = lerp(G_t, M_t, mu):
    P_t = Q_Lᵀ U_t Q_R                                   (rotated into the eigenbases)
    V_t = b2 V_{t-1} + (1 - b2) P_t ⊙ P_t                  (b2 = optimizer.mu2)
    S_t = Q_L (P_t / max(sqrt(V_t), eps)) Q_Rᵀ            (eps = optimizer.soap_eps)
    X_t = S_t ||U_t||_S4 / ||S_t||_S4                    (the momentum's scale, S4 = ||X Xᵀ||_F^½)
then the statistics, after their use (the record's order):
    L <- lerp(L, G Gᵀ, 1 - shampoo_beta),  R <- lerp(R, Gᵀ G, 1 - shampoo_beta)
    the first step: Q_L, Q_R = eigenvectors of L, R (eigenvalues descending), and the step
        itself is Muon's (no basis yet: X_1 = U_1);
    every `precondition_frequency` steps after: SOAP's refresh, one power step: the columns of
        Q sorted by diag(Qᵀ L Q) descending (V's rows / columns permuted alike), Q = qr(L Q).
State per parameter (k matrices): momentum_buffer, exp_avg_sq (k, m, n), row_gg, q_row
(k, m, m), col_gg, q_col (k, n, n), all with the matrices as rows (ZeRO-1 shards them).
"""
from __future__ import annotations

import torch
from torch import Tensor

from optim.rules import _zeros, ema_momentum


def schatten4(X: Tensor, eps: float) -> Tensor:
    """max(||X Xᵀ||_F^(1/2), eps) per matrix of a (k, m, n) stack (the record's
    gram_frobenius_norm_estimate), as (k, 1, 1)."""
    gram = X.mT @ X if X.size(-2) > X.size(-1) else X @ X.mT
    return gram.norm(dim=(-2, -1), keepdim=True).sqrt().clamp_min(eps)


def eigenbasis(mat: Tensor) -> Tensor:
    """Eigenvectors of symmetric (k, d, d) matrices as columns, eigenvalues descending."""
    eye = torch.eye(mat.size(-1), dtype=mat.dtype, device=mat.device)
    return torch.linalg.eigh(mat + 1e-30 * eye).eigenvectors.flip(-1)


def _sorted_columns(gg: Tensor, q: Tensor) -> Tensor:
    """The order of q's columns by their Rayleigh quotients diag(qᵀ gg q), descending."""
    return torch.argsort(((gg @ q) * q).sum(dim=-2), dim=-1, descending=True)


def refresh_bases(row_gg, col_gg, q_row, q_col, exp_avg_sq):
    """SOAP's basis refresh (one power-iteration step, columns re-sorted first); returns the new
    q_row, q_col and exp_avg_sq permuted to follow the sorted columns."""
    k, m, n = exp_avg_sq.shape
    order = _sorted_columns(row_gg, q_row)                                          # (k, m)
    q_row = q_row.gather(2, order.unsqueeze(1).expand(k, m, m))
    exp_avg_sq = exp_avg_sq.gather(1, order.unsqueeze(2).expand(k, m, n))
    q_row = torch.linalg.qr(row_gg @ q_row).Q
    order = _sorted_columns(col_gg, q_col)                                          # (k, n)
    q_col = q_col.gather(2, order.unsqueeze(1).expand(k, n, n))
    exp_avg_sq = exp_avg_sq.gather(2, order.unsqueeze(1).expand(k, m, n))
    q_col = torch.linalg.qr(col_gg @ q_col).Q
    return q_row, q_col, exp_avg_sq


def _float(X: Tensor) -> Tensor:
    """X in float32 at least (the record's .float(); float64 stays float64)."""
    return X.to(torch.promote_types(X.dtype, torch.float32))


def soap_momentum(group, grads, states, out):
    """Muon's (Nesterov) momentum, rotated, normalized and rotated back by SOAP (module doc);
    then the statistics take this step's gradient."""
    ema_momentum(group, grads, states, out)
    b2, eps, beta = group["mu2"], group["soap_eps"], group["shampoo_beta"]
    t, freq = states[0]["step"], group["precondition_frequency"]
    for g, s, x in zip(grads, states, out):
        k, m, n = g.shape
        if "q_row" in s:
            U = _float(x)
            P = s["q_row"].mT @ U @ s["q_col"]
            s["exp_avg_sq"].mul_(b2).add_(P.square(), alpha=1 - b2)   # the record's ops
            S = s["q_row"] @ (P / s["exp_avg_sq"].clamp_min(eps * eps).sqrt()) @ s["q_col"].mT
            S.mul_(schatten4(U, eps) / schatten4(S, eps))
            x.copy_(S)
        G = _float(g)
        row = _zeros([s], "row_gg", [(k, m, m)], G)[0]
        col = _zeros([s], "col_gg", [(k, n, n)], G)[0]
        row.lerp_(G @ G.mT, 1 - beta)
        col.lerp_(G.mT @ G, 1 - beta)
        if "q_row" not in s:
            s["q_row"], s["q_col"] = eigenbasis(row), eigenbasis(col)
            s["exp_avg_sq"] = torch.zeros(k, m, n, dtype=G.dtype, device=G.device)
        elif (t - 1) % freq == 0:   # the record's soap_step = t - 1 > 0 here
            s["q_row"], s["q_col"], s["exp_avg_sq"] = refresh_bases(
                row, col, s["q_row"], s["q_col"], s["exp_avg_sq"])
