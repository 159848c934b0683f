"""soap_muon and dynmuon: float64 references written from their equations here (the SVD for
DynMuon's U Σ^p Vᵀ kernel at negative p, SOAP's eigenbasis statistics step by step), one and
several steps on GPT-2 and Track 3 shapes; and the replay of the Track 3 records' own code
(tests/fixtures/soap_dynmuon.pt, written by scripts/compare_soap_dynmuon.py) to 1e-5."""
import math
import sys
from pathlib import Path

import pytest
import torch

from configs import load_config, to_object
from optim import spectral
from optim.config import OptimizerConfig
from optim.dynmuon import scheduled_power
from optim.registry import build_optimizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import compare_soap_dynmuon as csd  # noqa: E402

F64 = torch.float64
GPT2 = [(768, 768), (3072, 768), (768, 3072)]
TRACK3_MINI = [(64, 64), (256, 64), (64, 256)]     # Track 3's q / mlp fc / mlp proj, 12x smaller


def quiet(*a, **k):
    pass


def grads_for(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    return [torch.randn(m, 3, generator=g, dtype=F64) @ torch.randn(3, n, generator=g, dtype=F64)
            + 0.3 * torch.randn(m, n, generator=g, dtype=F64) for _ in range(steps)]


def run(cfg, shape, grads, seed=1):
    """Our optimizer on one float64 matrix; the weights after each step."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=F64) / math.sqrt(shape[1]))
    w0 = model.w.detach().clone()
    opt = build_optimizer(model, cfg, log=quiet)
    out = []
    for G in grads:
        model.w.grad = G.clone()
        opt.step()
        out.append(model.w.detach().clone())
    return w0, out


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---- DynMuon ---------------------------------------------------------------------------------

def taylor_reference(X, p, eps=1e-7):
    """(||X|| + eps)^p U c(Σn²) Vᵀ by the SVD, c(s) = 1 + δ(s - 1) + δ(δ - 1)/2 (s - 1)²,
    δ = p / 2, Σn = Σ / (||X|| + eps): the record's C = I + δE + δ(δ-1)/2 E² on Xn Xnᵀ, with an
    exact polar factor."""
    scale = X.norm() + eps
    U, S, Vh = torch.linalg.svd(X / scale, full_matrices=False)
    d = p / 2
    c = 1 + d * (S ** 2 - 1) + 0.5 * d * (d - 1) * (S ** 2 - 1) ** 2
    return scale ** p * (U * c) @ Vh


@pytest.mark.parametrize("shape,p", [(s, p) for s in GPT2 for p in (0.25, -0.25)]
                         + [(s, p) for s in TRACK3_MINI for p in (0.25, -0.25, 0.0)])
def test_taylor_power_is_the_quadratic_on_singular_values(shape, p):
    X = grads_for(shape, 1)[0]
    ours = spectral.taylor_power(X, p, spectral.polar_svd)
    assert rel(ours, taylor_reference(X, p)) < 1e-12


@pytest.mark.parametrize("p", [-0.25, 0.25, -1.0])
def test_exact_power_is_u_sigma_p_vt(p):
    """exact_power (negative p included) against the SVD's definition, rank-deficient too."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(96, 4, generator=g, dtype=F64) @ torch.randn(4, 64, generator=g, dtype=F64)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    want = (U[:, :4] * S[:4] ** p) @ Vh[:4]
    assert rel(spectral.exact_power(X, p), want) < 1e-10
    assert torch.isfinite(spectral.exact_power(torch.zeros(8, 8, dtype=F64), p)).all()


def test_taylor_power_near_identity_approaches_the_exact_power():
    """Where the series is about (Xn Xnᵀ = I: a single row has σn = 1) the kernel is exact;
    elsewhere (Σ σn² = 1 for any X) it is DynMuon's kernel, not U Σ^p Vᵀ."""
    X = torch.arange(1.0, 9, dtype=F64).view(1, 8)
    for p in (-0.25, 0.25):
        assert rel(spectral.taylor_power(X, p, spectral.polar_svd, eps=0),
                   spectral.exact_power(X, p)) < 1e-10


def test_schedule_is_the_records_sigmoid():
    group = dict(power_start=0.25, power_end=-0.25, power_tau=0.04, power_width=0.04,
                 power_steps=3200)
    for t in (1, 100, 129, 200, 3200):
        q = (t - 1) / 3200
        want = -0.25 + 0.5 / (1 + math.exp((q - 0.04) / 0.04))
        assert scheduled_power(group, t) == pytest.approx(want, abs=1e-15)
    assert scheduled_power(group, 1) > 0.11 and scheduled_power(group, 3200) < -0.2499
    assert scheduled_power(dict(group, power_width=1e-9), 3000) == -0.25   # no overflow


def dynmuon_reference(w0, grads, cfg):
    """The record's equations in float64 with an exact polar factor."""
    W, B, out = w0.clone(), torch.zeros_like(w0), []
    m, n = w0.shape
    for t, G in enumerate(grads, start=1):
        G = G / cfg.grad_divisor
        B = cfg.momentum * B + G
        X = cfg.momentum * B + G
        p = cfg.power_end + (cfg.power_start - cfg.power_end) / (
            1 + math.exp(((t - 1) / cfg.power_steps - cfg.power_tau) / cfg.power_width))
        D = taylor_reference(X, p, cfg.ns_eps) * math.sqrt(max(1, m / n))
        W = (1 - cfg.lr * cfg.weight_decay) * W - cfg.lr * D
        out.append(W)
    return out


def dyn_cfg(**kw):
    return to_object(load_config(["optimizer=dynmuon", "optimizer.ns=svd",
                                  *(f"optimizer.{k}={v}" for k, v in kw.items())])).optimizer


@pytest.mark.parametrize("shape,steps", [(s, 1) for s in GPT2] + [(s, 6) for s in TRACK3_MINI])
def test_dynmuon_steps_match_float64_reference(shape, steps):
    cfg = dyn_cfg(power_steps=20)       # p from +0.12 to -0.23 over the 6 steps
    grads = grads_for(shape, steps)
    w0, ours = run(cfg, shape, grads)
    for t, (a, b) in enumerate(zip(ours, dynmuon_reference(w0, grads, cfg))):
        prev = w0 if t == 0 else ours[t - 1]
        assert rel(a - prev, b - prev) < 1e-9, t


# ---- SOAP-Muon -------------------------------------------------------------------------------

def soap_reference(w0, grads, cfg):
    """SOAP-Muon's equations, one matrix, float64, exact polar factor (optim/soap_muon.py doc)."""
    mu, b2, beta, eps, freq = cfg.momentum, cfg.mu2, cfg.shampoo_beta, cfg.soap_eps, \
        cfg.precondition_frequency
    W, M = w0.clone(), torch.zeros_like(w0)
    m, n = w0.shape
    L, R, V = torch.zeros(m, m, dtype=F64), torch.zeros(n, n, dtype=F64), torch.zeros_like(w0)
    QL = QR = None
    s4 = lambda X: torch.linalg.matrix_norm(X @ X.T).sqrt().clamp_min(eps)  # noqa: E731
    out = []
    for t, G in enumerate(grads, start=1):
        M = mu * M + (1 - mu) * G
        U = (1 - mu) * G + mu * M
        X = U
        if QL is not None:
            P = QL.T @ U @ QR
            V = b2 * V + (1 - b2) * P ** 2
            S = QL @ (P / V.clamp_min(eps ** 2).sqrt()) @ QR.T
            X = S * s4(U) / s4(S)
        u, _, vh = torch.linalg.svd(X, full_matrices=False)
        W = W - cfg.lr * math.sqrt(max(1, m / n)) * (u @ vh)
        out.append(W)
        # lerp as ours: a non-square G leaves L or R singular, and the basis of that null space
        # (where P's rows still land) follows the rounding of L; the same ops, the same basis
        L = L.lerp(G @ G.T, 1 - beta)
        R = R.lerp(G.T @ G, 1 - beta)
        if QL is None:
            QL = torch.linalg.eigh(L + 1e-30 * torch.eye(m, dtype=F64)).eigenvectors.flip(-1)
            QR = torch.linalg.eigh(R + 1e-30 * torch.eye(n, dtype=F64)).eigenvectors.flip(-1)
        elif (t - 1) % freq == 0:
            o = torch.argsort(torch.diag(QL.T @ L @ QL), descending=True)
            QL, V = torch.linalg.qr(L @ QL[:, o]).Q, V[o]
            o = torch.argsort(torch.diag(QR.T @ R @ QR), descending=True)
            QR, V = torch.linalg.qr(R @ QR[:, o]).Q, V[:, o]
    return out


def soap_cfg(*extra):
    return to_object(load_config(["optimizer=soap_muon", "optimizer.ns=svd", *extra])).optimizer


@pytest.mark.parametrize("shape,steps,extra", [
    ((768, 768), 2, []), ((96, 64), 5, []), ((64, 96), 5, []),
    ((64, 256), 5, ["optimizer.precondition_frequency=2"]),
    ((256, 64), 4, ["optimizer.precondition_frequency=3"])])
def test_soap_muon_steps_match_float64_reference(shape, steps, extra):
    cfg = soap_cfg(*extra)
    grads = grads_for(shape, steps)
    w0, ours = run(cfg, shape, grads)
    for t, (a, b) in enumerate(zip(ours, soap_reference(w0, grads, cfg))):
        prev = w0 if t == 0 else ours[t - 1]
        assert rel(a - prev, b - prev) < 1e-8, t


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1536, 384), (384, 1536)])
def test_soap_muon_gpt2_mlp_shapes(shape):
    """Two steps (the eigenbases, then SOAP's rotation) on GPT-2's MLP shapes at half width:
    the same 4:1 tall and wide matrices (no SOAP path depends on the size), at an eighth of the
    float64 eigendecompositions' cost of 3072 x 3072 (about 30 s a shape on 2 cores)."""
    cfg = soap_cfg()
    grads = grads_for(shape, 2)
    w0, ours = run(cfg, shape, grads)
    ref = soap_reference(w0, grads, cfg)
    assert rel(ours[1] - ours[0], ref[1] - ours[0]) < 1e-8


def test_soap_rotation_changes_the_step():
    """From the second step on SOAP's update is not Muon's (the reference would catch a
    precondition link that did nothing, but say it plainly)."""
    grads = grads_for((64, 96), 2)
    _, soap = run(soap_cfg(), (64, 96), grads)
    _, muon = run(soap_cfg("optimizer.name=track3_baseline", "optimizer.ns_norm=schatten4"),
                  (64, 96), grads)
    assert torch.allclose(soap[0], muon[0], atol=1e-12)
    assert not torch.allclose(soap[1], muon[1], atol=1e-6)


def test_schatten4_start_of_newton_schulz():
    """ns_norm=schatten4 starts from X / (Σσ⁴)^(1/4), with and without a workspace."""
    X = grads_for((48, 32), 1)[0]
    S = torch.linalg.svdvals(X)
    want = X / (S ** 4).sum() ** 0.25
    for work in (None, spectral.Workspace()):
        got = spectral.newton_schulz(X, steps=0, dtype=F64, work=work, norm="schatten4")
        assert rel(got, want) < 1e-13


# ---- the records' own code -------------------------------------------------------------------

FIXTURE = torch.load(REPO / "tests/fixtures/soap_dynmuon.pt", weights_only=False)


@pytest.mark.parametrize("name", ["soap_muon", "dynmuon"])
def test_replays_the_records_code(name):
    case = FIXTURE["cases"][name]
    assert FIXTURE["commit"].endswith(csd.COMMIT) and case["file"] == csd.RECORDS[name][1]
    # one thread, as the fixture was written: SOAP's first bases of a non-square matrix span
    # a null space of G Gᵀ (or Gᵀ G) whose basis follows the rounding of G Gᵀ, and P's rows in
    # it all get ±1/sqrt(1 - mu2) at the first SOAP step: the record is as sensitive as we are
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = csd.run_ours(name, case["init"], case["grads"], case["overrides"])
    finally:
        torch.set_num_threads(threads)
    worst = csd.step_rel(case["init"], ours, case["theirs"])
    assert max(worst) < 1e-5, worst


def test_bad_values_are_one_line_errors():
    from configs.errors import UserError
    for kw in (dict(precondition_frequency=0), dict(shampoo_beta=1.0), dict(power_end=-2),
               dict(power_width=0), dict(grad_divisor=0), dict(power_steps=0),
               dict(ns_norm="spectral"), dict(soap_eps=0)):
        with pytest.raises(UserError, match="optimizer."):
            OptimizerConfig(**kw)
