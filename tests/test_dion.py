"""Dion (optim/dion.py) against a float64 re-implementation of the paper's Algorithm 1 (arXiv
2504.05295), its full-rank limit (the polar factor; feedback = plain momentum) and its error
feedback at low rank, on fresh random matrices."""
from __future__ import annotations

import math

import pytest
import torch

from optim import OptimizerConfig, build_optimizer
from optim.dion import initial_q


def quiet(*a, **k):
    pass


class Matrices(torch.nn.Module):
    def __init__(self, shapes, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(*s, generator=g))
                                         for s in shapes])


def reference(W, grads, lr, mu, wd, r):
    """Algorithm 1 in float64, one matrix."""
    W = W.double().clone()
    m, n = W.shape
    M = torch.zeros_like(W)
    Q = initial_q(n, r, W)
    for G in grads:
        B = M + G.double()
        P = torch.linalg.qr(B @ Q).Q
        R = B.T @ P
        M = B - (1 - mu) * P @ R.T
        Q = R / R.norm(dim=0, keepdim=True)
        W = (1 - lr * wd) * W - lr * math.sqrt(m / n) * P @ Q.T
    return W, M


@pytest.mark.parametrize("scale", [1.0, 1e-3])   # 1e-3: R's column norms below 1
@pytest.mark.parametrize("shape,rank", [((24, 16), None), ((16, 24), 4), ((20, 20), 7)])
def test_dion_equals_float64_algorithm(shape, rank, scale):
    torch.manual_seed(0)
    model = Matrices([shape]).double()
    W0 = model.w[0].detach().clone()
    cfg = OptimizerConfig(name="dion", lr=0.02, momentum=0.9, weight_decay=0.1, rank=rank,
                          route="patterns", matrix_patterns=["*"], vector_patterns=[])
    opt = build_optimizer(model, cfg, log=quiet)
    grads = [scale * torch.randn(shape, dtype=torch.float64) for _ in range(4)]
    for G in grads:
        model.w[0].grad = G.clone()
        opt.step()
    want_W, want_M = reference(W0, grads, 0.02, 0.9, 0.1, rank or min(shape))
    torch.testing.assert_close(model.w[0].detach(), want_W, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(opt.state[model.w[0]]["momentum_buffer"].view(shape), want_M,
                               rtol=1e-10, atol=1e-10)


def reference_transposed(W, grads, lr, mu, wd, r):
    """microsoft/dion's dion_reference.py (dion_update with transpose=True, one power iteration,
    exact QR) in float64, one wide matrix: the power iteration runs on Mᵀ, Q is m x r."""
    W = W.double().clone()
    m, n = W.shape
    M = torch.zeros_like(W)
    Q = initial_q(m, r, W)
    for G in grads:
        M = M + G.double()
        P = torch.linalg.qr(M.T @ Q).Q                  # power_iteration(M.T, Q): n x r
        R = M.T.T @ P                                   # B.T @ P with B = M.T: m x r
        M = M - (1 - mu) * R @ P.T                      # the transposed error feedback
        Q = R / R.norm(dim=0, keepdim=True)
        W = (1 - lr * wd) * W - math.sqrt(m / n) * lr * Q @ P.T
    return W, M


@pytest.mark.parametrize("shape,rank", [((16, 40), None), ((16, 40), 4), ((24, 16), 5)])
def test_dion_transpose_equals_float64_reference(shape, rank):
    """optimizer.dion_transpose=true: a wide matrix follows dion_reference.py's transposed step
    (and differs from the untransposed one); a tall one is not transposed (Algorithm 1)."""
    model = Matrices([shape], seed=2).double()
    W0 = model.w[0].detach().clone()
    cfg = OptimizerConfig(name="dion", lr=0.02, momentum=0.9, weight_decay=0.1, rank=rank,
                          dion_transpose=True, vector_patterns=[])
    opt = build_optimizer(model, cfg, log=quiet)
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4)]
    for G in grads:
        model.w[0].grad = G.clone()
        opt.step()
    r = rank or min(shape)
    wide = shape[0] < shape[1]
    want_W, want_M = (reference_transposed if wide else reference)(W0, grads, 0.02, 0.9, 0.1, r)
    torch.testing.assert_close(model.w[0].detach(), want_W, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(opt.state[model.w[0]]["momentum_buffer"].view(shape), want_M,
                               rtol=1e-10, atol=1e-10)
    plain_W, _ = reference(W0, grads, 0.02, 0.9, 0.1, r)
    assert ((plain_W - want_W).norm() > 1e-3 * (want_W - W0).norm()) == wide


def test_full_rank_dion_is_the_polar_factor_with_plain_momentum():
    """At full rank the feedback leaves mu B in the momentum, and with Q at B's right singular
    vectors the update is exactly U Vᵀ (the SVD's polar factor)."""
    from optim.dion import dion_post
    m, n = 12, 8
    B = torch.randn(1, m, n, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(B[0], full_matrices=False)
    state = {"momentum_buffer": B.clone(), "right_factor": Vh.T.unsqueeze(0).clone()}
    group = {"matrix_shape": (m, n), "rank": None, "rank_fraction": 1.0, "momentum": 0.9}
    D = dion_post(group, B.clone(), [state], [1])
    torch.testing.assert_close(D[0], U @ Vh, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state["momentum_buffer"], 0.9 * B, rtol=1e-10, atol=1e-10)
    # from the fixed start, repeated power iterations on one B converge to the same factor
    state = {"momentum_buffer": B.clone()}
    for _ in range(200):
        D = dion_post(group, B.clone(), [state], [1])
    torch.testing.assert_close(D[0], U @ Vh, rtol=1e-6, atol=1e-6)


def test_low_rank_feedback_keeps_the_discarded_part():
    """Rank r < min(m, n): the momentum keeps B's part outside span(P) whole, and only
    (1 - mu) of the part inside it is removed; the update has rank r."""
    from optim.dion import dion_post
    m, n, r, mu = 16, 12, 3, 0.9
    B = torch.randn(2, m, n, dtype=torch.float64)
    state = {"momentum_buffer": B.clone()}
    group = {"matrix_shape": (m, n), "rank": r, "rank_fraction": 1.0, "momentum": mu}
    D = dion_post(group, B.clone(), [state], [2])
    M = state["momentum_buffer"]
    Q = state["right_factor"]
    P = torch.linalg.qr(B @ initial_q(n, r, B)).Q
    outside = torch.eye(m, dtype=B.dtype) - P @ P.transpose(-2, -1)
    torch.testing.assert_close(outside @ M, outside @ B, rtol=1e-10, atol=1e-10)
    inside = P @ P.transpose(-2, -1)
    torch.testing.assert_close(inside @ M, mu * inside @ B, rtol=1e-10, atol=1e-10)
    # the update P Qᵀ has rank r: P with orthonormal columns, Q with unit columns
    assert torch.linalg.svdvals(D)[:, r:].abs().max() < 1e-10 and Q.shape == (2, n, r)
    torch.testing.assert_close(Q.norm(dim=-2), torch.ones(2, r, dtype=B.dtype))


def test_rank_fraction_and_checks():
    from configs.errors import UserError
    from optim.dion import dion_rank
    assert dion_rank({"matrix_shape": (64, 128), "rank": None, "rank_fraction": 0.25}) == 16
    assert dion_rank({"matrix_shape": (64, 128), "rank": 500, "rank_fraction": 1.0}) == 64
    assert dion_rank({"matrix_shape": (128, 64), "rank": 500, "rank_fraction": 1.0}) == 64
    assert dion_rank({"matrix_shape": (64, 128), "rank": None, "rank_fraction": 0.001}) == 1
    with pytest.raises(UserError, match="rank_fraction"):
        OptimizerConfig(name="dion", rank_fraction=0.0)


def test_the_start_of_q_is_pinned():
    """Q's start is the float64 QR of a Gaussian seeded by Q_SEED + 7919 n + r, cast to the
    parameter's dtype: committed Dion results (docs/results/cpu_dion_rank) depend on it."""
    from optim.dion import Q_SEED
    for n, r, dtype in [(16, 4, torch.float32), (24, 24, torch.float64), (40, 3, torch.bfloat16)]:
        g = torch.Generator().manual_seed(Q_SEED + 7919 * n + r)
        want = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64)).Q.to(dtype)
        got = initial_q(n, r, torch.empty(0, dtype=dtype))
        assert got.dtype == dtype and torch.equal(got, want)


def test_a_group_from_before_dion_transpose_is_not_transposed():
    """A param group of a checkpoint written before optimizer.dion_transpose existed has no such
    key: it resumes untransposed, as every committed study ran; with the key, only a wide
    matrix (m < n) is transposed."""
    from optim.dion import transposed

    assert transposed({"matrix_shape": (4, 8)}) is False
    assert transposed({"matrix_shape": (4, 8), "dion_transpose": True}) is True
    assert transposed({"matrix_shape": (8, 4), "dion_transpose": True}) is False
    assert transposed({"matrix_shape": (4, 4), "dion_transpose": True}) is False
    assert transposed({"matrix_shape": (4, 8), "dion_transpose": False}) is False
