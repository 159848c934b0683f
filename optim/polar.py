"""The polar factor U Vᵀ as optimizer.ns names it: this module owns the table ORTHOGONALIZERS
(one entry per name: its iteration kernel, coefficient schedule, starting scale and dtype rule),
which every place that picks an orthogonalizer looks up (orthogonalize; optim/rules.py's
transforms and dtype rules). The kernels run in optim/spectral.py's polar_iteration: X0 = G /
(safety ||G||_F + eps) in ns_dtype on the short side (a tall stack transposed), then either
the one odd-polynomial kernel spectral.odd_polynomial, X <- a_t X + b_t X Xᵀ X + c_t (X Xᵀ)² X
(each singular value s -> a_t s + b_t s³ + c_t s⁵), or Gram Newton-Schulz (gram_iteration).

newton_schulz  Muon's quintic: spectral.NS_COEFFS every step, X0 = G / (||G||_F + eps) or
    optimizer.ns_norm's Schatten-4 start; in the engine's Workspace on CPU.
cubic  Track 3's (2, -1.5, 0.5) (spectral.CUBIC_COEFFS), otherwise as newton_schulz.
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
    then numerically the limit of the sequence. X0 = G / (1.01 ||G||_F + eps), as the paper's
    Algorithm 1; optimizer.ns_norm and the Workspace are not used.
gram  ("Gram Newton-Schulz", Dao AI Lab; as in DeepSpeed's Muon `ns_method=gram`):
    Polar Express's polynomials and start, rewritten on the Gram matrix of the short side. With
    X_t = Q_t X_0 and R_t = X_t X_tᵀ (m x m, m <= n), p_t(X_t) = h_t X_t with
    h_t = a I + b R_t + c R_t², so
        Q_{t+1} = h_t Q_t,    R_{t+1} = h_t R_t h_t    (h_t commutes with R_t),
    every product m x m; X_0's (m x n) products are two: R_0 = X_0 X_0ᵀ and the final Q X_0. In
    exact arithmetic it equals polar_express; for m << n it costs about half the FLOPs. In low
    precision R drifts from Q R_0 Qᵀ, so at the iterations in GRAM_RESTARTS the iteration
    restarts: X = Q X_0 is formed, R recomputed from it and Q reset to I. Square matrices gain
    nothing from the Gram form and take the plain iteration (the same polynomials).
svd  the exact U Vᵀ by SVD (spectral.polar_svd).

The dtype rule: every iteration computes in optimizer.ns_dtype and returns its result in it
(what the distributed engine gathers); the SVD computes in float32 at least and returns the
input's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from configs.errors import UserError
from optim import spectral

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


def repeated(coeffs: tuple) -> Callable[[int], list]:
    """The schedule of a fixed-coefficient iteration: `coeffs` at every step."""
    return lambda steps: [coeffs] * steps


def gram_iteration(X: Tensor, schedule, restarts: tuple[int, ...] = GRAM_RESTARTS) -> Tensor:
    """Gram Newton-Schulz on a wide (B, m, n) stack (see the module doc): per (a, b, c) of
    `schedule`, h = a I + b R + c R², Q <- h Q, R <- h R h on the short side's Gram; restarts
    (X = Q X0, R = X Xᵀ, Q = I) before the iterations in `restarts`. Square: odd_polynomial."""
    if X.size(-2) == X.size(-1):
        return spectral.odd_polynomial(X, schedule)
    R, Q = torch.bmm(X, X.mT), None                           # Q None: the identity
    for t, (a, b, c) in enumerate(schedule):
        if t in restarts and Q is not None:
            X, Q = torch.bmm(Q, X), None
            R = torch.bmm(X, X.mT)
        h = torch.baddbmm(R, R, R, beta=b, alpha=c)          # b R + c R²
        h.diagonal(dim1=-2, dim2=-1).add_(a)                  # + a I
        Q = h if Q is None else torch.bmm(h, Q)
        if t + 1 < len(schedule):                             # the last R is never read
            R = torch.bmm(torch.bmm(h, R), h)
    if Q is not None:
        X = torch.bmm(Q, X)
    return X


@dataclass(frozen=True)
class Orthogonalizer:
    """One optimizer.ns: an iteration (kernel, schedule, starting scale) or the exact SVD."""
    kernel: Callable | None              # (X0: (B, m, n), m <= n; schedule) -> X; None: the SVD
    schedule: Callable | None = None     # steps -> [(a, b, c)]: each iteration's coefficients
    safety: float = 1.0                  # X0 = G / (safety ||G||_F + eps)
    newton_schulz_options: bool = False  # takes optimizer.ns_norm and the engine's Workspace

    @property
    def iterative(self) -> bool:
        """Matmuls in optimizer.ns_dtype (the SVD: none)."""
        return self.kernel is not None

    def result_dtype(self, ns_dtype: torch.dtype, input_dtype: torch.dtype) -> torch.dtype:
        """The dtype rule: an iteration's result is in ns_dtype, the SVD's in its input's."""
        return ns_dtype if self.iterative else input_dtype

    def __call__(self, G: Tensor, steps: int, eps: float, dtype: torch.dtype,
                 work: spectral.Workspace | None = None, norm: str = "frobenius",
                 out_dtype: torch.dtype | None = None) -> Tensor:
        if self.kernel is None:
            return spectral.polar_svd(G)
        if not self.newton_schulz_options:
            norm, work = "frobenius", None
        return spectral.polar_iteration(G, self.kernel, self.schedule(steps), eps, dtype, norm,
                                        self.safety, work, out_dtype)


# Keyed by optimizer.ns's accepted names (optim/config.py CHOICES["ns"]; a test checks they match).
ORTHOGONALIZERS = {
    "newton_schulz": Orthogonalizer(spectral.odd_polynomial, repeated(spectral.NS_COEFFS),
                                    newton_schulz_options=True),
    "cubic": Orthogonalizer(spectral.odd_polynomial, repeated(spectral.CUBIC_COEFFS),
                            newton_schulz_options=True),
    "polar_express": Orthogonalizer(spectral.odd_polynomial, coefficients, NORM_SAFETY),
    "gram": Orthogonalizer(gram_iteration, coefficients, NORM_SAFETY),
    "svd": Orthogonalizer(None),
}


def orthogonalizer(method: str) -> Orthogonalizer:
    """ORTHOGONALIZERS[method], or a UserError naming the choices."""
    if method not in ORTHOGONALIZERS:
        raise UserError(f"unknown orthogonalization {method!r}: set optimizer.ns to one of "
                        f"{', '.join(ORTHOGONALIZERS)}")
    return ORTHOGONALIZERS[method]


def orthogonalize(G: Tensor, method: str = "newton_schulz", steps: int = 5,
                  dtype: torch.dtype = torch.bfloat16, eps: float = 1e-7,
                  work: spectral.Workspace | None = None, norm: str = "frobenius",
                  out_dtype: torch.dtype | None = None) -> Tensor:
    """The polar factor of a (..., m, n) stack G by optimizer.ns=`method`: `steps` iterations
    in `dtype` from eps, in `work` (Newton-Schulz; see spectral.newton_schulz) from `norm`'s
    start (Newton-Schulz), the result in out_dtype (G's by default; `dtype` holds it exactly),
    or the exact SVD's in G's dtype."""
    return orthogonalizer(method)(G, steps, eps, dtype, work, norm, out_dtype)
