"""Gram Newton-Schulz (optim/polar.py's gram_iteration, optimizer.ns=gram) against two independent
references: its values, the composed odd polynomials applied to the singular values of an SVD
in float64 (U p_T(...p_1(S)) Vᵀ), and its cost, the FLOPs torch's FlopCounterMode counts
against the count written out by hand from the algorithm of the module doc:
  wide (B, m, n), T iterations, restart before iteration 2: the (m x n) products are R_0 = X_0
  X_0ᵀ, the final Q X_0 and, when T > 2, the restart's Q X_0 and X Xᵀ (2 B m² n FLOPs each);
  the (m x m) products are h_t (T), Q <- h Q (every iteration but the first and the restart's),
  R <- h R h (two, every iteration but the last) (2 B m³ FLOPs each);
  square: the plain odd polynomial, three (m x m) products per iteration.
The cost is what Gram Newton-Schulz is for ("about half the FLOPs for m << n")."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from optim import polar


def svd_reference(X, schedule):
    """U p(S) Vᵀ with p the composition of s -> a s + b s³ + c s⁵ over `schedule`, float64."""
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    for a, b, c in schedule:
        S = a * S + b * S ** 3 + c * S ** 5
    return U @ torch.diag_embed(S) @ Vh


def start(shape, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(*shape, generator=g, dtype=torch.float64)
    return X / (1.01 * torch.linalg.matrix_norm(X, keepdim=True))


def flops(fn, *args, **kwargs):
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops(), out


def gram_flops_by_hand(B, m, n, T, restarts=(2,)):
    restarted = [t for t in restarts if 0 < t < T]    # a restart needs a Q (t = 0 has none)
    wide = 2 + 2 * len(restarted)
    square = T + (T - 1 - len(restarted)) + 2 * (T - 1)
    return wide * 2 * B * m * m * n + square * 2 * B * m ** 3


@pytest.mark.parametrize("T", [1, 2, 3, 5])
@pytest.mark.parametrize("m, n", [(4, 32), (3, 5)])
def test_gram_iteration_on_a_wide_stack(T, m, n):
    X = start((2, m, n), seed=T)
    schedule = polar.coefficients(T)
    count, got = flops(polar.gram_iteration, X, schedule)
    assert count == gram_flops_by_hand(2, m, n, T)
    torch.testing.assert_close(got, svd_reference(X, schedule), rtol=0, atol=1e-11)


@pytest.mark.parametrize("restarts", [(), (0,), (1, 3), (2,)])
def test_gram_restarts_change_the_cost_not_the_values(restarts):
    X, T = start((3, 4, 16), seed=9), 5
    schedule = polar.coefficients(T)
    count, got = flops(polar.gram_iteration, X, schedule, restarts)
    assert count == gram_flops_by_hand(3, 4, 16, T, restarts)
    torch.testing.assert_close(got, svd_reference(X, schedule), rtol=0, atol=1e-11)


@pytest.mark.parametrize("T", [1, 5])
def test_a_square_stack_takes_the_plain_odd_polynomial(T):
    """Square: 3 products of 2 B m³ FLOPs per iteration (the plain kernel); the same values."""
    X = start((2, 6, 6), seed=20 + T)
    schedule = polar.coefficients(T)
    count, got = flops(polar.gram_iteration, X, schedule)
    assert count == T * 3 * 2 * 2 * 6 ** 3
    torch.testing.assert_close(got, svd_reference(X, schedule), rtol=0, atol=1e-11)


def test_gram_costs_about_half_of_polar_express_on_a_wide_matrix():
    """m << n: optimizer.ns=gram takes about half the FLOPs of polar_express (the same
    polynomials, the same start) and gives the same polar factor; a tall input is its
    transpose (the short side's Gram either way)."""
    g = torch.Generator().manual_seed(3)
    G = torch.randn(2, 8, 256, generator=g, dtype=torch.float64)
    f_gram, gram = flops(polar.orthogonalize, G, "gram", 5, torch.float64)
    f_plain, plain = flops(polar.orthogonalize, G, "polar_express", 5, torch.float64)
    assert f_gram == gram_flops_by_hand(2, 8, 256, 5)
    assert f_gram < 0.5 * f_plain         # 4 (m x n) products against 2 per iteration
    torch.testing.assert_close(gram, plain, rtol=0, atol=1e-12)
    f_tall, tall = flops(polar.orthogonalize, G.mT, "gram", 5, torch.float64)
    assert f_tall == f_gram
    torch.testing.assert_close(tall, gram.mT, rtol=0, atol=1e-12)


# ---- the dtype rule of every orthogonalizer (what the distributed engine gathers) -------------

@pytest.mark.parametrize("ns", sorted(polar.ORTHOGONALIZERS))
@pytest.mark.parametrize("ns_dtype, x_dtype", [("bfloat16", torch.float32),
                                               ("float32", torch.float64)])
def test_each_orthogonalizer_returns_the_dtype_its_rule_declares(ns, ns_dtype, x_dtype):
    """An iteration returns optimizer.ns_dtype, the SVD its input's dtype (the module doc's
    dtype rule), and the Chain's declared result dtype is the one it returns."""
    from optim.rules import TORCH_DTYPES, ns_result_dtype, orthogonalize_transform
    X = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1), dtype=x_dtype)
    group = dict(ns=ns, ns_steps=3, ns_dtype=ns_dtype, ns_eps=1e-7)
    want = x_dtype if ns == "svd" else TORCH_DTYPES[ns_dtype]
    assert polar.orthogonalizer(ns).result_dtype(TORCH_DTYPES[ns_dtype], x_dtype) == want
    assert orthogonalize_transform(group, X).dtype == ns_result_dtype(group, X) == want
