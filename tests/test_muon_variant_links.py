"""The post links of optim/muon_variants.py (NorMuon, AdaMuon, NorMuonH) called directly on a
stacked (S, m, n) update with per-parameter state, against the papers' equations written out
here in float64: the second moments' EMAs over two calls (the state each writes, by name and
shape), the eps of Ô = O / (sqrt(v) + eps) where it matters (a row or entry of O near zero),
the RMS alignment 0.2 sqrt(m n) / ||Ô||_F on a small-norm update, the released rule's
||O||_F / (||Ô||_F + eps) with an eps of the order of the norms, and NorMuonH's
1 / sqrt(max(v, eps)) with the clamp binding; tall and wide shapes both."""
from __future__ import annotations

import math

import pytest
import torch

from optim.muon_variants import (adamuon_post, norm_kept, normuon_post, normuonh_post,
                                 rms_aligned)

SHAPES = [(3, 5), (5, 3)]


def stack(shape, blocks, seed, scale=1.0):
    """A (sum(blocks), m, n) float64 stack; row 0 of the first matrix is tiny (eps matters)."""
    g = torch.Generator().manual_seed(seed)
    D = scale * torch.randn(sum(blocks), *shape, generator=g, dtype=torch.float64)
    D[0, 0] *= 1e-9
    return D


def fro(A):
    return math.sqrt(float((A * A).sum()))


@pytest.mark.parametrize("shape", SHAPES)
def test_rms_aligned_on_small_and_zero_matrices(shape):
    """Each matrix's RMS becomes exactly 0.2 also when ||U||_F is far below 1; a zero matrix
    stays zero (no nan)."""
    m, n = shape
    U = 1e-4 * stack(shape, [3], seed=1)
    U[2] = 0.0
    got = rms_aligned(U)
    for k in range(2):
        want = U[k] * (0.2 * math.sqrt(m * n) / fro(U[k]))
        torch.testing.assert_close(got[k], want, rtol=1e-13, atol=0)
        assert math.sqrt(float((got[k] ** 2).mean())) == pytest.approx(0.2, rel=1e-13)
    assert torch.equal(got[2], torch.zeros(shape, dtype=torch.float64))


@pytest.mark.parametrize("shape", SHAPES)
def test_norm_kept_with_eps_of_the_norms_order(shape):
    """normuon.py's U ||O||_F / (||U||_F + eps) sqrt(max(1, m/n)), eps as large as ||U||_F."""
    m, n = shape
    O, U = stack(shape, [2], seed=2), 0.3 * stack(shape, [2], seed=3)
    eps = 0.7
    got = norm_kept(O, U, eps)
    for k in range(2):
        want = U[k] * (fro(O[k]) / (fro(U[k]) + eps) * math.sqrt(max(1.0, m / n)))
        torch.testing.assert_close(got[k], want, rtol=1e-13, atol=0)


def normuon_reference(O, v, mu2, eps, rule):
    """Algorithm 1 of arXiv 2510.05491 on one matrix (v: (m, 1)); returns (step, new v)."""
    m, n = O.shape
    v = mu2 * v + (1 - mu2) * (O * O).mean(dim=1, keepdim=True)
    U = O / (v.sqrt() + eps)
    if rule == "paper":
        return U * (0.2 * math.sqrt(m * n) / fro(U)), v
    return U * (fro(O) / (fro(U) + eps) * math.sqrt(max(1.0, m / n))), v


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rule", ["paper", "released", None])
def test_normuon_post_two_calls_against_algorithm_1(shape, rule):
    """Two parameters (blocks 2 and 1) over two calls: the step and the per-row second moment
    "row_second_moment" ((k, m, 1) per parameter); scale_rule missing (a checkpoint from before
    the option) is the paper's rule. eps = 1e-3 against a row of O ~1e-9: eps decides that row."""
    m, n = shape
    blocks, mu2, eps = [2, 1], 0.9, 1e-3
    group = {"mu2": mu2, "eps": eps}
    if rule is not None:
        group["scale_rule"] = rule
    states = [{}, {}]
    v_ref = torch.zeros(3, m, 1, dtype=torch.float64)
    for call in range(2):
        D = stack(shape, blocks, seed=10 + call)
        got = normuon_post(group, D, states, blocks)
        for i in range(3):
            want, v_ref[i] = normuon_reference(D[i], v_ref[i], mu2, eps, rule or "paper")
            torch.testing.assert_close(got[i], want, rtol=1e-12, atol=0)
        assert [set(s) for s in states] == [{"row_second_moment"}] * 2
        torch.testing.assert_close(states[0]["row_second_moment"], v_ref[:2], rtol=1e-13, atol=0)
        torch.testing.assert_close(states[1]["row_second_moment"], v_ref[2:], rtol=1e-13, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_adamuon_post_two_calls_against_algorithm_1(shape):
    """AdaMuon (arXiv 2507.11005, Algorithm 1): per-entry V ("update_second_moment", like the
    parameter), Ô = O / (sqrt(V) + eps), RMS 0.2; the tiny row makes eps decide its entries."""
    m, n = shape
    blocks, mu2, eps = [1, 2], 0.8, 1e-3
    group = {"mu2": mu2, "eps": eps, "scale_rule": "released"}   # AdaMuon has one rule
    states = [{}, {}]
    V = torch.zeros(3, m, n, dtype=torch.float64)
    for call in range(2):
        D = stack(shape, blocks, seed=20 + call)
        got = adamuon_post(group, D, states, blocks)
        V = mu2 * V + (1 - mu2) * D * D
        for i in range(3):
            U = D[i] / (V[i].sqrt() + eps)
            torch.testing.assert_close(got[i], U * (0.2 * math.sqrt(m * n) / fro(U)),
                                       rtol=1e-12, atol=0)
        assert [set(s) for s in states] == [{"update_second_moment"}] * 2
        torch.testing.assert_close(states[0]["update_second_moment"], V[:1], rtol=1e-13, atol=0)
        torch.testing.assert_close(states[1]["update_second_moment"], V[1:], rtol=1e-13, atol=0)


@pytest.mark.parametrize("shape", SHAPES + [(4, 4)])   # square: per row, as the record
@pytest.mark.parametrize("scale", ["original", "moonlight", "none"])
def test_normuonh_post_two_calls_with_the_clamp_binding(shape, scale):
    """NorMuonH (modded-nanogpt normuon_update): U = s O, v <- mu2 v + (1 - mu2) mean(U²) along
    the long axis (per row where m >= n, else per column: "short_axis_second_moment"),
    D' = U / sqrt(max(v, eps)); the tiny row / column of O puts its v under eps."""
    m, n = shape
    blocks, mu2, eps = [2, 1], 0.95, 1e-6
    group = {"mu2": mu2, "eps": eps, "scale": scale}
    s = {"original": math.sqrt(max(1.0, m / n)), "moonlight": 0.2 * math.sqrt(max(m, n)),
         "none": 1.0}[scale]
    states = [{}, {}]
    axis = 1 if m >= n else 0
    v = torch.zeros(3, *((m, 1) if m >= n else (1, n)), dtype=torch.float64)
    for call in range(2):
        D = stack(shape, blocks, seed=30 + call)
        if m < n:
            D[0, :, 0] *= 1e-9          # a tiny column: the short axis of a wide matrix
        got = normuonh_post(group, D, states, blocks)
        for i in range(3):
            U = s * D[i]
            v[i] = mu2 * v[i] + (1 - mu2) * (U * U).mean(dim=axis, keepdim=True)
            want = U / torch.maximum(v[i], torch.tensor(eps, dtype=torch.float64)).sqrt()
            torch.testing.assert_close(got[i], want, rtol=1e-12, atol=0)
        assert bool((v[0] < eps).any())             # the clamp binds somewhere
        assert [set(st) for st in states] == [{"short_axis_second_moment"}] * 2
        torch.testing.assert_close(states[0]["short_axis_second_moment"], v[:2], rtol=1e-13, atol=0)
        torch.testing.assert_close(states[1]["short_axis_second_moment"], v[2:], rtol=1e-13, atol=0)


def test_the_links_return_float32_for_bf16_input_and_leave_it_unchanged():
    """Newton-Schulz may hand a bf16 O: every link computes in float32 and never writes D."""
    D = stack((4, 6), [2], seed=40).to(torch.bfloat16)
    before = D.clone()
    for post, group in ((normuon_post, {"mu2": 0.9, "eps": 1e-8}),
                        (adamuon_post, {"mu2": 0.9, "eps": 1e-8}),
                        (normuonh_post, {"mu2": 0.9, "eps": 1e-8, "scale": "original"})):
        out = post(group, D, [{}, {}], [1, 1])
        assert out.dtype == torch.float32 and torch.equal(D, before)
        ref = post(group, D.float(), [{}, {}], [1, 1])
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
