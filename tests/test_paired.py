"""The statistics behind sweep verdicts, against independent computations: the paired t
interval and p-value (by hand from a t table, and scipy.stats), the verdict's flip exactly
where the interval crosses 0, seeds-to-resolve, tokens-to-target interpolation and the
L(D) = alpha D^-beta + gamma fit on noiseless synthetic losses."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sweeper.paired import paired, seeds_to_resolve, t_quantile
from sweeper.speedup import effective_speedup, fit_scaling, tokens_to_reach

# Two-sided 95% Student-t quantiles from a printed table (df: value).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 7: 2.365, 9: 2.262, 15: 2.131}


@pytest.mark.parametrize("df, value", sorted(T_TABLE.items()))
def test_t_quantile_matches_the_table(df, value):
    assert t_quantile(df + 1) == pytest.approx(value, abs=1e-3)


def test_paired_interval_and_p_value_by_hand():
    a = {0: 1.930, 1: 1.951, 2: 1.902, 3: 1.944, 4: 1.925}
    b = {0: 1.941, 1: 1.960, 2: 1.921, 3: 1.947, 4: 1.936, 9: 1.0}   # seed 9: not shared
    r = paired("namo", a, "namo_d", b)
    d = np.array([a[s] - b[s] for s in range(5)])
    mean, sd = d.mean(), d.std(ddof=1)
    half = T_TABLE[4] * sd / math.sqrt(5)
    assert r.seeds == [0, 1, 2, 3, 4] and r.n == 5
    assert r.mean == pytest.approx(mean) and r.std == pytest.approx(sd)
    assert (r.low, r.high) == pytest.approx((mean - half, mean + half), abs=1e-5)
    # p-value from the t distribution's tail, computed independently of ttest_rel
    from scipy import stats
    t = mean / (sd / math.sqrt(5))
    assert r.p_value == pytest.approx(2 * stats.t.sf(abs(t), 4), rel=1e-9)
    assert r.boot_low < r.mean < r.boot_high
    assert r.decided and r.winner() == "namo" and r.verdict().startswith("namo better than namo_d")


def test_verdict_flips_exactly_when_the_interval_crosses_zero():
    base = np.array([-1.0, 1.0, -0.5, 0.5, 0.0]) * 0.01     # mean 0, sd s
    half = t_quantile(5) * base.std(ddof=1) / math.sqrt(5)
    for shift, decided in ((half * 0.999, False), (half * 1.001, True),
                           (-half * 0.999, False), (-half * 1.001, True)):
        a = {s: 2.0 + x + shift for s, x in enumerate(base)}
        b = {s: 2.0 for s in range(5)}
        r = paired("a", a, "b", b)
        assert r.decided is decided, (shift, r.low, r.high)
        assert ("tie at this budget" in r.verdict()) is (not decided)


def test_seeds_to_resolve_is_the_smallest_sufficient_n():
    sd, delta = 0.02, 0.005
    n = seeds_to_resolve(sd, delta)
    assert t_quantile(n) * sd / math.sqrt(n) < delta <= t_quantile(n - 1) * sd / math.sqrt(n - 1)
    assert seeds_to_resolve(sd, 0.0) is None and seeds_to_resolve(sd, 1e-9) is None


def test_one_seed_is_undecided():
    r = paired("a", {0: 1.0}, "b", {0: 2.0})
    assert r.n == 1 and not r.decided and "undecided" in r.verdict()


def test_tokens_to_reach_interpolates_between_evaluations():
    curve = [(0, 4.0), (100, 3.0), (200, 2.0), (300, 1.5)]
    assert tokens_to_reach(curve, 2.5) == pytest.approx(150)
    assert tokens_to_reach(curve, 3.0) == 100 and tokens_to_reach(curve, 4.5) == 0
    assert tokens_to_reach(curve, 1.0) is None


@pytest.mark.parametrize("alpha, beta, gamma", [(0.8, 0.35, 1.4), (2.5, 0.7, 2.9)])
def test_scaling_fit_recovers_a_noiseless_law(alpha, beta, gamma):
    D = np.array([0.25, 0.5, 1.0, 2.0, 4.0]) * 300_000
    scale = D.max()
    L = alpha * (D / scale) ** -beta + gamma
    fit = fit_scaling(D, L)
    assert (fit.alpha, fit.beta, fit.gamma) == pytest.approx((alpha, beta, gamma), rel=1e-4)
    assert max(abs(r) for r in fit.residuals) < 1e-8
    # an optimizer that reaches the baseline's 2x-budget loss with 1x the tokens: speedup 2
    assert effective_speedup(fit, fit.loss(2 * D[2]), D[2]) == pytest.approx(2.0, rel=1e-4)
    assert effective_speedup(fit, gamma - 0.1, D[2]) == math.inf
