"""Polar-factor iterations beyond Muon's fixed quintic: Polar Express and Gram Newton-Schulz.

Both iterate odd quintics X <- p_t(X) = a_t X + b_t X Xᵀ X + c_t (X Xᵀ)² X, i.e. each singular
value maps by s -> a_t s + b_t s³ + c_t s⁵, from X0 = G / (1.01 ||G||_F + eps), computed in
`dtype` on the short side (a tall stack is transposed, as newton_schulz does), and return the
approximate polar factor U Vᵀ in G's dtype. Both are batched over (..., m, n).

polar_express  (Amsel, Persson, Musco, Gower, "The Polar Express: Optimal Matrix Sign Methods and
    Their Application to the Muon Algorithm", arXiv 2505.16932): per-iteration coefficients,
    p_t = argmin over odd quintics of max_{x in [l_t, u_t]} |1 - p(x)| (minimax, Remez), with
    l_{t+1} = p_t(l_t), u_{t+1} = 2 - l_{t+1}, from [l_0, u_0] = [1e-3, 1]; the first
    iterations are "cushioned" (the interval's lower end raised to 0.024 u and p_t recentred so
    that p_t(l_t) + p_t(u_t) = 2), and every polynomial but the last is divided by a safety
    factor 1.01 in its argument (a / 1.01, b / 1.01³, c / 1.01⁵) so that rounding cannot push a
    singular value past the interval. POLAR_EXPRESS_COEFFS is the paper's published list
    (Algorithm 1, degree 5); tests/test_muon_family.py recomputes it from those equations in
    float64. Iterations past the list repeat its last polynomial (15/8, -10/8, 3/8), which is
    then numerically the limit of the sequence.

gram_newton_schulz  ("Gram Newton-Schulz", Dao AI Lab; as in DeepSpeed's Muon `ns_method=gram`):
    the same polynomials, rewritten on the Gram matrix of the short side. With X_t = Q_t X_0 and
    R_t = X_t X_tᵀ (m x m, m <= n), p_t(X_t) = h_t X_t with h_t = a I + b R_t + c R_t², so
        Q_{t+1} = h_t Q_t,    R_{t+1} = h_t R_t h_t    (h_t commutes with R_t),
    every product m x m; X_0's (m x n) products are two: R_0 = X_0 X_0ᵀ and the final Q X_0. In
    exact arithmetic it equals polar_express; for m << n it costs about half the FLOPs. In low
    precision R drifts from Q R_0 Qᵀ, so at the iterations in GRAM_RESTARTS the iteration
    restarts: X = Q X_0 is formed, R recomputed from it and Q reset to I. Square matrices gain
    nothing from the Gram form and take the plain iteration (the same polynomials).
"""
from __future__ import annotations

import torch
from torch import Tensor

# arXiv 2505.16932, Algorithm 1 (degree 5, l_0 = 1e-3): the published coefficients, before the
# safety factor. The last one is the fixed point the sequence reaches (to float64 precision).
POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
SAFETY = 1.01           # the paper's safety factor, on every polynomial but the last
POLAR_EXPRESS_COEFFS = tuple((a / SAFETY, b / SAFETY ** 3, c / SAFETY ** 5)
                             for a, b, c in POLAR_EXPRESS_RAW[:-1]) + POLAR_EXPRESS_RAW[-1:]
NORM_SAFETY = 1.01      # X0 = G / (1.01 ||G||_F + eps), as the paper's Algorithm 1
GRAM_RESTARTS = (2,)    # restart the Gram iteration before these iterations (0-based)


def coefficients(steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of `steps` iterations: the published list, then its last entry."""
    table = POLAR_EXPRESS_COEFFS
    return [table[min(t, len(table) - 1)] for t in range(steps)]


def _start(G: Tensor, eps: float, dtype: torch.dtype) -> tuple[Tensor, bool, torch.Size]:
    """X0 = G / (1.01 ||G||_F + eps) in `dtype`, wide (m <= n), with one batch dim."""
    tall = G.size(-2) > G.size(-1)
    X = G.to(dtype)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * NORM_SAFETY + eps)
    shape = X.shape
    return X.reshape(-1, *shape[-2:]), tall, shape


def _finish(X: Tensor, tall: bool, shape: torch.Size, like: Tensor,
            out_dtype: torch.dtype | None = None) -> Tensor:
    X = X.reshape(shape)
    return (X.mT if tall else X).to(out_dtype or like.dtype)


def polar_express(G: Tensor, steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16,
                  out_dtype: torch.dtype | None = None) -> Tensor:
    """Polar Express: X <- a_t X + (b_t A + c_t A²) X, A = X Xᵀ, with the published per-step
    coefficients (3 matmuls per step, as Muon's quintic). out_dtype: the result's (G's by
    default; `dtype` holds it exactly)."""
    X, tall, shape = _start(G, eps, dtype)
    for a, b, c in coefficients(steps):
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)          # b A + c A²
        X = torch.baddbmm(X, B, X, beta=a, alpha=1.0)        # a X + B X
    return _finish(X, tall, shape, G, out_dtype)


def gram_newton_schulz(G: Tensor, steps: int = 5, eps: float = 1e-7,
                       dtype: torch.dtype = torch.bfloat16,
                       restarts: tuple[int, ...] = GRAM_RESTARTS,
                       out_dtype: torch.dtype | None = None) -> Tensor:
    """Gram Newton-Schulz with Polar Express's coefficients (see the module doc): per step
    h = a I + b R + c R², Q <- h Q, R <- h R h on the short side's Gram; restarts (X = Q X0,
    R = X Xᵀ, Q = I) before the iterations in `restarts`."""
    if G.size(-2) == G.size(-1):
        return polar_express(G, steps, eps, dtype, out_dtype)
    X, tall, shape = _start(G, eps, dtype)
    R, Q = torch.bmm(X, X.mT), None                           # Q None: the identity
    for t, (a, b, c) in enumerate(coefficients(steps)):
        if t in restarts and Q is not None:
            X, Q = torch.bmm(Q, X), None
            R = torch.bmm(X, X.mT)
        h = torch.baddbmm(R, R, R, beta=b, alpha=c)          # b R + c R²
        h.diagonal(dim1=-2, dim2=-1).add_(a)                  # + a I
        Q = h if Q is None else torch.bmm(h, Q)
        if t + 1 < steps:                                     # the last R is never read
            R = torch.bmm(torch.bmm(h, R), h)
    if Q is not None:
        X = torch.bmm(Q, X)
    return _finish(X, tall, shape, G, out_dtype)


def orthogonalize(G: Tensor, method: str, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                  eps: float = 1e-7, out_dtype: torch.dtype | None = None) -> Tensor:
    """spectral.orthogonalize's branch for method in METHODS."""
    kernel = polar_express if method == "polar_express" else gram_newton_schulz
    return kernel(G, steps, eps=eps, dtype=dtype, out_dtype=out_dtype)


METHODS = ("polar_express", "gram")
