"""optim/spectral.py's kernels against references written here in float64.

Every reference is independent of the code under test: Newton-Schulz (and any odd-polynomial
schedule) is the loop X <- a X + (b A + c A²) X written out below, with the published
coefficients spelled literally; spectral powers U Σ^p Vᵀ come from torch.linalg.svd in
float64; inverse roots from torch.linalg.eigh in float64, and the coupled Newton iteration
before convergence from its map per eigenvalue. The kernels run in float64 where they can, so
the tolerances are tight (1e-10): a wrong constant, a dropped eps or a start scale 1.3x off
fails by orders of magnitude. Also: the dtype and device of every result, the Gram size the
iterations work on (FLOPs), and the workspace's buffers. Seeds are fixed (deterministic).
"""
import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from configs.errors import UserError
from optim import spectral

F64 = torch.float64
# Keller Jordan's quintic (Muon; arXiv 2505.16932 section 1.2: p(x) = 3.4445 x - 4.7750 x^3 +
# 2.0315 x^5) and Track 3's baseline cubic (train_gpt_simple.py: a, b, c = 2, -1.5, 0.5).
QUINTIC = (3.4445, -4.7750, 2.0315)
CUBIC = (2.0, -1.5, 0.5)

SHAPES = [(24, 40), (40, 24), (3, 16, 16), (2, 3, 12, 20), (2, 20, 12)]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def sample(shape, seed, dtype=F64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=F64)).to(dtype)


def odd_loop64(G, schedule, eps=1e-7, norm="frobenius", safety=1.0):
    """The odd-polynomial iteration in float64: on the short side (a tall matrix transposed),
    X0 = G / (safety ||G||_F + eps) or G / max(||G Gᵀ||_F^(1/2), eps) (Schatten-4), then for
    each (a, b, c): A = X Xᵀ, X <- a X + (b A + c A²) X."""
    X = G.double()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    if norm == "schatten4":
        scale = (X @ X.mT).norm(dim=(-2, -1), keepdim=True).sqrt().clamp_min(eps)
    else:
        scale = safety * X.norm(dim=(-2, -1), keepdim=True) + eps
    X = X / scale
    for a, b, c in schedule:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


def svd_power64(X, p, cut=1e-7):
    """U Σ^p Vᵀ by float64 SVD; singular values at or below cut * max count as zero."""
    U, S, Vh = torch.linalg.svd(X.double(), full_matrices=False)
    keep = S > cut * S.amax(dim=-1, keepdim=True)
    Sp = torch.where(keep, S.clamp_min(1e-300) ** p, torch.zeros_like(S))
    return (U * Sp.unsqueeze(-2)) @ Vh


def coupled_per_eigenvalue(lam, norm, r, steps, eps):
    """Guo & Higham's coupled iteration for A^(-1/r) on the eigenvalues lam of A (||A||_F =
    norm): ridge lam + eps norm, z = (r + 1) / (2 (1 + eps) norm), m0 = z lam, x0 = z^(1/r),
    then t = (r + 1 - m) / r, x <- x t, m <- m t^r."""
    z = (r + 1) / (2 * (1 + eps) * norm)
    m = z * (lam + eps * norm)
    x = z ** (1 / r) * torch.ones_like(lam)
    for _ in range(steps):
        t = (r + 1 - m) / r
        x, m = x * t, m * t ** r
    return x


def iterative_half_power64(X, steps, eps=1e-6):
    """Psi_1/2 as spectral_power's iteration computes it, per singular value s (float64 SVD):
    s -> s x(s²), x the coupled inverse fourth root of the small Gram (eigenvalues s²)."""
    U, S, Vh = torch.linalg.svd(X.double(), full_matrices=False)
    lam = S ** 2
    norm = lam.norm(dim=-1, keepdim=True)                   # ||Gram||_F
    S = S * coupled_per_eigenvalue(lam, norm, 4, steps, eps)
    return (U * S.unsqueeze(-2)) @ Vh


def flops(fn, *args, **kw):
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kw)
    return counter.get_total_flops()


# ---- Newton-Schulz and the odd-polynomial kernel ----------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", ["fresh", "work-same-dtype", "work-float32-in", "work-bf16-in"])
def test_newton_schulz_in_float64_is_the_published_loop(shape, path):
    """Default coefficients (the quintic, literal here), 5 steps, eps large enough to matter;
    the cubic and a 2-step schedule too. bf16 input to a float64 iteration: the norm is that of
    the cast values (the bf16 norm would be off by up to 2^-9)."""
    in_dtype = {"fresh": F64, "work-same-dtype": F64, "work-float32-in": torch.float32,
                "work-bf16-in": torch.bfloat16}[path]
    G = sample(shape, 1, in_dtype)
    work = None if path == "fresh" else spectral.Workspace()
    for kw, schedule, eps in [({}, [QUINTIC] * 5, 1e-7),
                              ({"eps": 0.3}, [QUINTIC] * 5, 0.3),
                              ({"steps": 2, "coeffs": CUBIC, "eps": 0.3}, [CUBIC] * 2, 0.3),
                              ({"steps": 12, "coeffs": CUBIC}, [CUBIC] * 12, 1e-7)]:
        got = spectral.newton_schulz(G, dtype=F64, work=work, **kw)
        assert got.shape == G.shape
        assert got.dtype == (in_dtype if work is None else F64)
        assert rel(got, odd_loop64(G, schedule, eps)) < 1e-10, kw


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (2, 20, 12)])
def test_schatten4_start_with_and_without_a_workspace(shape):
    """norm="schatten4": X0 = G / max(||G Gᵀ||_F^(1/2), eps), then the quintic; eps is a floor
    that binds for a small G. Float32 input to a float64 iteration: the Gram of the cast values."""
    for G, eps in [(sample(shape, 2), 1e-7), (sample(shape, 3, scale=1e-3), 0.05),
                   (sample(shape, 4, torch.float32), 1e-7)]:
        want = odd_loop64(G, [QUINTIC] * 5, eps, norm="schatten4")
        assert rel(want, odd_loop64(G, [QUINTIC] * 5, eps)) > 1e-2     # the starts differ
        for work in (None, spectral.Workspace()):
            got = spectral.newton_schulz(G, dtype=F64, eps=eps, work=work, norm="schatten4",
                                         out_dtype=None if work else F64)
            assert got.dtype == F64 and rel(got, want) < 1e-10, (eps, work)


def test_newton_schulz_result_dtypes():
    """Without a workspace: out_dtype, else G's dtype; the iteration itself in `dtype` (a bf16
    G iterated in float64 is the float64 loop on its values)."""
    G = sample((24, 40), 5, torch.bfloat16)
    want = odd_loop64(G, [QUINTIC] * 5)
    got = spectral.newton_schulz(G, dtype=F64, out_dtype=F64)
    assert got.dtype == F64 and rel(got, want) < 1e-10
    assert spectral.newton_schulz(G, dtype=F64).dtype == torch.bfloat16
    assert spectral.newton_schulz(G.float(), dtype=torch.bfloat16,
                                  out_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_newton_schulz_default_is_bf16_and_close_to_the_quintic():
    """The default iteration is bf16 (its error ~1e-2 against the float64 quintic, not 1e-6),
    and still within 3e-2 of it: a result 1.3x too large (0.3 off) fails."""
    G = sample((48, 32), 6, torch.float32)
    want = odd_loop64(G, [QUINTIC] * 5)
    got = spectral.newton_schulz(G)
    assert got.dtype == torch.float32
    assert 1e-4 < rel(got, want) < 3e-2
    assert rel(1.3 * got, want) > 0.25


@pytest.mark.parametrize("safety", [1.0, 1.01, 2.0])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_polar_iteration_start_scale_with_safety(safety, shape):
    """X0 = G / (safety ||G||_F + eps), the step schedule applied in order (a Polar-Express-like
    list of different polynomials)."""
    G = sample(shape, 7)
    schedule = [(3.0, -3.2, 1.2), (1.875, -1.25, 0.375), (2.0, -1.5, 0.5)]
    got = spectral.polar_iteration(G, spectral.odd_polynomial, schedule, 0.2, F64,
                                   safety=safety)
    assert rel(got, odd_loop64(G, schedule, 0.2, safety=safety)) < 1e-10


@pytest.mark.parametrize("right", [False, True])
def test_odd_polynomial_is_the_map_and_leaves_its_input(right):
    """X <- a X + (b A + c A²) X with A = X Xᵀ (right=True: a tall X as it is, A = XᵀX and
    X <- a X + X (b A + c A²)); the caller's X is not overwritten."""
    X = sample((3, 12, 20), 8) / 6
    if right:
        X = X.mT.contiguous()
    before = X.clone()
    schedule = [(3.0, -3.2, 1.2), (1.875, -1.25, 0.375), (2.0, -1.5, 0.5)]
    got = spectral.odd_polynomial(X, schedule, right=right)
    Y = X.mT if right else X
    for a, b, c in schedule:
        A = Y @ Y.mT
        Y = a * Y + (b * A + c * A @ A) @ Y
    assert rel(got, Y.mT if right else Y) < 1e-12
    assert torch.equal(X, before)


@pytest.mark.parametrize("shape", [(2, 8, 32), (2, 32, 8), (8, 32), (32, 8)])
def test_newton_schulz_works_on_the_small_gram(shape):
    """The FLOPs of `steps` steps on the short side k (the long side l): per matrix and step
    the Gram 2 k² l, B = b A + c A² 2 k³, B X 2 k² l; with or without a workspace."""
    *batch, m, n = shape
    k, l, B = min(m, n), max(m, n), (batch or [1])[0]
    want = 3 * B * (4 * k * k * l + 2 * k ** 3)
    G = sample(shape, 9, torch.float32)
    assert flops(spectral.newton_schulz, G, 3, dtype=torch.float32) == want
    assert flops(spectral.newton_schulz, G, 3, dtype=torch.float32,
                 work=spectral.Workspace()) == want


def test_workspace_iterations_resize_nothing_and_keep_their_buffers():
    """Wide, tall and batched stacks through one workspace each: no `out=` resized (torch warns
    when it resizes one), the Gram buffers k x k, the result one of the buffers."""
    for shape in [(24, 40), (40, 24), (3, 20, 12), (2, 12, 20)]:
        *batch, m, n = shape
        k = min(m, n)
        work = spectral.Workspace()
        G = sample(shape, 10, torch.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first = spectral.newton_schulz(G, 3, dtype=torch.float32, work=work)
            second = spectral.newton_schulz(G, 3, dtype=torch.float32, work=work)
        bufs = work._buffers
        n_batch = (batch or [1])[0]
        assert bufs["ns_a"].shape == bufs["ns_b"].shape == (n_batch, k, k)
        assert bufs["ns_x"].shape == bufs["ns_y"].shape == (n_batch, m, n)
        assert second.data_ptr() == first.data_ptr()
        assert first.data_ptr() in {b.data_ptr() for b in bufs.values()}


def test_workspace_replaces_a_buffer_whose_shape_dtype_or_device_changed():
    work = spectral.Workspace()
    cpu, meta = torch.device("cpu"), torch.device("meta")
    a = work.get("a", (2, 3), torch.float32, cpu)
    assert work.get("a", (2, 3), torch.float32, cpu) is a
    b = work.get("a", (2, 3), F64, cpu)
    assert b.dtype == F64 and b.shape == (2, 3)
    c = work.get("a", (3, 2), F64, cpu)
    assert c.shape == (3, 2)
    d = work.get("a", (3, 2), F64, meta)
    assert d.device == meta and d.dtype == F64
    assert work.get("b", (4,), torch.bfloat16, meta).device == meta


def test_kernels_keep_the_device_of_their_input():
    """On the meta device (no data): results and workspace buffers follow the input's device."""
    for shape in [(2, 12, 20), (2, 20, 12)]:
        X = torch.empty(*shape, device="meta")
        work = spectral.Workspace()
        assert spectral.newton_schulz(X, dtype=torch.float32, work=work).device.type == "meta"
        assert all(b.device.type == "meta" for b in work._buffers.values())
        assert spectral.newton_schulz(X, dtype=torch.float32).device.type == "meta"
        for p in (0.5, 0.25):
            assert spectral.spectral_power(X, p).device.type == "meta"
    A = torch.empty(3, 6, 6, device="meta")
    assert spectral.inverse_root_coupled(A, 4).device.type == "meta"


# ---- spectral powers --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_power_p0_is_newton_schulz_in_ns_dtype_with_ns_eps(shape):
    """p = 0 (method="iterative") passes ns_steps, ns_eps, ns_dtype, work and out_dtype to the
    quintic: against the float64 loop, tight."""
    X = sample(shape, 11, torch.float32)
    for steps, eps in [(5, 1e-7), (3, 0.3)]:
        want = odd_loop64(X, [QUINTIC] * steps, eps)
        got = spectral.spectral_power(X, 0, ns_steps=steps, ns_dtype=F64, ns_eps=eps)
        assert got.dtype == torch.float32 and rel(got, want) < 1e-6   # float32 output
        got = spectral.spectral_power(X, 0, ns_steps=steps, ns_dtype=F64, ns_eps=eps,
                                      out_dtype=F64)
        assert got.dtype == F64 and rel(got, want) < 1e-10
        work = spectral.Workspace()
        got = spectral.spectral_power(X, 0, ns_steps=steps, ns_dtype=F64, ns_eps=eps, work=work)
        assert got.dtype == F64 and rel(got, want) < 1e-10             # the workspace's dtype
        assert got.data_ptr() in {b.data_ptr() for b in work._buffers.values()}
    got = spectral.spectral_power(X, 0)                                 # bf16, 5 steps
    assert rel(got, odd_loop64(X, [QUINTIC] * 5)) < 3e-2


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.5, 0.25])
def test_iterative_powers_against_svd_in_float64(shape, p):
    """Converged (15 coupled steps, float64): U Σ^p Vᵀ of torch.linalg.svd up to the ridge
    (1e-6 ||Gram||_F: ~1e-6 here, more for a square Gaussian's smallest singular values), and
    exactly the coupled map per singular value; each matrix of a stack scaled by its own norm
    (scales 1e-12 and 1e12 apart in float32 too)."""
    X = sample(shape, 12)
    want = svd_power64(X, p)
    assert rel(spectral.spectral_power(X, p, method="svd"), want) < 1e-12
    got = spectral.spectral_power(X, p)
    assert rel(got, want) < 2e-3
    norm = X.norm(dim=(-2, -1), keepdim=True)
    half = iterative_half_power64(X / norm, 15)
    mapped = half * norm.sqrt() if p == 0.5 else iterative_half_power64(half, 15) * norm ** 0.25
    assert rel(got, mapped) < 1e-10
    if len(shape) == 3:
        Y = sample(shape, 21, torch.float32, scale=0.1) + torch.eye(*shape[-2:])  # s ~ 1
        Y[0] *= 1e-12
        Y[-1] *= 1e12
        got = spectral.spectral_power(Y, p).double()
        for i in range(len(Y)):
            assert rel(got[i], svd_power64(Y[i], p)) < 1e-4, i


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (2, 12, 20), (2, 20, 12)])
def test_iterative_powers_before_convergence_are_the_coupled_map(shape):
    """steps = 2, 3: not converged, so the result is the coupled iteration's map per singular
    value, s -> s x(s²) on X / ||X||_F (p = 1/4: that map twice), times ||X||_F^p."""
    X = sample(shape, 13)
    norm = X.norm(dim=(-2, -1), keepdim=True)
    for steps in (2, 3):
        half = iterative_half_power64(X / norm, steps)
        assert rel(half * norm.sqrt(), svd_power64(X, 0.5)) > 1e-3     # not converged
        assert rel(spectral.spectral_power(X, 0.5, steps=steps), half * norm.sqrt()) < 1e-10
        quarter = iterative_half_power64(half, steps) * norm ** 0.25
        assert rel(spectral.spectral_power(X, 0.25, steps=steps), quarter) < 1e-10


def test_iterative_powers_work_on_the_small_gram():
    """Psi_p of a wide stack costs what it costs on its transpose (the k x k Gram both ways)."""
    for p in (0.5, 0.25):
        X = sample((2, 8, 32), 14, torch.float32)
        assert flops(spectral.spectral_power, X, p) == flops(spectral.spectral_power, X.mT, p)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_powers_of_low_precision_inputs_are_computed_in_float32(dtype):
    """bf16 / fp16 in, the same dtype out, computed in float32 (so within the output's own
    rounding of the float64 answer, ~2^-8)."""
    X = sample((40, 24), 15, dtype)
    for p in (0.5, 0.25, 0):
        for method in ("iterative", "svd"):
            if p == 0 and method == "iterative":
                continue
            got = spectral.spectral_power(X, p, method=method)
            assert got.dtype == dtype, (p, method)
            # the float32 computation of the same values, cast back (not one in `dtype`)
            assert torch.equal(got, spectral.spectral_power(X.float(), p, method=method).to(dtype))
            assert rel(got, svd_power64(X, p)) < 5e-3, (p, method, rel(got, svd_power64(X, p)))
    O = spectral.polar_svd(X)
    assert O.dtype == dtype and rel(O, svd_power64(X, 0)) < 5e-3
    R = spectral.top_rank_polar(X, 3)
    U, S, Vh = torch.linalg.svd(X.double(), full_matrices=False)
    assert R.dtype == dtype and rel(R, U[:, :3] @ Vh[:3]) < 5e-3


def test_svd_power_cut_is_relative_per_matrix_and_strict():
    """method="svd": singular values count as zero at or below 1e-7 times the largest of their
    own matrix; p = 0 keeps every singular value above the cut, small ones included."""
    X = torch.stack([sample((12, 8), 16, scale=1e9), sample((12, 8), 17, scale=1e-3)])
    for p in (0, 0.5, 0.25):
        got = spectral.spectral_power(X, p, method="svd")
        for i in range(2):
            assert rel(got[i], svd_power64(X[i], p)) < 1e-12, (p, i)
    D = torch.diag(torch.tensor([1.0, 1e-7, 0.5], dtype=F64))      # 1e-7: exactly the cut
    assert torch.linalg.svdvals(D).tolist() == [1.0, 0.5, 1e-7]
    want = torch.diag(torch.tensor([1.0, 0.0, 0.5 ** 0.5], dtype=F64))
    assert torch.allclose(spectral.spectral_power(D, 0.5, method="svd"), want, atol=1e-15)
    want0 = torch.diag(torch.tensor([1.0, 0.0, 1.0], dtype=F64))
    assert torch.allclose(spectral.spectral_power(D, 0, method="svd"), want0, atol=1e-15)


def test_spectral_power_messages():
    X = torch.randn(6, 4)
    with pytest.raises(UserError, match=r"spectral power p=0\.3 not in the family \{1, 1/2, "
                       r"1/4, 0\}: set optimizer\.power to one of 1, 0\.5, 0\.25, 0$"):
        spectral.spectral_power(X, 0.3)
    with pytest.raises(UserError, match=r"^unknown spectral power method 'qr': use 'iterative' "
                       r"or 'svd'$"):
        spectral.spectral_power(X, 0.5, method="qr")
    with pytest.raises(UserError, match=r"^rank=25 out of range for 24x40 matrices: set "
                       r"optimizer\.rank to an integer in \[1, 24\] \(or null for full rank\)$"):
        spectral.top_rank_polar(torch.randn(2, 24, 40), 25)


# ---- inverse roots -----------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 2, 4])
def test_inverse_root_against_eigh_in_float64(r):
    """Converged: A^(-1/r) of torch.linalg.eigh, per matrix of a stack of unlike scales."""
    B = sample((3, 10, 30), 18)
    A = B @ B.mT / 30
    A[0] *= 1e-4
    A[2] *= 1e4
    L, Q = torch.linalg.eigh(A)
    ridge = 1e-6 * A.norm(dim=(-2, -1)).unsqueeze(-1)
    want = (Q * (L + ridge).pow(-1 / r).unsqueeze(-2)) @ Q.mT       # with the ridge
    exact = (Q * L.pow(-1 / r).unsqueeze(-2)) @ Q.mT
    got = spectral.inverse_root_coupled(A, r, steps=40)
    assert got.dtype == F64
    for i in range(3):
        assert rel(got[i], want[i]) < 1e-10, i
        assert rel(got[i], exact[i]) < 1e-4, i


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_inverse_root_of_low_precision_input_is_computed_in_float32(dtype):
    """Before convergence (3 steps, eps 1e-2) the per-eigenvalue map, on A's values, in
    float32: the norm, z and the ridge of the cast values, not of A's dtype."""
    B = sample((8, 16), 19)
    A = (B @ B.mT / 16).to(dtype)
    lam, Q = torch.linalg.eigh(A.double())
    norm = A.double().norm()
    want = (Q * coupled_per_eigenvalue(lam, norm, 4, 3, 1e-2)) @ Q.mT
    got = spectral.inverse_root_coupled(A, 4, steps=3, eps=1e-2)
    assert got.dtype == dtype
    assert rel(got, want) < {torch.float32: 1e-5}.get(dtype, 4e-3)
    if dtype != torch.float32:
        # in float32, before the cast back: exactly the float32 computation of the same values
        assert torch.equal(got, spectral.inverse_root_coupled(A.float(), 4, 3, 1e-2).to(dtype))


def test_inverse_root_does_not_depend_on_the_default_dtype():
    B = sample((8, 16), 20, torch.float32)
    A = B @ B.mT
    want = spectral.inverse_root_coupled(A, 4, steps=4)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        got = spectral.inverse_root_coupled(A, 4, steps=4)
    finally:
        torch.set_default_dtype(previous)
    assert got.dtype == torch.float32 and torch.equal(got, want)


# ---- DynMuon's Taylor power, the exact power, the Schatten-4 start -----------------------------

def polar64(Y):
    """U Vᵀ by float64 SVD, returned in float64 whatever Y's dtype (taylor_power casts it)."""
    U, _, Vh = torch.linalg.svd(Y.double(), full_matrices=False)
    return U @ Vh


def taylor64(X, p, eps):
    """DynMuon's kernel per singular value, float64: on the wide side, scale = ||X||_F + eps,
    σn = σ / scale, c = 1 + δ (σn² - 1) + δ (δ - 1) / 2 (σn² - 1)² with δ = p / 2, result
    scale^p U diag(c) Vᵀ."""
    X = X.double()
    tall = X.size(-2) > X.size(-1)
    W = X.mT if tall else X
    scale = W.norm(dim=(-2, -1), keepdim=True) + eps
    U, S, Vh = torch.linalg.svd(W / scale, full_matrices=False)
    d, e = p / 2, S ** 2 - 1
    c = 1 + d * e + d * (d - 1) / 2 * e ** 2
    out = (U * c.unsqueeze(-2)) @ Vh * scale ** p
    return out.mT if tall else out


@pytest.mark.parametrize("shape", SHAPES)
def test_taylor_power_is_dynmuons_quadratic(shape):
    """Against the quadratic per singular value (float64), eps large enough to matter, every
    matrix of a stack scaled by its own norm; p = 0 is the polar factor of X / (||X|| + eps)."""
    X = sample(shape, 22)
    if len(shape) > 2:
        X = X * torch.logspace(-3, 3, X.shape[0], dtype=F64).view(-1, *[1] * (len(shape) - 1))
    for p in (-0.5, 0.25, 0.6, 1.0, 0.0):
        for eps in (1e-7, 0.5):
            got = spectral.taylor_power(X, p, polar64, eps=eps)
            assert got.dtype == F64 and got.shape == X.shape
            assert rel(got, taylor64(X, p, eps)) < 1e-12, (p, eps)


def test_taylor_power_dtypes_and_cost():
    """float32 at least inside (a bf16 X: the float32 computation of its values, cast back),
    `polar`'s result cast to that dtype, and the Gram on the short side."""
    X = sample((2, 12, 20), 23, torch.bfloat16)
    for p in (-0.25, 0.25, 0):
        got = spectral.taylor_power(X, p, polar64)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, spectral.taylor_power(X.float(), p, polar64).to(torch.bfloat16))
        assert rel(got, taylor64(X, p, 1e-7)) < 5e-3
        f32 = spectral.taylor_power(X.float(), p, polar64)
        assert f32.dtype == torch.float32 and rel(f32, taylor64(X, p, 1e-7)) < 1e-5
    Y = sample((2, 8, 32), 24, torch.float32)
    assert flops(spectral.taylor_power, Y, 0.5, polar64) == flops(spectral.taylor_power, Y.mT,
                                                                 0.5, polar64) > 0
    previous = torch.get_default_dtype()
    want = spectral.taylor_power(Y, 0.5, polar64)
    torch.set_default_dtype(F64)
    try:
        got = spectral.taylor_power(Y, 0.5, polar64)
    finally:
        torch.set_default_dtype(previous)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    M = torch.empty(2, 12, 20, device="meta")
    assert spectral.taylor_power(M, 0.5, lambda Z: Z).device.type == "meta"


@pytest.mark.parametrize("shape", SHAPES)
def test_exact_power_against_svd(shape):
    """U Σ^p Vᵀ for negative and positive p, per matrix of a stack of unlike scales, singular
    values below 1 included; a rank-deficient matrix keeps its zero singular values at zero."""
    X = sample(shape, 25, scale=0.01)
    if len(shape) > 2:
        X = X * torch.logspace(-4, 4, X.shape[0], dtype=F64).view(-1, *[1] * (len(shape) - 1))
    for p in (-1.0, -0.25, 0.25, 0.5, 0.0):
        got = spectral.exact_power(X, p)
        assert got.dtype == F64 and rel(got, svd_power64(X, p)) < 1e-10, p
    L = sample((20, 3), 26) @ sample((3, 16), 27)
    for p in (-0.5, 0.5):
        got = spectral.exact_power(L, p)
        assert rel(got, svd_power64(L, p)) < 1e-10
        assert torch.linalg.matrix_rank(got, rtol=1e-6) == 3
    D = torch.diag(torch.tensor([1.0, 1e-7, 0.25], dtype=F64))      # 1e-7: exactly the cut
    want = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=F64))
    assert torch.allclose(spectral.exact_power(D, -0.5), want, atol=1e-15)
    B = sample((12, 8), 28, torch.bfloat16)
    got = spectral.exact_power(B, -0.5)
    assert got.dtype == torch.bfloat16 and rel(got, svd_power64(B, -0.5)) < 5e-3


@pytest.mark.parametrize("shape", [(2, 8, 32), (2, 32, 8), (8, 32), (32, 8), (3, 2, 8, 24)])
def test_schatten4_start_per_matrix_on_the_small_gram(shape):
    """steps = 0: X0 = G / max((Σ σ⁴)^(1/4), eps), per matrix of a stack of unlike scales, its
    Gram the small one (FLOPs: 2 k² l per matrix), with and without a workspace."""
    G = sample(shape, 29)
    if len(shape) > 2:
        G = G * torch.logspace(-2, 2, G.shape[0], dtype=F64).view(-1, *[1] * (len(shape) - 1))
    S = torch.linalg.svdvals(G)
    want = G / (S ** 4).sum(-1).pow(0.25)[..., None, None].clamp_min(0.2)
    *batch, m, n = shape
    gram = 2 * min(m, n) ** 2 * max(m, n) * int(torch.tensor(batch).prod())
    for work in (None, spectral.Workspace()):
        got = spectral.newton_schulz(G, 0, eps=0.2, dtype=F64, work=work, norm="schatten4")
        assert rel(got, want) < 1e-12
        assert flops(spectral.newton_schulz, G.float(), 0, dtype=torch.float32, work=work,
                     norm="schatten4") == gram


def test_inverse_root_defaults_are_15_steps_and_a_1e6_ridge():
    """Called with the defaults, an eigenvalue 1e-6 of the largest is still converging at step
    15: the result is the per-eigenvalue map after exactly 15 steps with eps = 1e-6."""
    Q = torch.linalg.qr(sample((6, 6), 30))[0]
    lam = torch.tensor([1.0, 0.5, 0.1, 1e-3, 1e-5, 1e-6], dtype=F64)
    A = (Q * lam) @ Q.T
    norm = A.norm()
    want = (Q * coupled_per_eigenvalue(lam, norm, 4, 15, 1e-6)) @ Q.T
    assert rel(want, (Q * coupled_per_eigenvalue(lam, norm, 4, 16, 1e-6)) @ Q.T) > 1e-3
    assert rel(spectral.inverse_root_coupled(A, 4), want) < 1e-10
    assert rel(spectral.inverse_fourth_root_coupled(A), want) < 1e-10
    want2 = (Q * coupled_per_eigenvalue(lam, norm, 2, 15, 1e-6)) @ Q.T
    assert rel(spectral.inverse_root_coupled(A, 2), want2) < 1e-10


def test_taylor_power_at_a_tiny_nonzero_p_is_not_the_polar_factor():
    """Only |p| < 1e-12 is p = 0 (the polar factor itself): at p = 1e-12 exactly the kernel is
    the quadratic times scale^p, which for ||X||_F ~ 1e6 differs from the polar factor by about
    1e-11 relative, far above float64's rounding. The reference is written here."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(4, 6, generator=g, dtype=torch.float64) * 1e6

    def polar(Y):
        U, _, Vh = torch.linalg.svd(Y, full_matrices=False)
        return U @ Vh

    p = 1e-12
    scale = X.norm() + 1e-7
    Xn = X / scale
    E = Xn @ Xn.T - torch.eye(4, dtype=torch.float64)
    d = p / 2
    C = torch.eye(4, dtype=torch.float64) + d * E + (d * (d - 1) / 2) * (E @ E)
    want = (C @ polar(Xn)) * scale ** p
    got = spectral.taylor_power(X, p, polar)
    assert torch.allclose(got, want, rtol=1e-14, atol=0)
    assert not torch.allclose(got, polar(Xn), rtol=1e-12, atol=0)
    assert torch.equal(spectral.taylor_power(X, 0.99e-12, polar), polar(Xn))
