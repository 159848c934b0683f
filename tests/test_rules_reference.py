"""optim/rules.py's links one at a time against float64 hand computations: the apply
(W <- rho W - eta D, the cautious decay) on a stack and on per-parameter pieces (the distributed
engine's form), with and without a workspace; the hyperball step on pieces of several matrices;
the u/w floor; the step sizes on zero matrices (the distributed engine's probe); the dtypes the
transforms return and the engine gathers by; which chains report a Newton-Schulz dtype.
Nothing of optim/ computes an expected value here."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from optim import OptimizerConfig, build_optimizer, rules, spectral

BLOCKS = [2, 1, 3]          # matrices per parameter: a stack of 6 (5, 7) matrices
M, N = 5, 7


def quiet(*args, **kwargs):
    pass


def sample(seed, S=sum(BLOCKS), m=M, n=N, d_dtype=torch.float32):
    """W (float32) and D (d_dtype), with exact zeros in both (the sign rule's ties)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(S, m, n, generator=g)
    D = torch.randn(S, m, n, generator=g)
    W[0, 0, :3] = 0.0
    D[0, 1, :2] = 0.0
    D[-1, 0, 0] = 0.0
    W[-1, 0, 0] = 0.0
    return W, D.to(d_dtype)


def step_sizes(S, n, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "eta float": 0.03,
        "eta (S,1,1)": 0.01 + 0.05 * torch.rand(S, 1, 1, generator=g),
        "eta (S,1,n)": 0.01 + 0.05 * torch.rand(S, 1, n, generator=g),
    }, {
        "rho float": 0.9,
        "rho 1": 1.0,
        "rho (S,1,n)": 0.5 + 0.5 * torch.rand(S, 1, n, generator=g),
    }


def apply_reference(W, D, eta, rho, cautious):
    """float64: rho W - eta D; cautious: W - (1 - rho) I(D W >= 0) W - eta D."""
    W, D = W.double(), D.double()
    eta = eta.double() if isinstance(eta, torch.Tensor) else eta
    rho = rho.double() if isinstance(rho, torch.Tensor) else rho
    if cautious:
        agree = torch.sign(D) * torch.sign(W) >= 0
        return W - (1 - rho) * torch.where(agree, W, torch.zeros_like(W)) - eta * D
    return rho * W - eta * D


@pytest.mark.parametrize("blocks", [BLOCKS, [4]])
@pytest.mark.parametrize("d_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cautious", [False, True])
@pytest.mark.parametrize("as_pieces", [False, True])
def test_apply_update_equals_float64(blocks, d_dtype, cautious, as_pieces):
    """apply_update on parameters of [2, 1, 3] matrices (and one parameter of 4), D a stack or
    its pieces per parameter, bf16 or float32, every form of eta (float, per matrix, per column)
    and rho (float, 1, per column), with and without a workspace, plain and cautious: W <- rho W
    - eta D (cautious: the decay only where D W >= 0) in float64 up to float32 rounding. No
    buffer resized (torch warns when an out= has the wrong shape)."""
    S = sum(blocks)
    W, D = sample(len(blocks) + (3 if cautious else 0), S=S, d_dtype=d_dtype)
    etas, rhos = step_sizes(S, N, seed=S)
    for (en, eta), (rn, rho) in [(e, r) for e in etas.items() for r in rhos.items()]:
        for work in (None, spectral.Workspace()):
            for _ in range(2):             # a second call reuses the workspace's buffer
                params = [w.clone() for w in W.split(blocks)]
                Dx = list(D.split(blocks)) if as_pieces else D
                with warnings.catch_warnings():
                    warnings.filterwarnings("error", message=".*resized.*")
                    rules.apply_update(params, Dx, eta, rho, blocks, work, cautious=cautious)
                got = torch.cat(params).double()
                want = apply_reference(W, D, eta, rho, cautious)
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6,
                                           msg=lambda s: f"{en}, {rn}, work={work}: {s}")
                if work is not None:   # eta D went to the workspace's buffer (a tensor eta)
                    if isinstance(eta, torch.Tensor):
                        assert set(work._buffers) == {"update"}
                        torch.testing.assert_close(work._buffers["update"].double(),
                                                   eta.double() * D.double(), rtol=1e-6, atol=0)
                    else:
                        assert work._buffers == {}


@pytest.mark.parametrize("as_pieces", [False, True])
@pytest.mark.parametrize("d_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eta_width", [1, N])
def test_scaled_goes_to_the_workspace_update_buffer(as_pieces, d_dtype, eta_width):
    """With a workspace, eta D (a tensor eta) is written into its one "update" buffer of the
    stack's shape, in promote(D, eta)'s dtype, and the next call reuses it (same storage):
    the pieces returned are views of it holding eta D."""
    W, D = sample(7, d_dtype=d_dtype)
    eta = 0.01 + torch.rand(len(D), 1, eta_width, generator=torch.Generator().manual_seed(8))
    work = spectral.Workspace()
    ptrs = []
    for _ in range(2):
        out = rules.scaled(list(D.split(BLOCKS)) if as_pieces else D, eta, BLOCKS, work)
        assert set(work._buffers) == {"update"}
        buf = work._buffers["update"]
        assert buf.shape == (len(D), M, N) and buf.dtype == torch.float32
        assert [o.shape for o in out] == [(k, M, N) for k in BLOCKS]
        assert all(o.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
                   for o in out)
        torch.testing.assert_close(buf.double(), D.double() * eta.double(), rtol=1e-6, atol=0)
        ptrs.append(buf.data_ptr())
    assert ptrs[0] == ptrs[1]
    # without a workspace: the same products, fresh tensors
    out = rules.scaled(list(D.split(BLOCKS)) if as_pieces else D, eta, BLOCKS, None)
    torch.testing.assert_close(torch.cat(out).double(), D.double() * eta.double(),
                               rtol=1e-6, atol=0)


def test_a_float_step_uses_no_buffer():
    """A float eta: W <- rho W - eta D by one fused add; the workspace stays empty."""
    W, D = sample(9)
    work = spectral.Workspace()
    params = [w.clone() for w in W.split(BLOCKS)]
    rules.apply_update(params, list(D.split(BLOCKS)), 0.25, 0.5, BLOCKS, work)
    assert work._buffers == {}
    torch.testing.assert_close(torch.cat(params).double(), 0.5 * W.double() - 0.25 * D.double(),
                               rtol=1e-6, atol=1e-7)


def test_cautious_decay_at_the_sign_ties():
    """Cautious decay entry by entry on hand-picked signs: decayed where D W > 0 or D = 0, kept
    where they disagree; a zero W stays zero. rho per column and rho float."""
    W = torch.tensor([[[1.0, -2.0, 3.0, 0.0], [-1.0, 2.0, -3.0, 4.0]]])
    D = torch.tensor([[[2.0, 1.0, 0.0, -1.0], [-1.0, -1.0, 0.0, 0.0]]])
    # decayed (agree or D = 0):  (0,0) (0,2) (0,3: W=0) (1,0) (1,2) (1,3); kept: (0,1) (1,1)
    keep = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]])
    for rho in (0.5, torch.tensor([[[0.5, 0.25, 0.75, 0.125]]])):
        w = W.clone()
        rules.cautious_decay([w], D, rho, [1])
        r = rho if isinstance(rho, float) else rho.expand_as(W)
        want = torch.where(keep.bool(), W, r * W)
        assert torch.equal(w, want), (rho, w)
    w = W.clone()
    rules.cautious_decay([w], list(D.split([1])), 1.0, [1])   # rho 1: nothing decays
    assert torch.equal(w, W)


# ---- the hyperball step -------------------------------------------------------------------------

def hyperball_reference(W, D, eta):
    """float64, per matrix: W' = W - eta D ||W|| / max(||D||, 1e-10),
    W <- W' ||W|| / max(||W'||, 1e-10)."""
    out = []
    for w, d in zip(W.double(), D.double()):
        p = w.norm()
        new = w - eta * d * p / max(d.norm(), 1e-10)
        out.append(new / max(new.norm(), 1e-10) * p)
    return torch.stack(out)


@pytest.mark.parametrize("as_pieces", [False, True])
@pytest.mark.parametrize("d_dtype", [torch.float32, torch.bfloat16])
def test_hyperball_apply_on_pieces_of_several_matrices(as_pieces, d_dtype):
    """hyperball_apply on parameters of [2, 1, 3] matrices with norms 100x apart, every matrix by
    its own norms (one zero W: stays zero; one zero D: W unchanged), against float64; the rho
    and cautious passed are not read (the builder refuses a decay)."""
    W, D = sample(11, d_dtype=torch.float32)
    W = W * torch.tensor([1.0, 100.0, 0.01, 3.0, 1.0, 0.5]).view(-1, 1, 1)
    D = D * torch.tensor([0.02, 1.0, 50.0, 1.0, 0.3, 1.0]).view(-1, 1, 1)
    W[4] = 0.0
    D[5] = 0.0
    D = D.to(d_dtype)
    for eta in (0.05, 0.7):
        params = [w.clone() for w in W.split(BLOCKS)]
        rules.hyperball_apply(params, list(D.split(BLOCKS)) if as_pieces else D, eta, 0.5,
                              BLOCKS, None, cautious=True)
        got = torch.cat(params)
        want = hyperball_reference(W, D, eta)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-7)
        assert torch.equal(got[4], W[4]) and rules.hyperball_step(
            dict(lr=eta), None, None, None) == (eta, 1.0)


# ---- optimizer.uw_floor ---------------------------------------------------------------------

def uw_reference(W, D, eta, floor, s):
    """float64: w = max(||W||, 1e-8), u = max(s ||D||, 1e-8); eta floor w / u where u / w <
    floor, else eta."""
    w = W.double().norm(dim=(1, 2)).clamp_min(1e-8)
    u = (D.double().norm(dim=(1, 2)) * s).clamp_min(1e-8)
    scale = torch.where(u / w < floor, floor * w / u, torch.ones_like(w))
    return eta * scale.view(-1, 1, 1) if isinstance(eta, torch.Tensor) \
        else eta * scale.view(-1, 1, 1)


@pytest.mark.parametrize("blocks", [BLOCKS, [3]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("style", ["moonlight", "none"])
def test_uw_floor_equals_float64(blocks, dtype, style):
    """u/w floor per matrix on W and D in float32 or bf16 (norms taken in float32 at least),
    with norms below 1 (the 1e-8 clamps bind only at zero: a zero W and a zero D included) and
    the floor binding on some matrices and not on others."""
    S = sum(blocks)
    W, D = sample(13, S=S, d_dtype=torch.float32)
    W = W * torch.logspace(-3, 0, S).view(-1, 1, 1)
    D = D * torch.logspace(-4, -1, S).flip(0).view(-1, 1, 1)
    W[-1] = 0.0
    D[0] = 0.0
    W, D = W.to(dtype), D.to(dtype)
    s = 0.2 * math.sqrt(N) if style == "moonlight" else 1.0
    group = dict(uw_floor=0.05, scale=style, matrix_shape=(M, N))
    ratio = (D.double().norm(dim=(1, 2)) * s) / W.double().norm(dim=(1, 2))
    assert (ratio < 0.05).any() and (ratio > 0.05).any()
    for eta in (0.02, 0.01 + torch.rand(S, 1, 1, generator=torch.Generator().manual_seed(1))):
        got = rules.uw_floor(group, list(W.split(blocks)), D, eta)
        torch.testing.assert_close(got.double(), uw_reference(W, D, eta, 0.05, s),
                                   rtol=1e-5, atol=0)
    assert rules.uw_floor(dict(scale=style, matrix_shape=(M, N)), list(W.split(blocks)), D,
                          0.02) == 0.02


def test_uw_floor_is_strict():
    """||u|| / ||W|| exactly at the floor (float32: 3 / 21 rounds to the floor given) is not below
    it: eta as it is, bit for bit (floor w / u would round to 1 + 2^-23 here)."""
    W = torch.zeros(1, 2, 2)
    W[0, 0, 0] = 21.0
    D = torch.zeros(1, 2, 2)
    D[0, 1, 1] = 3.0
    floor = float(torch.tensor(3.0) / torch.tensor(21.0))
    assert float(floor * torch.tensor(21.0) / torch.tensor(3.0)) != 1.0
    got = rules.uw_floor(dict(uw_floor=floor, scale="none", matrix_shape=(2, 2)), [W], D, 0.5)
    assert got.item() == 0.5


# ---- step sizes on zero matrices (MatrixOptimizer._forms) --------------------------------------

@pytest.mark.parametrize("step", ["namo_step", "namo_d_step"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_step_sizes_take_zero_matrices(step, dtype):
    """The distributed engine learns eta's and rho's form from the step size on a (0, m, n)
    stack: NAMO gives (0, 1, 1) tensors, NAMO-D (0, 1, n), adaptive and decoupled."""
    width = 1 if step == "namo_step" else N
    for style in ("adaptive", "decoupled"):
        group = dict(lr=0.02, momentum=0.95, mu2=0.99, eps=1e-8, weight_decay=0.1,
                     decay_style=style, scale="moonlight", clamp_c=0.75, matrix_shape=(M, N))
        empty = torch.empty(0, M, N, dtype=dtype)
        eta, rho = getattr(rules, step)(group, [empty], empty, [{"step": 1}])
        assert eta.shape == (0, 1, width)
        if style == "adaptive":
            assert rho.shape == (0, 1, width)
        else:
            lr_t = 0.02 * math.sqrt(1 - 0.99) / (1 - 0.95)       # bias-corrected at step 1
            assert rho == pytest.approx(1 - lr_t * 0.1, rel=1e-12)


def test_namo_d_without_clamp_on_a_zero_matrix():
    """c = 0 (no clamp, as the published class): a matrix whose momentum and gradient are zero
    gets d = 0 in every column (mean 0: no 0 / 0), eta = 0 and rho = 1, next to a live one
    whose d is unclamped: ||M[:, j]|| / (sqrt(V_j) + eps) in float64 (V_j = (1 - mu2) G_j^2)."""
    g = torch.Generator().manual_seed(3)
    G = torch.randn(2, M, N, generator=g, dtype=torch.float64)
    G[1] = 0.0
    X = 0.05 * G.clone()          # M = (1 - mu) G at step 1 with mu = 0.95 (Nesterov: (1-mu^2)G)
    group = dict(lr=0.02, momentum=0.95, mu2=0.99, eps=1e-8, weight_decay=0.1,
                 decay_style="adaptive", scale="none", clamp_c=0.0, matrix_shape=(M, N))
    eta, rho = rules.namo_d_step(group, [G], X, [{"step": 1}])
    lr_t = 0.02 * math.sqrt(1 - 0.99) / (1 - 0.95)
    d = X[0].norm(dim=0) / ((0.01 * (G[0] ** 2).sum(0)).sqrt() + 1e-8)
    torch.testing.assert_close(eta[0, 0].double(), (d * lr_t).clamp(max=1), rtol=1e-6, atol=0)
    assert torch.equal(eta[1], torch.zeros(1, N, dtype=eta.dtype))
    assert torch.equal(rho[1], torch.ones(1, N, dtype=rho.dtype))


# ---- dtypes: what the transforms return and the engine gathers --------------------------------

ITERATIVE = ["newton_schulz", "cubic", "polar_express", "gram"]


@pytest.mark.parametrize("ns", ITERATIVE + ["svd"])
@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float64])
def test_result_dtypes_hold_what_the_transforms_return(ns, ns_dtype, x_dtype):
    """ns_result_dtype / spectral_result_dtype: an iteration's D is in optimizer.ns_dtype, the
    SVD's and the spectral powers p != 0 in X's; the dtype each reports holds the transform's
    result exactly (it is what the distributed engine gathers D in)."""
    X = torch.randn(2, 6, 9, generator=torch.Generator().manual_seed(4), dtype=x_dtype)
    nsd = getattr(torch, ns_dtype)
    group = dict(ns=ns, ns_steps=3, ns_dtype=ns_dtype, ns_eps=1e-7, ns_norm="frobenius",
                 coupled_steps=5)
    want = nsd if ns != "svd" else x_dtype
    assert rules.ns_result_dtype(group, X) == want
    assert rules.orthogonalize_transform(group, X.clone()).dtype == want
    for p in (0, 0.5, 1):
        group["power"] = p
        rd = rules.spectral_result_dtype(group, X)
        assert rd == (want if p == 0 else x_dtype), p
        D = rules.spectral_power_transform(group, X.clone())
        assert torch.promote_types(D.dtype, rd) == rd, (p, D.dtype, rd)
        if p == 0:
            assert D.dtype == want


def test_auto_ns_dtype_is_the_devices(monkeypatch):
    """optimizer.ns_dtype=auto asks optim/capability.py about the device's type."""
    from optim import capability
    asked = []

    def fake(device_type):
        asked.append(device_type)
        return capability.Choice(torch.float16 if device_type == "cpu" else torch.float64, "")

    monkeypatch.setattr(capability, "ns_auto", fake)
    assert rules.resolve_ns_dtype("auto", torch.device("cpu")) == torch.float16
    assert rules.resolve_ns_dtype("auto", "cpu") == torch.float16
    assert asked == ["cpu", "cpu"]
    X = torch.randn(1, 4, 6)
    assert rules.ns_result_dtype(dict(ns="newton_schulz", ns_dtype="auto"), X) == torch.float16


def cubic64(x, steps, eps):
    """The cubic Newton-Schulz iteration in float64 from its equations: X0 = X / (||X||_F + eps)
    on the short side, X <- 1.5 X - 0.5 X Xᵀ X (coefficients (2, -1.5, 0.5) as the repo's
    odd polynomial writes it: a X + (b A + c A²) X)."""
    x = x.double()
    tall = x.shape[0] > x.shape[1]
    y = x.T if tall else x
    y = y / (y.norm() + eps)
    for _ in range(steps):
        a = y @ y.T
        y = 2.0 * y + (-1.5 * a + 0.5 * a @ a) @ y
    return y.T if tall else y


@pytest.mark.parametrize("shape", [(2, 6, 10), (2, 10, 6)])
def test_spectral_power_zero_runs_the_chosen_iteration(shape):
    """p = 0 with optimizer.ns=cubic is the cubic (3 steps, a large eps that counts), not the
    quintic spectral_power runs for ns=newton_schulz, with a workspace too (its buffers used);
    p = 1/2 with ns=cubic is still the coupled square root (float64 SVD)."""
    X = 0.3 * torch.randn(shape, generator=torch.Generator().manual_seed(5))
    group = dict(ns="cubic", ns_steps=3, ns_dtype="float32", ns_eps=0.5, ns_norm="frobenius",
                 coupled_steps=30, power=0)
    want = torch.stack([cubic64(x, 3, 0.5) for x in X])
    for work in (None, spectral.Workspace()):
        got = rules.spectral_power_transform(group, X.clone(), work)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
        if work is not None:
            assert {"ns_x", "ns_y", "ns_a", "ns_b"} <= set(work._buffers)
            assert work._buffers["ns_x"].dtype == torch.float32
    group["power"] = 0.5
    U, S, Vh = torch.linalg.svd(X.double(), full_matrices=False)
    half = U @ torch.diag_embed(S.sqrt()) @ Vh
    got = rules.spectral_power_transform(group, X.clone())
    assert ((got.double() - half).norm() / half.norm()) < 2e-2


def test_spectral_power_zero_iterates_in_ns_dtype_in_the_workspace():
    """p = 0 with the quintic and a workspace: the iteration's buffers are in optimizer.ns_dtype
    (bf16 here) and so is its result."""
    X = torch.randn(2, 6, 10, generator=torch.Generator().manual_seed(6))
    group = dict(ns="newton_schulz", ns_steps=2, ns_dtype="bfloat16", ns_eps=1e-7,
                 ns_norm="frobenius", coupled_steps=5, power=0)
    work = spectral.Workspace()
    D = rules.spectral_power_transform(group, X, work)
    assert D.dtype == torch.bfloat16
    assert {b.dtype for k, b in work._buffers.items() if k.startswith("ns_")} == {torch.bfloat16}


# ---- which chains report a Newton-Schulz dtype (summary.json's ns_dtype) ---------------------

class Matrices(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ws = torch.nn.ParameterList(torch.nn.Parameter(0.02 * torch.randn(8, 12))
                                         for _ in range(2))


@pytest.mark.parametrize("name,ns,want", [
    ("muon", "newton_schulz", "float32"), ("namo_d", "cubic", "float32"),
    ("muon", "svd", None), ("muon_svd", "newton_schulz", None),
    ("adamz", "newton_schulz", "float32"), ("adamz", "svd", None),
    ("adams", "newton_schulz", None), ("msgd", "newton_schulz", None),
    ("dion", "newton_schulz", None), ("adamh", "newton_schulz", None),
])
def test_the_newton_schulz_dtype_is_reported_where_an_iteration_runs(name, ns, want):
    """build_optimizer records optimizer.ns_dtype (for summary.json) exactly when the chain runs
    optimizer.ns's iteration: the orthogonalizing chains and the spectral power p = 0 with an
    iterative ns; not the SVD, the rank-limited SVD, p = 1/2 or 1, Dion, Adam's hyperball."""
    torch.manual_seed(0)
    opt = build_optimizer(Matrices(), OptimizerConfig(name=name, ns=ns, ns_dtype="float32",
                                                      lr=0.02, weight_decay=0.0), log=quiet)
    assert opt.ns_dtype == want


# ---- NAMO / NAMO-D on a parameter of several matrices (a split qkv: (k, m, n) views) ----------

def test_namo_step_sizes_each_matrix_of_one_parameter():
    """One parameter of 3 matrices (and one of 1) whose gradients differ 100x in scale: NAMO's v
    and alpha per matrix (not per parameter), against the float64 equations at step 1 with a
    nonzero v before it (state carried): v <- mu2 v + (1 - mu2) ||G_i||^2, alpha_i = lr_t
    ||M_i|| / (sqrt(v_i) + eps), eta = min(alpha s, 1), rho = 1 - wd min(alpha, 1)."""
    g = torch.Generator().manual_seed(17)
    G = [torch.randn(3, M, N, generator=g, dtype=torch.float64)
         * torch.tensor([1.0, 100.0, 0.01], dtype=torch.float64).view(-1, 1, 1),
         torch.randn(1, M, N, generator=g, dtype=torch.float64)]
    X = torch.cat([0.3 * x + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
                   for x in G])
    v0 = [torch.tensor([2.0, 3.0e4, 1e-4], dtype=torch.float64),
          torch.tensor([5.0], dtype=torch.float64)]
    states = [{"step": 2, "grad_norm_sq": v.float()} for v in v0]   # NAMO's v is float32
    lr, mu, mu2, eps, wd = 0.4, 0.9, 0.95, 1e-8, 0.5
    group = dict(lr=lr, momentum=mu, mu2=mu2, eps=eps, weight_decay=wd, decay_style="adaptive",
                 scale="moonlight", matrix_shape=(M, N))
    eta, rho = rules.namo_step(group, G, X.clone(), states)
    lr_t = lr * math.sqrt(1 - mu2 ** 2) / (1 - mu ** 2)
    v = torch.cat([mu2 * v + (1 - mu2) * (x ** 2).sum(dim=(1, 2)) for v, x in zip(v0, G)])
    alpha = lr_t * X.norm(dim=(1, 2)) / (v.sqrt() + eps)
    s = 0.2 * math.sqrt(N)
    assert (alpha * s > 1).any() and (alpha * s < 1).any() and (alpha > 1).any()
    torch.testing.assert_close(eta.reshape(-1).double(), (alpha * s).clamp(max=1),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(rho.reshape(-1).double(), 1 - wd * alpha.clamp(max=1),
                               rtol=1e-6, atol=0)
    for st, want in zip(states, v.split([3, 1])):
        torch.testing.assert_close(st["grad_norm_sq"].double(), want, rtol=1e-6, atol=0)


def test_namo_d_step_per_column_of_each_matrix_of_one_parameter():
    """NAMO-D on one parameter of 3 matrices: V and d per column of each matrix (the clamp's
    mean per matrix), c = 0.5 binding, against float64 at step 1."""
    g = torch.Generator().manual_seed(19)
    G = torch.randn(3, M, N, generator=g, dtype=torch.float64)
    G = G * torch.linspace(0.05, 3.0, N, dtype=torch.float64) * torch.tensor(
        [1.0, 10.0, 0.1], dtype=torch.float64).view(-1, 1, 1)
    X = (1 - 0.9 ** 2) * G + 0.02 * torch.randn(G.shape, generator=g, dtype=torch.float64)
    lr, mu, mu2, eps, wd, c = 0.05, 0.9, 0.95, 1e-8, 0.5, 0.5
    group = dict(lr=lr, momentum=mu, mu2=mu2, eps=eps, weight_decay=wd, decay_style="adaptive",
                 scale="moonlight", clamp_c=c, matrix_shape=(M, N))
    state = {"step": 1}
    eta, rho = rules.namo_d_step(group, [G], X.clone(), [state])
    lr_t = lr * math.sqrt(1 - mu2) / (1 - mu)
    V = (1 - mu2) * (G ** 2).sum(dim=1)                                   # (3, n)
    raw = (X ** 2).sum(dim=1).sqrt() / (V.sqrt() + eps)
    mean = raw.mean(dim=1, keepdim=True)
    d = torch.minimum(torch.maximum(raw, c * mean), mean / c)
    assert (d != raw).sum() >= 2
    s = 0.2 * math.sqrt(N)
    torch.testing.assert_close(eta.reshape(3, N).double(), (d * lr_t * s).clamp(max=1),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(rho.reshape(3, N).double(), 1 - wd * (d * lr_t).clamp(max=1),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(state["col_grad_norm_sq"].double(), V, rtol=1e-6, atol=0)


def test_orthogonalize_transform_iterates_in_ns_dtype_in_the_workspace():
    """Muon's transform with a workspace runs its iteration in optimizer.ns_dtype: the buffers
    (and the result) in bf16 for ns_dtype=bfloat16 on a float32 stack."""
    X = torch.randn(2, 6, 10, generator=torch.Generator().manual_seed(6))
    group = dict(ns="newton_schulz", ns_steps=2, ns_dtype="bfloat16", ns_eps=1e-7,
                 ns_norm="frobenius")
    work = spectral.Workspace()
    D = rules.orthogonalize_transform(group, X, work)
    assert D.dtype == torch.bfloat16
    assert {b.dtype for k, b in work._buffers.items() if k.startswith("ns_")} == {torch.bfloat16}


def test_col_sum_sq_packs_at_most_a_chunk_per_op():
    """col_sum_sq_each packs small tensors into ops of at most SQUARE_CHUNK matrices, and a
    tensor larger than a chunk is squared a chunk at a time: the kept buffer never grows past
    SQUARE_CHUNK matrices; every tensor's column sums of squares as in float64."""
    m, n = 3, 13   # a shape no other test uses
    rules._SQUARES.pop((m, n, torch.float64), None)
    g = torch.Generator().manual_seed(23)
    for counts in ([1] * 20, [3 * rules.SQUARE_CHUNK], [2, 3 * rules.SQUARE_CHUNK, 1, 1]):
        tensors = [torch.randn(k, m, n, generator=g, dtype=torch.float64) for k in counts]
        got = rules.col_sum_sq_each(tensors)
        assert len(got) == len(tensors)
        for t, x in zip(got, tensors):
            assert t.dtype == torch.float64
            torch.testing.assert_close(t, (x ** 2).sum(dim=1), rtol=1e-12, atol=0)
        assert len(rules._SQUARES[(m, n, torch.float64)]) <= rules.SQUARE_CHUNK
