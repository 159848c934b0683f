"""optim/spectral.py against float64 references, on fresh random inputs every run.

The references are independent of the code under test: U Σ^p Vᵀ = X (XᵀX)^((p-1)/2) computed
by float64 eigendecomposition of the Gram (p = 0 is the polar factor), and the scalar quintic
Newton-Schulz map applied to the float64 singular values. The seed is printed, so pytest shows
it with any failure; rerun with torch.manual_seed(seed) to reproduce.
"""
import os

import pytest
import torch

from configs.errors import UserError
from optim import polar, spectral
from optim.config import CHOICES

# The published coefficients, written here literally (never read from the code under test):
# Keller Jordan's quintic (Muon; modded-nanogpt, and quoted in arXiv 2505.16932 section 1.2 as
# p(x) = 3.4445 x - 4.7750 x^3 + 2.0315 x^5) ...
MUON_QUINTIC = (3.4445, -4.7750, 2.0315)
# ... modded-nanogpt Track 3's baseline iteration (records/track_3_optimization/
# train_gpt_simple*.py: `a, b, c = 2, -1.5, 0.5`, 12 steps): optimizer.ns=cubic ...
TRACK3_NS = (2, -1.5, 0.5)
# ... and Polar Express, arXiv 2505.16932 Algorithm 1 (degree 5): coeffs_list, then every
# polynomial but the last divided by the safety factor 1.01 (a / 1.01, b / 1.01^3, c / 1.01^5),
# and X0 = X / (1.01 ||X||_F + 1e-7).
POLAR_EXPRESS_PAPER = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]

SHAPES = [(40, 40), (96, 32), (32, 96), (3, 40, 24), (2, 2, 24, 40)]   # square/tall/wide/batched


@pytest.fixture(autouse=True)
def seed():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"torch seed = {seed}")
    torch.manual_seed(seed)
    return seed


def random_svd(shape, s_lo=0.2, s_hi=1.0):
    """Random orthogonal U, V (QR of Gaussians) and singular values uniform in [s_lo, s_hi]."""
    *batch, m, n = shape
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(*batch, m, k, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(*batch, n, k, dtype=torch.float64))[0]
    s = torch.empty(*batch, k, dtype=torch.float64).uniform_(s_lo, s_hi)
    return U, s, V


def well_conditioned(shape):
    """float32 X = c U diag(s) Vᵀ with s in [0.2, 1] and a random scale c in [1e-3, 1e3]."""
    U, s, V = random_svd(shape)
    c = 10 ** torch.empty(()).uniform_(-3, 3).item()
    return (c * (U * s.unsqueeze(-2)) @ V.mT).float()


def gram_power_reference(X, p):
    """U Σ^p Vᵀ = X (XᵀX)^((p-1)/2) = (XXᵀ)^((p-1)/2) X, by float64 eigh of the smaller Gram."""
    X = X.double()
    tall = X.size(-2) >= X.size(-1)
    L, Q = torch.linalg.eigh(X.mT @ X if tall else X @ X.mT)
    P = (Q * L.pow((p - 1) / 2).unsqueeze(-2)) @ Q.mT
    return X @ P if tall else P @ X


def rel_err(A, B):
    return ((A.double() - B.double()).norm() / B.double().norm()).item()


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_is_the_quintic_map_on_singular_values(shape):
    """NS(X) = U f(Σ/||Σ||) Vᵀ with f the 5-fold scalar quintic; f lands in the known band."""
    U, s, V = random_svd(shape)
    X = (U * s.unsqueeze(-2)) @ V.mT
    O = spectral.newton_schulz(X.float())
    assert O.dtype == torch.float32 and O.shape == X.shape
    a, b, c = MUON_QUINTIC
    f = s / s.norm(dim=-1, keepdim=True)
    for _ in range(5):
        f = a * f + b * f ** 3 + c * f ** 5
    assert f.min() > 0.6 and f.max() < 1.2          # measured band: about [0.68, 1.14]
    assert rel_err(O, (U * f.unsqueeze(-2)) @ V.mT) < 4e-2          # bf16; measured <= 0.021
    sv = torch.linalg.svdvals(O)
    assert sv.min() > 0.6 and sv.max() < 1.2
    P = spectral.polar_svd(X.float())
    cosine = (O * P).sum((-2, -1)) / (O.norm(dim=(-2, -1)) * P.norm(dim=(-2, -1)))
    assert cosine.min() > 0.95                      # measured >= 0.978


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 4e-2)])
def test_newton_schulz_in_a_workspace_is_the_same_map(dtype, tol):
    """The CPU engine's path (reused buffers, tall stacks through XᵀX instead of a transpose):
    the same quintic map on the singular values as the float64 reference, the same result as
    the allocating path up to rounding, its result in the iteration's dtype, and its buffers
    reused from call to call (and replaced when the shape changes)."""
    work = spectral.Workspace()
    a, b, c = MUON_QUINTIC
    for shape in SHAPES + [(96, 32)]:
        U, s, V = random_svd(shape)
        X = ((U * s.unsqueeze(-2)) @ V.mT).float()
        O = spectral.newton_schulz(X, dtype=dtype, work=work)
        assert O.dtype == dtype and O.shape == X.shape
        f = s / s.norm(dim=-1, keepdim=True)
        for _ in range(5):
            f = a * f + b * f ** 3 + c * f ** 5
        assert rel_err(O, (U * f.unsqueeze(-2)) @ V.mT) < tol
        assert rel_err(O, spectral.newton_schulz(X, dtype=dtype)) < tol
        again = spectral.newton_schulz(X, dtype=dtype, work=work)
        assert again.data_ptr() == O.data_ptr() and torch.equal(again, O)


@pytest.mark.parametrize("shape", SHAPES)
def test_polar_svd_is_exact(shape):
    X = well_conditioned(shape)
    O = spectral.polar_svd(X)
    k = min(shape[-2:])
    small_gram = O.mT @ O if shape[-2] >= shape[-1] else O @ O.mT
    assert torch.allclose(small_gram, torch.eye(k).expand_as(small_gram), atol=1e-5)
    assert rel_err(O, gram_power_reference(X, 0)) < 1e-5
    assert torch.equal(polar.orthogonalize(X, method="svd"), O)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.5, 0.25])
def test_spectral_power_iterative_matches_reference(shape, p):
    X = well_conditioned(shape)
    ref = gram_power_reference(X, p)
    assert rel_err(spectral.spectral_power(X, p, method="svd"), ref) < 1e-5
    assert rel_err(spectral.spectral_power(X, p), ref) < 1e-3          # measured ~1e-5


@pytest.mark.parametrize("p", [0.5, 0.25])
def test_spectral_power_rank_deficient_and_zero(p):
    """Zero singular values stay zero (no NaN): a rank-8 product and an all-zero stack."""
    X = torch.randn(4, 64, 8) @ torch.randn(4, 8, 32)
    ref = spectral.spectral_power(X.double(), p, method="svd")
    assert rel_err(spectral.spectral_power(X, p), ref) < 1e-3
    Z = torch.zeros(3, 16, 8)
    for method in ("iterative", "svd"):
        for q in (p, 0):
            assert torch.equal(spectral.spectral_power(Z, q, method=method), Z)


@pytest.mark.parametrize("r", [2, 4])
def test_inverse_root_coupled_matches_eigh(r):
    B = torch.randn(3, 24, 48, dtype=torch.float64)
    A = B @ B.mT / 48                                 # SPD, eigenvalues in about (0.1, 3)
    L, Q = torch.linalg.eigh(A)
    ref = (Q * L.pow(-1 / r).unsqueeze(-2)) @ Q.mT
    assert rel_err(spectral.inverse_root_coupled(A.float(), r), ref) < 1e-4
    if r == 4:
        assert rel_err(spectral.inverse_fourth_root_coupled(A.float()), ref) < 1e-4


def test_p0_is_newton_schulz_and_p1_is_identity():
    X = torch.randn(2, 24, 40)
    assert torch.equal(spectral.spectral_power(X, 0), spectral.newton_schulz(X))
    assert torch.equal(spectral.spectral_power(X, 0, ns_steps=3), spectral.newton_schulz(X, 3))
    assert torch.equal(polar.orthogonalize(X), spectral.newton_schulz(X))
    assert spectral.spectral_power(X, 1) is X


def test_bad_input_raises_user_error():
    X = torch.randn(24, 16)
    for p in (0.3, 2, -0.5):
        with pytest.raises(UserError, match=f"p={p} not in the family"):
            spectral.spectral_power(X, p)
    for rank in (0, 17):
        with pytest.raises(UserError, match=r"\[1, 16\]"):
            spectral.top_rank_polar(X, rank)
    with pytest.raises(UserError, match="optimizer.ns to one of newton_schulz, cubic"):
        polar.orthogonalize(X, method="qr")


def test_the_table_has_every_configurable_orthogonalizer():
    """optimizer.ns's accepted names (optim/config.py, torch-free) are the table's keys."""
    assert set(polar.ORTHOGONALIZERS) == set(CHOICES["ns"])


@pytest.mark.parametrize("shape,rank", [((48, 32), 5), ((32, 48), 1), ((3, 24, 40), 24)])
def test_top_rank_polar(shape, rank):
    """U_r V_rᵀ with a gap after the r-th singular value, so the subspace is well determined."""
    U, s, V = random_svd(shape, 0.05, 0.4)
    s[..., :rank] += 0.6
    X = ((U * s.unsqueeze(-2)) @ V.mT).float()
    O = spectral.top_rank_polar(X, rank)
    Uo, so, Vho = torch.linalg.svd(X.double(), full_matrices=False)    # sorted descending
    assert rel_err(O, Uo[..., :rank] @ Vho[..., :rank, :]) < 1e-5
    sv = torch.linalg.svdvals(O.double())
    assert torch.allclose(sv[..., :rank], torch.ones_like(sv[..., :rank]), atol=1e-5)
    assert (sv[..., rank:] < 1e-5).all()


def test_coefficients_are_the_published_numbers():
    """NS_COEFFS, the Track 3 iteration and the Polar Express table equal the published numbers
    above, exactly (a typo in one digit changes the map on every singular value)."""
    assert tuple(spectral.NS_COEFFS) == MUON_QUINTIC
    assert tuple(spectral.CUBIC_COEFFS) == TRACK3_NS
    assert [tuple(c) for c in polar.POLAR_EXPRESS_RAW] == POLAR_EXPRESS_PAPER
    safe = [(a / 1.01, b / 1.01 ** 3, c / 1.01 ** 5) for a, b, c in POLAR_EXPRESS_PAPER[:-1]]
    assert [tuple(c) for c in polar.POLAR_EXPRESS_COEFFS] == safe + POLAR_EXPRESS_PAPER[-1:]
    assert polar.coefficients(10) == safe + POLAR_EXPRESS_PAPER[-1:] * 3


@pytest.mark.parametrize("method,table", [("newton_schulz", [MUON_QUINTIC] * 5),
                                          ("cubic", [TRACK3_NS] * 12)])
def test_iterations_are_the_published_maps_in_float32(method, table):
    """orthogonalize in float32 against the published iteration written out in float64 (X0 =
    X / (||X||_F + 1e-7) on the short side, X <- a X + (b A + c A^2) X): float32 rounding only."""
    X = torch.randn(40, 24, dtype=torch.float64)
    O = polar.orthogonalize(X.float(), method=method, steps=len(table), dtype=torch.float32)
    Y = X.T / (X.norm() + 1e-7)
    for a, b, c in table:
        A = Y @ Y.T
        Y = a * Y + (b * A + c * A @ A) @ Y
    assert rel_err(O, Y.T) < 1e-5


def coupled_by_eigenvalue(A: torch.Tensor, r: int, steps: int, eps: float) -> torch.Tensor:
    """Guo & Higham's coupled iteration for A^(-1/r) written per eigenvalue in float64 (A = Q
    diag(lam) Qᵀ): the ridge lam + eps ||A||_F, z = (r + 1) / (2 (1 + eps) ||A||_F), m0 = z lam,
    x0 = z^(1/r); then t = (r + 1 - m) / r, x <- x t, m <- m t^r."""
    A = A.double()
    lam, Q = torch.linalg.eigh(A)
    norm = A.norm()
    z = (r + 1) / (2 * (1 + eps) * norm)
    m = z * (lam + eps * norm)
    x = torch.full_like(lam, z.item() ** (1 / r))
    for _ in range(steps):
        t = (r + 1 - m) / r
        x, m = x * t, m * t**r
    return Q @ torch.diag(x) @ Q.T


@pytest.mark.parametrize("r,steps,eps", [(4, 3, 1e-2), (2, 5, 1e-6), (4, 15, 1e-6)])
def test_inverse_root_coupled_is_the_iteration_per_eigenvalue(r, steps, eps):
    """Before convergence too (3 steps), with the ridge large enough to show, each matrix of a
    stack scaled by its own norm (one of norm below 1, one 10^6 times larger)."""
    g = torch.Generator().manual_seed(r + steps)
    Bs = torch.randn(2, 12, 12, generator=g, dtype=torch.float64)
    A = Bs @ Bs.mT
    A[0] *= 1e-3
    A[1] *= 1e3
    got = spectral.inverse_root_coupled(A, r, steps, eps)
    for a, x in zip(A, got):
        assert rel_err(x, coupled_by_eigenvalue(a, r, steps, eps)) < 1e-8
    if r == 4:
        assert rel_err(spectral.inverse_fourth_root_coupled(A, steps, eps), got) == 0


def test_inverse_root_coupled_keeps_the_input_dtype():
    A = torch.eye(8, dtype=torch.bfloat16)
    assert spectral.inverse_root_coupled(A, 4).dtype == torch.bfloat16
    assert torch.isfinite(spectral.inverse_root_coupled(torch.zeros(8, 8), 4)).all()
