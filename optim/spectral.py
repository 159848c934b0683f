"""Spectral kernels for the matrix optimizers: polar factors and spectral powers, batched.

Every function takes a stack of matrices (..., m, n) and works on all of them in one call
(the caller stacks same-shape parameters); nothing loops over the batch in Python, and the
iterations have no data-dependent control flow, so they stay torch.compile friendly. On CPU the
engine passes Newton-Schulz a Workspace of buffers kept between steps (batched bmm beats a loop
of mm there too, but allocating fresh tensors each step does not pay; measured in
scripts/bench_optim.py).

For X = U Σ Vᵀ (thin SVD) the family is Psi_p(X) = U Σ^p Vᵀ (arXiv 2602.04669):
p = 1 is X itself, p = 0 is the polar factor U Vᵀ (Muon's orthogonalization), and
p = 1/2, 1/4 lie in between. The iterative paths use matmuls only (no SVD / eigh); the SVD
paths are the exact references.

Every matmul polar iteration runs polar_iteration: X0 = G / ||G|| on the short side, then one
kernel (odd_polynomial: X <- a X + (b A + c A²) X, with a coefficient schedule; or Gram
Newton-Schulz's). Which iteration optimizer.ns names, with which coefficients and starting
scale, is optim/polar.py's table ORTHOGONALIZERS.
"""
from contextlib import contextmanager

import torch
from torch import Tensor

from configs.errors import UserError
from optim.config import POWERS          # the spectral family's p: 1, 1/2, 1/4, 0

NS_COEFFS = (3.4445, -4.7750, 2.0315)    # Keller Jordan's quintic: fast rather than exact
# Track 3's "cubic" (modded-nanogpt train_gpt_simple.py): in Muon's a X + b (X Xᵀ) X + c (X Xᵀ)² X
# form each singular value goes s -> 2 s - 1.5 s³ + 0.5 s⁵, which fixes 1 with zero slope
# (converges to exactly 1, slowly from small s); their baseline runs 12 steps. optimizer.ns=cubic.
CUBIC_COEFFS = (2.0, -1.5, 0.5)
# Newton-Schulz's starting scale: X / (||X||_F + eps), or X / max(||X Xᵀ||_F^(1/2), eps) (the
# Schatten-4 norm, tighter than Frobenius and still >= the top singular value; Track 3's
# SOAP-Muon record #44 starts from it). optimizer.ns_norm.
NS_NORMS = ("frobenius", "schatten4")


def _schatten4(X: Tensor, eps: float) -> Tensor:
    """max(||X Xᵀ||_F^(1/2), eps) per matrix of a (..., m, n) stack, on the smaller Gram."""
    gram = X.mT @ X if X.size(-2) > X.size(-1) else X @ X.mT
    return gram.norm(dim=(-2, -1), keepdim=True).sqrt().clamp_min(eps)


class Workspace:
    """Buffers reused from call to call, by name. On CPU every fresh large tensor costs a page
    fault per 4 KiB page on first touch (torch has no caching allocator there): for GPT-2
    small's matrices that was a quarter of the Newton-Schulz time. The matrix engine keeps one
    per shape group; a buffer is replaced when its shape, dtype or device changes."""

    def __init__(self):
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape, dtype: torch.dtype, device) -> Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return buf


def odd_polynomial(X: Tensor, schedule, work: Workspace | None = None,
                   right: bool = False) -> Tensor:
    """The one odd-polynomial kernel of every optimizer.ns iteration (Newton-Schulz's fixed
    coefficients, Polar Express's per-step ones: optim/polar.py): for each (a, b, c) of
    `schedule`, X <- a X + (b A + c A²) X with A = X Xᵀ, i.e. each singular value maps by
    s -> a s + b s³ + c s⁵. X: a (B, m, n) stack, m <= n (the small Gram). right: a tall stack
    as it is, A = XᵀX and X <- a X + X (b A + c A²) (the same map, with no transposed copy).
    work: X is its buffer ns_x, and the products go to its buffers (X ping-pongs with ns_y,
    nothing allocated); the result is one of them."""
    if work is not None:
        r = min(X.shape[-2:])
        Y = work.get("ns_y", X.shape, X.dtype, X.device)
        A = work.get("ns_a", (len(X), r, r), X.dtype, X.device)
        B = work.get("ns_b", (len(X), r, r), X.dtype, X.device)
    else:
        Y = A = B = None                  # fresh tensors each step
    for a, b, c in schedule:
        gram = torch.bmm(X.mT, X, out=A) if right else torch.bmm(X, X.mT, out=A)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c, out=B)       # b A + c A²
        if right:
            new = torch.baddbmm(X, X, poly, beta=a, alpha=1.0, out=Y)         # a X + X B
        else:
            new = torch.baddbmm(X, poly, X, beta=a, alpha=1.0, out=Y)         # a X + B X
        X, Y = new, (X if work is not None else None)
    return X


def _start_scale(X: Tensor, eps: float, norm: str, safety: float) -> Tensor:
    """The divisor of X0 = X / scale: safety ||X||_F + eps, or the Schatten-4 norm."""
    if norm == "schatten4":
        return _schatten4(X, eps)
    frobenius = X.norm(dim=(-2, -1), keepdim=True)
    return (frobenius if safety == 1.0 else frobenius * safety) + eps


def polar_iteration(G: Tensor, kernel, schedule, eps: float, dtype: torch.dtype,
                    norm: str = "frobenius", safety: float = 1.0,
                    work: Workspace | None = None,
                    out_dtype: torch.dtype | None = None) -> Tensor:
    """An iterative polar factor of a (..., m, n) stack: kernel(X0, schedule) on X0 = G /
    (safety ||G||_F + eps) (norm="schatten4": G / max(||G Gᵀ||_F^(1/2), eps)) in `dtype`, on the
    short side (a tall stack transposed), with one batch dim. kernel: odd_polynomial, or Gram
    Newton-Schulz's (optim/polar.py). The result in out_dtype (G's by default). With `work`
    (odd_polynomial only): every buffer comes from it, a tall stack is not transposed, and the
    result, in `dtype`, is one of the buffers: valid until the next call on the same workspace."""
    if work is not None:
        return _odd_polynomial_in(work, G, schedule, eps, dtype, norm)
    tall = G.size(-2) > G.size(-1)
    X = G.to(dtype)
    if tall:
        X = X.mT
    X = X / _start_scale(X, eps, norm, safety)
    shape = X.shape
    X = kernel(X.reshape(-1, *shape[-2:]), schedule)   # baddbmm wants exactly one batch dim
    X = X.reshape(shape)
    if tall:
        X = X.mT
    return X.to(out_dtype or G.dtype)


def _odd_polynomial_in(work: Workspace, G: Tensor, schedule, eps: float, dtype: torch.dtype,
                       norm: str = "frobenius") -> Tensor:
    """polar_iteration's odd polynomial in `work`'s buffers. A tall stack is not transposed
    (that would copy it, twice): its Gram is XᵀX, which bmm reads in place."""
    shape, (m, n), device = G.shape, G.shape[-2:], G.device
    G = G.reshape(-1, m, n)
    X = work.get("ns_x", G.shape, dtype, device)
    if norm == "schatten4":    # the Gram of the cast values, as without a workspace
        X.copy_(G)
        X.div_(_schatten4(X, eps))
    elif G.dtype == dtype:     # one pass: X = G / (||G|| + eps)
        torch.div(G, G.norm(dim=(-2, -1), keepdim=True) + eps, out=X)
    else:                      # the norm of the cast values, as without a workspace
        X.copy_(G)
        X.div_(X.norm(dim=(-2, -1), keepdim=True) + eps)
    return odd_polynomial(X, schedule, work, right=m > n).view(shape)


def newton_schulz(G: Tensor, steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16, work: Workspace | None = None,
                  coeffs: tuple = NS_COEFFS, norm: str = "frobenius",
                  out_dtype: torch.dtype | None = None) -> Tensor:
    """Approximate U Vᵀ by Muon's quintic Newton-Schulz iteration.

    X0 = G / (||G||_F + eps), then `steps` times X <- a X + (b A + c A²) X with A = X Xᵀ
    (odd_polynomial), i.e. each singular value maps by s -> a s + b s³ + c s⁵. The
    coefficients trade exactness for speed: after 5 steps the singular values land in a band
    around 1 (about [0.7, 1.2]) instead of at 1. Computed in `dtype`. Without `work` the result
    is a new tensor in G's dtype; with `work` every buffer comes from it (nothing allocated per
    call) and the result, in `dtype`, is one of them: valid until the next call on the same
    workspace. `coeffs`: (a, b, c), the quintic by default (CUBIC_COEFFS: the cubic).
    norm="schatten4": X0 = G / max(||G Gᵀ||_F^(1/2), eps). out_dtype (without `work`): the
    result's dtype, G's by default; the matrix engine asks for `dtype` itself, which holds the
    result exactly (no cast back to float32 and down again for the all-gather).
    """
    return polar_iteration(G, odd_polynomial, [coeffs] * steps, eps, dtype, norm, work=work,
                           out_dtype=out_dtype)


def _svd(G: Tensor):
    """Thin SVD in float32 at least (float64 stays float64)."""
    return torch.linalg.svd(G.to(torch.promote_types(G.dtype, torch.float32)),
                            full_matrices=False)


def polar_svd(G: Tensor) -> Tensor:
    """Exact polar factor U Vᵀ of G = U Σ Vᵀ, via SVD, returned in G's dtype."""
    U, _, Vh = _svd(G)
    return (U @ Vh).to(G.dtype)


def top_rank_polar(X: Tensor, rank: int) -> Tensor:
    """U_r V_rᵀ from the top-`rank` singular directions: a rank-limited orthogonal update."""
    k = min(X.shape[-2:])
    if not 1 <= rank <= k:
        raise UserError(f"rank={rank} out of range for {X.shape[-2]}x{X.shape[-1]} matrices: "
                        f"set optimizer.rank to an integer in [1, {k}] (or null for full rank)")
    U, _, Vh = _svd(X)
    return (U[..., :, :rank] @ Vh[..., :rank, :]).to(X.dtype)


@contextmanager
def full_fp32_matmuls(device: torch.device):
    """float32 matmuls at full precision on CUDA (TF32 off) for the duration: the coupled
    iterations square their errors and drift in TF32's 10-bit mantissa."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def inverse_root_coupled(A: Tensor, r: int, steps: int = 15, eps: float = 1e-6) -> Tensor:
    """A^(-1/r) of symmetric PSD matrices by the coupled Newton iteration (matmuls only).

    Guo & Higham (2006), as in Shampoo: with M0 = z A, X0 = z^(1/r) I,
        T = ((r + 1) I - M) / r,   X <- X T,   M <- T^r M,
    M -> I and X -> A^(-1/r). Per eigenvalue m <- m ((r+1-m)/r)^r, which converges to 1 for
    m in (0, r+1); z = (r+1) / (2 ||A||_F) puts the spectrum in (0, (r+1)/2]. A ridge
    eps ||A||_F I keeps rounding from making eigenvalues negative (those would diverge);
    eigenvalues near or below it are not converged in `steps` and get a bounded factor
    instead of their huge inverse root, so a zero matrix gives a finite result.
    Computed in float32 at least, returned in A's dtype.
    """
    in_dtype, dtype = A.dtype, torch.promote_types(A.dtype, torch.float32)
    I = torch.eye(A.size(-1), dtype=dtype, device=A.device)
    A = A.to(dtype)
    norm = A.norm(dim=(-2, -1), keepdim=True)
    A = A + (eps * norm) * I
    z = (r + 1) / (2 * (1 + eps) * norm.clamp_min(1e-30))      # floor: zero A -> finite X
    M = z * A
    X = z.pow(1 / r) * I
    with full_fp32_matmuls(A.device):
        for _ in range(steps):
            T = ((r + 1) * I - M) / r
            X = X @ T
            M = torch.linalg.matrix_power(T, r) @ M
    return X.to(in_dtype)


def inverse_fourth_root_coupled(A: Tensor, steps: int = 15, eps: float = 1e-6) -> Tensor:
    """A^(-1/4) of symmetric PSD matrices; see inverse_root_coupled."""
    return inverse_root_coupled(A, 4, steps, eps)


def _square_root_power(X: Tensor, steps: int) -> Tensor:
    """Psi_1/2(X) = U Σ^(1/2) Vᵀ = X (XᵀX)^(-1/4) = (XXᵀ)^(-1/4) X, on the smaller Gram."""
    if X.size(-1) <= X.size(-2):
        return X @ inverse_fourth_root_coupled(X.mT @ X, steps)
    return inverse_fourth_root_coupled(X @ X.mT, steps) @ X


def spectral_power(X: Tensor, p: float, steps: int = 15, ns_steps: int = 5,
                   method: str = "iterative", ns_dtype: torch.dtype = torch.bfloat16,
                   ns_eps: float = 1e-7, work: Workspace | None = None,
                   out_dtype: torch.dtype | None = None) -> Tensor:
    """Psi_p(X) = U Σ^p Vᵀ for p in {1, 1/2, 1/4, 0}.

    method="iterative": p = 0 by newton_schulz (in ns_dtype, with ns_eps, in `work` if given:
    then the result is in ns_dtype, see newton_schulz); p = 1/2 by the
    coupled inverse fourth root on the smaller Gram; p = 1/4 as Psi_1/2(Psi_1/2(X)). Since
    Psi_p(cX) = c^p Psi_p(X), X is first divided by its Frobenius norm (so the Gram neither
    under- nor overflows) and the result scaled back; out_dtype: p = 0's result dtype (see
    newton_schulz). method="svd": the exact reference from the SVD; there singular values at
    or below a relative 1e-7 count as zero, so p = 0 maps a zero matrix to zero, as NS does.
    """
    if p not in POWERS:
        raise UserError(f"spectral power p={p} not in the family {{1, 1/2, 1/4, 0}}: "
                        "set optimizer.power to one of 1, 0.5, 0.25, 0")
    if p == 1:
        return X
    if method == "svd":
        U, S, Vh = _svd(X)
        S = torch.where(S > 1e-7 * S.amax(dim=-1, keepdim=True), S, 0)
        Sp = S.pow(p) if p > 0 else (S > 0).to(S.dtype)
        return ((U * Sp.unsqueeze(-2)) @ Vh).to(X.dtype)
    if method != "iterative":
        raise UserError(f"unknown spectral power method {method!r}: use 'iterative' or 'svd'")
    if p == 0:
        return newton_schulz(X, ns_steps, eps=ns_eps, dtype=ns_dtype, work=work,
                             out_dtype=out_dtype)
    Y = X.to(torch.promote_types(X.dtype, torch.float32))
    norm = Y.norm(dim=(-2, -1), keepdim=True)
    Y = Y / norm.clamp_min(1e-30)
    Y = _square_root_power(Y, steps)
    if p == 0.25:
        Y = _square_root_power(Y, steps)
    return (Y * norm.pow(p)).to(X.dtype)


def taylor_power(X: Tensor, p: float, polar, eps: float = 1e-7) -> Tensor:
    """DynMuon's U Σ^p Vᵀ for any real p, negative included (Track 3 result #28's fast_spectral,
    order 2; arXiv 2605.17109): with Xn = X / (||X||_F + eps) = U Σn Vᵀ on the wide side,
        A = Xn Xnᵀ,  E = A - I,  δ = p / 2,  C = I + δ E + δ(δ - 1)/2 E²  (A^δ to second order
        about I),  result = (||X||_F + eps)^p C polar(Xn),
    i.e. U diag(c(Σn²)) Vᵀ (||X||_F + eps)^p with c the quadratic, for an exact polar factor.
    The Taylor series is about A = I while Σn² sums to 1, so it is DynMuon's kernel, not the
    exact power (spectral_power with method="svd" is that). `polar`: the polar factor of a
    stack (the record: Muon's Newton-Schulz). p = 0 returns polar(Xn) itself, as the record
    does. Computed in float32 at least, returned in X's dtype."""
    dtype = torch.promote_types(X.dtype, torch.float32)
    Y = X.to(dtype)
    wide = Y.mT if Y.size(-2) > Y.size(-1) else Y        # the smaller Gram: Xn Xnᵀ
    scale = wide.norm(dim=(-2, -1), keepdim=True) + eps
    Xn = wide / scale
    P = polar(Xn).to(dtype)
    if abs(p) < 1e-12:
        out = P
    else:
        A = Xn @ Xn.mT
        E = A - torch.eye(A.size(-1), dtype=dtype, device=A.device)
        delta = 0.5 * p
        C = E * delta + (E @ E) * (0.5 * delta * (delta - 1.0))
        C.diagonal(dim1=-2, dim2=-1).add_(1.0)
        out = (C @ P) * scale.pow(p)
    return (out.mT if wide is not Y else out).to(X.dtype)


def exact_power(X: Tensor, p: float) -> Tensor:
    """U Σ^p Vᵀ for any real p by the SVD (the float64 reference of DynMuon's kernel); singular
    values at or below a relative 1e-7 count as zero and map to zero (negative p stays finite)."""
    U, S, Vh = _svd(X)
    keep = S > 1e-7 * S.amax(dim=-1, keepdim=True)
    Sp = torch.where(keep, S.clamp_min(1e-300).pow(p), 0)
    return ((U * Sp.unsqueeze(-2)) @ Vh).to(X.dtype)
