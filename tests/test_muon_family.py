"""The Muon family of issue 17, against float64 references written from the papers' equations:
Polar Express and Gram Newton-Schulz (optimizer.ns=polar_express|gram, optim/polar.py),
cautious weight decay (optimizer.cautious_wd), NorMuon and AdaMuon (optim/muon_variants.py);
one and several steps on fresh random matrices, and 2 ranks == 1 process (ZeRO-1 too)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optim import OptimizerConfig, build_optimizer, polar
from optim.rules import apply_update, shape_scale

from test_distributed_optim import (Matrices as RankMatrices, assert_same_on_every_rank, config,
                                    set_grads, spawn)


def quiet(*args, **kwargs):
    pass


SHAPES = [(48, 32), (48, 32), (32, 80), (32, 32), (96, 32)]


class Matrices(torch.nn.Module):
    def __init__(self, shapes, seed=0, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.ws = torch.nn.ParameterList(
            torch.nn.Parameter(0.02 * torch.randn(s, generator=g, dtype=dtype)) for s in shapes)


def random_grads(shapes, steps, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=dtype) for s in shapes] for _ in range(steps)]


def run(model, opt, grads):
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        opt.step()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---- 1. Polar Express: the coefficients from the paper's equations ---------------------------

def _p(c, x):
    return c[0] * x + c[1] * x ** 3 + c[2] * x ** 5


def optimal_quintic(l, u):
    """argmin over odd quintics p of max_{x in [l, u]} |1 - p(x)| (arXiv 2505.16932, Sec. 4):
    by Chebyshev's equioscillation theorem 1 - p alternates +-E at l, q, r, u with q, r the
    interior extrema (p'(x) = 0); Remez: solve the 4 x 4 system, move q, r to the new extrema."""
    if l / u > 1 - 5e-6:   # the interval collapsed: the limit polynomial (15/8, -10/8, 3/8)
        return 15 / 8 / u, -10 / 8 / u ** 3, 3 / 8 / u ** 5
    q, r = (3 * l + u) / 4, (l + 3 * u) / 4
    for _ in range(100):
        M = np.array([[x, x ** 3, x ** 5, (-1) ** i] for i, x in enumerate((l, q, r, u))])
        a, b, c, _ = np.linalg.solve(M, np.ones(4))
        d = math.sqrt(9 * b * b - 20 * a * c)       # p'(x) = a + 3 b x² + 5 c x⁴ = 0
        new = sorted(math.sqrt(z) for z in ((-3 * b - d) / (10 * c), (-3 * b + d) / (10 * c)))
        if abs(new[0] - q) < 1e-15 and abs(new[1] - r) < 1e-15:
            break
        q, r = new
    return a, b, c


def polar_express_schedule(steps=8, l=1e-3, cushion=0.02407327424182761):
    """The paper's composition: p_t optimal on [max(l_t, cushion u_t), u_t], recentred so that
    p_t(l_t) + p_t(u_t) = 2; l_{t+1} = p_t(l_t), u_{t+1} = 2 - l_{t+1}; from [1e-3, 1]."""
    u, out = 1.0, []
    for _ in range(steps):
        c = optimal_quintic(max(l, cushion * u), u)
        c = tuple(x * 2 / (_p(c, l) + _p(c, u)) for x in c)
        out.append(c)
        l = _p(c, l)
        u = 2 - l
    return out


def test_polar_express_coefficients_follow_from_the_equations():
    derived = polar_express_schedule(len(polar.POLAR_EXPRESS_RAW))
    for ours, published in zip(derived, polar.POLAR_EXPRESS_RAW):
        assert np.allclose(ours, published, rtol=1e-8, atol=0), (ours, published)
    # the safety factor 1.01 on the argument of every polynomial but the last
    for (a, b, c), (a0, b0, c0) in zip(polar.POLAR_EXPRESS_COEFFS[:-1], polar.POLAR_EXPRESS_RAW):
        assert np.allclose((a, b, c), (a0 / 1.01, b0 / 1.01 ** 3, c0 / 1.01 ** 5), rtol=1e-15)
    assert polar.POLAR_EXPRESS_COEFFS[-1] == (1.875, -1.25, 0.375)


def polar_express64(G, steps):
    """The iteration in float64 with the derived coefficients: X0 = G / (1.01 ||G||_F + 1e-7),
    X <- p_t(X) = a X + b (X Xᵀ) X + c (X Xᵀ)² X."""
    coeffs = [(a / 1.01, b / 1.01 ** 3, c / 1.01 ** 5) for a, b, c in polar_express_schedule(7)]
    coeffs.append((1.875, -1.25, 0.375))
    X = G.double()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-7)
    for t in range(steps):
        a, b, c = coeffs[min(t, len(coeffs) - 1)]
        A = X @ X.mT
        X = a * X + b * A @ X + c * A @ A @ X
    return X


def ill_conditioned(m, n, cond, stack=3, seed=0):
    """(stack, m, n) matrices U diag(s) Vᵀ with singular values log-spaced over [1/cond, 1]."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(stack, m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(stack, n, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(cond), k, dtype=torch.float64)
    return (U * s.unsqueeze(-2)) @ V.mT


def orthogonality_error(X) -> float:
    """max |σ_i - 1| over the stack, by float64 SVD."""
    return (torch.linalg.svdvals(X.double()) - 1).abs().amax().item()


@pytest.mark.parametrize("method", ["polar_express", "gram"])
@pytest.mark.parametrize("shape", [(40, 96), (96, 40), (48, 48)])
@pytest.mark.parametrize("steps", [1, 5, 10])
def test_polar_kernels_equal_their_float64_reference(method, shape, steps):
    """In float64 both kernels are the paper's iteration (Gram NS: rewritten on the Gram matrix,
    with its restart, the same polynomials), on fresh random and ill-conditioned stacks."""
    for G in (torch.randn(4, *shape, dtype=torch.float64), ill_conditioned(*shape, 1e3)):
        got = polar.orthogonalize(G, method=method, steps=steps, dtype=torch.float64)
        assert got.dtype == torch.float64 and got.shape == G.shape
        assert (got - polar_express64(G, steps)).abs().max() < 1e-10


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (128, 128)])
@pytest.mark.parametrize("cond", [1e2, 1e3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_polar_express_and_gram_at_least_as_accurate_as_the_quintic(shape, cond, dtype):
    """5 iterations each (Polar Express: 3 matmuls per iteration, as the classic quintic; Gram NS:
    the same polynomials on the Gram matrix), on ill-conditioned inputs, in float32 and bf16:
    the polar factor's max |σ_i - 1| is no worse than Muon's (3.4445, -4.7750, 2.0315)."""
    G = ill_conditioned(*shape, cond).float()
    err = {m: orthogonality_error(polar.orthogonalize(G, method=m, steps=5, dtype=dtype))
           for m in ("newton_schulz", "polar_express", "gram")}
    assert err["polar_express"] <= err["newton_schulz"], err
    assert err["gram"] <= err["newton_schulz"], err
    if cond == 1e2:   # all singular values in the scheduled interval: well inside the band
        assert err["polar_express"] < 0.2 and err["gram"] < 0.2, err


def test_gram_restart_keeps_bf16_close_to_float64():
    """Without the restart, bf16 rounding in R accumulates; with it, Gram NS in bf16 stays as
    close to the float64 iteration as Polar Express's plain form in bf16 (within 2x)."""
    G = ill_conditioned(64, 256, 1e2).float()
    ref = polar_express64(G, 5)
    plain = (polar.orthogonalize(G, method="polar_express", steps=5, dtype=torch.bfloat16)
             .double() - ref).abs().max()
    gram = (polar.orthogonalize(G, "gram", 5, dtype=torch.bfloat16).double() - ref).abs().max()
    assert gram < 2 * plain, (gram, plain)


def test_ns_names_are_checked():
    from configs.errors import UserError
    with pytest.raises(UserError, match="polar_express"):
        OptimizerConfig(name="muon", ns="polar")


# ---- 2. cautious weight decay ----------------------------------------------------------------

@pytest.mark.parametrize("tensor_rho", [False, True])
def test_cautious_decay_touches_exactly_the_sign_agreeing_entries(tensor_rho):
    g = torch.Generator().manual_seed(0)
    W = [torch.randn(2, 6, 5, generator=g), torch.randn(1, 6, 5, generator=g)]
    W[0][0, 0, 0] = 0.0                                      # zero weight: nothing to decay
    D = torch.randn(3, 6, 5, generator=g)
    D[1, 2, 3] = 0.0                                         # a zero update counts as agreeing
    rho = torch.rand(3, 1, 5, generator=g) * 0.1 + 0.85 if tensor_rho else 0.9
    before = [w.clone() for w in W]
    apply_update(W, D, 0.0, rho, [2, 1], cautious=True)     # eta = 0: the decay alone
    W0, Wn = torch.cat(before), torch.cat(W)
    agree = D * W0 >= 0
    changed = Wn != W0
    assert torch.equal(changed, agree & (W0 != 0))
    expected = torch.where(agree, W0 * rho if tensor_rho else W0 * 0.9, W0)
    assert torch.allclose(Wn, expected, rtol=1e-6, atol=0)
    # with a step: W - (1 - rho) I(D W >= 0) W - eta D, in float64
    W = [w.clone() for w in before]
    apply_update(W, D, 0.05, rho, [2, 1], cautious=True)
    W64, D64 = W0.double(), D.double()
    r64 = rho.double() if tensor_rho else rho
    want = W64 - (1 - r64) * (D64 * W64 >= 0) * W64 - 0.05 * D64
    assert (torch.cat(W).double() - want).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["muon", "namo", "namo_d", "normuon", "adamuon", "adamq"])
@pytest.mark.parametrize("style", ["adaptive", "decoupled"])
def test_cautious_wd_in_every_matrix_chain(name, style, monkeypatch):
    """Through the engine, for every chain: each step is W <- W - (1 - rho) I(D W >= 0) W - eta D
    with the chain's own (eta, rho, D), so exactly the sign-agreeing entries are decayed; and
    cautious_wd=false leaves the chain's numbers as they were (bit for bit)."""
    import optim.matrix
    seen, plain_apply = [], optim.matrix.apply_update

    def recording(W, D, eta, rho, blocks, work=None, cautious=False):
        seen.append(([w.clone() for w in W], D.clone(), eta, rho, cautious))
        plain_apply(W, D, eta, rho, blocks, work, cautious=cautious)
        seen[-1] += ([w.clone() for w in W],)
    monkeypatch.setattr(optim.matrix, "apply_update", recording)
    finals = {}
    for cautious in (False, True):
        model = Matrices(SHAPES, seed=1)
        cfg = OptimizerConfig(name=name, lr=0.02, weight_decay=0.5, cautious_wd=cautious,
                              ns_dtype="float32", decay_style=style)
        run(model, build_optimizer(model, cfg, log=quiet), random_grads(SHAPES, 3, seed=2))
        finals[cautious] = torch.cat([p.detach().flatten() for p in model.parameters()])
    skipped = 0
    for before, D, eta, rho, cautious, after in seen:
        if not cautious:
            continue
        W0, W1, D = torch.cat(before).double(), torch.cat(after).double(), D.double()
        r = rho.double() if isinstance(rho, torch.Tensor) else rho
        e = eta.double() if isinstance(eta, torch.Tensor) else eta
        agree = D * W0 >= 0
        want = W0 - (1 - r) * agree * W0 - e * D
        assert (W1 - want).abs().max() < 1e-7
        skipped += int((~agree).sum())
    assert skipped > 0
    assert not torch.equal(finals[False], finals[True])
    monkeypatch.undo()   # the plain path is the code before cautious_wd existed
    model = Matrices(SHAPES, seed=1)
    cfg = OptimizerConfig(name=name, lr=0.02, weight_decay=0.5, ns_dtype="float32",
                          decay_style=style)
    run(model, build_optimizer(model, cfg, log=quiet), random_grads(SHAPES, 3, seed=2))
    assert torch.equal(torch.cat([p.detach().flatten() for p in model.parameters()]),
                       finals[False])


# ---- 3. NorMuon and AdaMuon against float64 references --------------------------------------

def quintic64(X, steps=5, eps=1e-7):
    """Muon's quintic Newton-Schulz in float64 (the short side's Gram)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = X.shape[-2] > X.shape[-1]
    X = X.mT if tall else X
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


def polar64(X):
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def variant_reference(name, shapes, grads, w, lr, wd, mu, mu2, eps, nesterov, orth):
    """NorMuon (arXiv 2510.05491, Alg. 1) / AdaMuon (arXiv 2507.11005, Alg. 1), per matrix, in
    float64 (see optim/muon_variants.py's doc for the equations)."""
    w = [x.double().clone() for x in w]
    B = [0.0] * len(shapes)
    V = [0.0] * len(shapes)
    for step_grads in grads:
        for i, (m, n) in enumerate(shapes):
            G = step_grads[i].double()
            B[i] = mu * B[i] + (1 - mu) * G
            M = (1 - mu) * G + mu * B[i] if nesterov else B[i]
            if name == "adamuon":
                M = torch.sign(M)
            O = orth(M)
            second = (O * O).mean(dim=1, keepdim=True) if name == "normuon" else O * O
            V[i] = mu2 * V[i] + (1 - mu2) * second
            Oh = O / (V[i].sqrt() + eps)
            w[i] = w[i] - lr * wd * w[i] - lr * 0.2 * math.sqrt(m * n) / Oh.norm() * Oh
    return w


@pytest.mark.parametrize("name", ["normuon", "adamuon"])
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("nesterov", [True, False])
def test_variant_float64_svd_path_equals_reference(name, steps, nesterov):
    """float64 weights with ns=svd: every link runs in float64, so the update equals the
    reference to rounding."""
    lr, wd, mu, mu2, eps = 0.02, 0.1, 0.95, 0.9, 1e-8
    model = Matrices(SHAPES, seed=3, dtype=torch.float64)
    w0 = [p.detach().clone() for p in model.parameters()]
    cfg = OptimizerConfig(name=name, lr=lr, weight_decay=wd, momentum=mu, mu2=mu2, eps=eps,
                          nesterov=nesterov, ns="svd", scale="none")
    grads = random_grads(SHAPES, steps, seed=4, dtype=torch.float64)
    run(model, build_optimizer(model, cfg, log=quiet), grads)
    want = variant_reference(name, SHAPES, grads, w0, lr, wd, mu, mu2, eps, nesterov, polar64)
    for p, ref, w in zip(model.parameters(), want, w0):
        assert rel(p.detach() - w, ref - w) < 1e-10


@pytest.mark.parametrize("name,tol", [("normuon", 1e-5), ("adamuon", 1e-3)])
@pytest.mark.parametrize("steps", [1, 4])
def test_variant_newton_schulz_float32_matches_reference(name, tol, steps):
    """The default path (quintic Newton-Schulz in float32) against the float64 reference. AdaMuon
    divides each entry by its own RMS, so an entry of O near 0 amplifies float32 rounding:
    a looser bound there."""
    lr, wd, mu, mu2, eps = 0.02, 0.1, 0.95, 0.95, 1e-8
    model = Matrices(SHAPES, seed=5)
    w0 = [p.detach().clone() for p in model.parameters()]
    cfg = OptimizerConfig(name=name, lr=lr, weight_decay=wd, momentum=mu, mu2=mu2, eps=eps,
                          ns_dtype="float32")
    grads = random_grads(SHAPES, steps, seed=6)
    run(model, build_optimizer(model, cfg, log=quiet), grads)
    want = variant_reference(name, SHAPES, grads, w0, lr, wd, mu, mu2, eps, True, quintic64)
    for p, ref, w in zip(model.parameters(), want, w0):
        assert rel(p.detach().double() - w.double(), ref - w.double()) < tol


def normuon_released_reference(shapes, grads, w, lr, wd, mu, mu2, eps, orth):
    """zichongli5/NorMuon's normuon.py (normuon_update + SingleDeviceNorMuon.step, Nesterov) in
    float64, line by line: the orthogonalized O keeps its Frobenius norm after the per-row
    normalization and is scaled by sqrt(max(1, m/n)); eps in both places."""
    w = [x.double().clone() for x in w]
    M = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    v = [torch.zeros(s[0], 1, dtype=torch.float64) for s in shapes]
    for step_grads in grads:
        for i, (m, n) in enumerate(shapes):
            grad = step_grads[i].double().clone()
            M[i].lerp_(grad, 1 - mu)
            update = orth(grad.lerp_(M[i], mu))
            vnorm = update.norm(dim=(-2, -1), keepdim=True)
            v[i].lerp_(torch.mean(update * update, dim=-1, keepdim=True), 1 - mu2)
            update = update * (1 / (v[i].sqrt() + eps))
            update = update * (vnorm / (update.norm(dim=(-2, -1), keepdim=True) + eps))
            update = update * max(1, m / n) ** 0.5
            w[i] = w[i] * (1 - lr * wd) - lr * update
    return w


@pytest.mark.parametrize("steps", [1, 4])
def test_normuon_released_rule_equals_released_code_in_float64(steps):
    """optimizer.scale_rule=released with ns=svd in float64 against normuon.py's equations (its
    eps 1e-10, which optimizer.eps sets), on tall, wide and square matrices."""
    lr, wd, mu, mu2, eps = 0.02, 0.1, 0.95, 0.95, 1e-10
    model = Matrices(SHAPES, seed=11, dtype=torch.float64)
    w0 = [p.detach().clone() for p in model.parameters()]
    cfg = OptimizerConfig(name="normuon", lr=lr, weight_decay=wd, momentum=mu, mu2=mu2, eps=eps,
                          ns="svd", scale="none", scale_rule="released")
    grads = random_grads(SHAPES, steps, seed=12, dtype=torch.float64)
    run(model, build_optimizer(model, cfg, log=quiet), grads)
    want = normuon_released_reference(SHAPES, grads, w0, lr, wd, mu, mu2, eps, polar64)
    paper = variant_reference("normuon", SHAPES, grads, w0, lr, wd, mu, mu2, eps, True, polar64)
    for p, ref, other, w in zip(model.parameters(), want, paper, w0):
        assert rel(p.detach() - w, ref - w) < 1e-10
        assert rel(other - w, ref - w) > 0.1      # the paper's rule: a step 1.1-1.8x as long here


@pytest.mark.parametrize("shape", [(768, 768), (2304, 768), (3072, 768), (768, 3072)])
def test_normuon_rule_ratio_is_the_documented_factor(shape):
    """With an exactly orthogonal O (ns=svd), paper step / released step = 0.2 sqrt(max(m, n)) /
    sqrt(max(1, m/n)) whatever v holds (both rescale the same Ô): 5.54 on GPT-2's 768 x 768,
    2304 x 768 and 3072 x 768, 11.09 on mlp.c_proj's 768 x 3072 (the figures of
    configs/optimizer/normuon.yaml)."""
    m, n = shape
    steps = {}
    for rule in ("paper", "released"):
        model = Matrices([shape], seed=13, dtype=torch.float64)
        w0 = model.ws[0].detach().clone()
        cfg = OptimizerConfig(name="normuon", lr=1.0, weight_decay=0.0, eps=1e-10, ns="svd",
                              scale_rule=rule)
        run(model, build_optimizer(model, cfg, log=quiet),
            random_grads([shape], 2, seed=14, dtype=torch.float64))
        steps[rule] = (model.ws[0].detach() - w0).norm().item()
    want = 0.2 * math.sqrt(max(m, n)) / math.sqrt(max(1.0, m / n))
    assert steps["paper"] / steps["released"] == pytest.approx(want, rel=1e-9)
    assert round(want, 2) == {(768, 3072): 11.09}.get(shape, 5.54)


def test_scale_rule_is_checked():
    from configs.errors import UserError
    with pytest.raises(UserError, match="scale_rule=both must be one of paper, released"):
        OptimizerConfig(name="normuon", scale_rule="both")
    with pytest.raises(UserError, match="scale_rule=released is NorMuon's"):
        OptimizerConfig(name="muon", scale_rule="released")
    with pytest.raises(UserError, match="dion_transpose=True is Dion's"):
        OptimizerConfig(name="muon", dion_transpose=True)


def test_normuon_matches_pytorch_optimizer():
    """pytorch-optimizer's NorMuon with the paper's RMS scaling (update_scale="match_rms"; its
    default preserve_norm keeps ||O||): the same update up to its Newton-Schulz's rounding."""
    po = pytest.importorskip("pytorch_optimizer")
    lr, wd = 0.02, 0.1
    ours, ref = Matrices(SHAPES, seed=7), Matrices(SHAPES, seed=7)
    w0 = [p.detach().clone() for p in ours.parameters()]
    opt = build_optimizer(ours, OptimizerConfig(name="normuon", lr=lr, weight_decay=wd, eps=1e-10,
                                                ns_dtype="float32"), log=quiet)
    ref_opt = po.NorMuon([{"params": list(ref.parameters()), "use_muon": True}], lr=lr,
                         weight_decay=wd, momentum=0.95, beta2=0.95, nesterov=True,
                         update_scale="match_rms", eps=1e-10)
    grads = random_grads(SHAPES, 4, seed=8)
    run(ours, opt, grads)
    run(ref, ref_opt, grads)
    for a, b, w in zip(ours.parameters(), ref.parameters(), w0):
        assert rel(a.detach() - w, b.detach() - w) < 2e-2


@pytest.fixture
def heavyball_eager(monkeypatch):
    """heavyball (dev extra) with torch.compile off: its functions run as plain PyTorch."""
    hb = pytest.importorskip("heavyball.utils")
    monkeypatch.setattr(hb, "compile_mode", None)
    return hb


@pytest.mark.parametrize("shape,cond", [((48, 80), 50.0), ((96, 32), 200.0)])
def test_polar_express_matches_heavyball_msign(heavyball_eager, shape, cond):
    """heavyball's Polar Express (its own copy of the paper's table, safety factor included):
    the same coefficients, and in float64 the same polar factor once both have converged (its
    start is G / ||G||, ours G / (1.01 ||G||), so only the converged results are comparable)."""
    for ours, theirs in zip(polar.POLAR_EXPRESS_COEFFS, heavyball_eager.ABC_LIST_STABLE):
        assert ours == pytest.approx(theirs, rel=1e-14)
    G = ill_conditioned(*shape, cond=cond, stack=1, seed=11)[0]
    ours = polar.orthogonalize(G, "polar_express", 10, dtype=torch.float64)
    theirs = heavyball_eager.msign(G, 10)
    exact = polar64(G)
    assert (ours - exact).abs().max() < 1e-9 and (theirs - exact).abs().max() < 1e-9
    assert (ours - theirs).abs().max() < 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_cautious_decay_matches_heavyball(heavyball_eager, seed):
    """apply_update(cautious=True) against heavyball's update_param_(cautious_decay=True),
    p <- p (1 - lr wd I(p u >= 0)) - lr u, on fresh random weights and updates."""
    g = torch.Generator().manual_seed(seed)
    shapes, lr, wd = [(16, 24), (24, 16), (8, 8)], 0.03, 0.2
    ws = [torch.randn(s, generator=g) for s in shapes]
    D = torch.cat([torch.randn(s, generator=g).flatten() for s in shapes])
    blocks = [w.numel() for w in ws]
    ours = [w.clone() for w in ws]
    flat = [w.view(-1) for w in ours]
    apply_update(flat, D, lr, 1 - lr * wd, blocks, cautious=True)
    theirs = [w.clone() for w in ws]
    heavyball_eager.update_param_(theirs, [d.view(s) for d, s in zip(D.split(blocks), shapes)],
                                  lr, wd, cautious_decay=True)
    for a, b, w in zip(ours, theirs, ws):
        assert not torch.equal(b, w)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["normuon", "adamuon", "dion"])
def test_variant_state_round_trip(name):
    from test_optim import assert_resumes_exactly
    from configs import load_config, to_object
    cfg = to_object(load_config([f"optimizer={name}", "optimizer.split_qkv=true",
                                 "optimizer.cautious_wd=true"])).optimizer
    assert_resumes_exactly(cfg)


# ---- 4. 2 ranks == 1 process, ZeRO-1 too -----------------------------------------------------

VARIANTS = [("normuon", {}), ("normuon", {"scale_rule": "released"}), ("adamuon", {}), ("muon", {"ns": "polar_express"}),
            ("muon", {"ns": "gram"}), ("muon", {"cautious_wd": True}),
            ("namo_d", {"cautious_wd": True}), ("msgdz", {"ns": "gram"}),
            ("dion", {}), ("dion", {"rank": 3}), ("dion", {"rank": 3, "dion_transpose": True}),
            ("muonh", {}), ("adamh", {}), ("normuonh", {})]


def _variants_match_one_process(rank, world):
    for name, overrides in VARIANTS:
        for zero in (False, True):
            model, ref = RankMatrices(), RankMatrices()
            opt = build_optimizer(model, config(name, **overrides), log=quiet, zero=zero)
            ref_opt = build_optimizer(ref, config(name, distributed=False, **overrides),
                                      log=quiet)
            assert opt.parts["matrix"].world == world
            for step in range(3):
                set_grads(model, seed=step)
                set_grads(ref, seed=step)
                opt.step()
                ref_opt.step()
                what = f"{name} {overrides} zero={zero} step {step}"
                assert_same_on_every_rank(model, what)
                for p, q in zip(model.parameters(), ref.parameters()):
                    assert torch.equal(p, q), f"{what}: differs from one process"


def test_variants_two_ranks_equal_one_process(tmp_path):
    spawn(tmp_path, _variants_match_one_process)


@pytest.mark.parametrize("opt_args", [
    ["optimizer=dion", "optimizer.rank=8"],
    ["optimizer=normuon", "optimizer.ns=polar_express", "optimizer.cautious_wd=true"],
    ["optimizer=adamuon", "optimizer.ns=gram"],
    ["optimizer=normuonh", "train.zero=true"],
])
def test_new_names_train_tiny_under_torchrun(tmp_path, small_text, opt_args):
    """The new names and options through train.py with 2 processes: the ranks stay in sync."""
    from runs import launch, why
    common = ["model=tiny", "data=shakespeare_char", f"data.source={small_text}",
              f"data.root={tmp_path / 'data'}", "train.batch_size=4", "train.block_size=32",
              "train.max_iters=4", "train.grad_accum_steps=2", "train.eval_interval=100", "train.eval_iters=2",
              "train.log_interval=1", "threads=1", f"out_dir={tmp_path / 'run'}"]
    done = launch(common + opt_args, 2)
    assert done.returncode == 0, why(done)
    assert "ranks_in_sync=True" in done.stdout
