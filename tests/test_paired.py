"""The statistics behind sweep verdicts, against independent computations: the paired t
interval and p-value (by hand from a t table, and scipy.stats), the verdict's flip exactly
where the interval crosses 0, seeds-to-resolve, tokens-to-target interpolation and the
L(D) = alpha D^-beta + gamma fit on noiseless synthetic losses."""
from __future__ import annotations

import math
from pathlib import Path

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


# ---- the bootstrap, seeds-to-resolve and the L(D) fit against hand computations ----------------

def percentile_bootstrap(diffs, confidence, resamples, seed):
    """The percentile bootstrap written out with numpy: `resamples` resamples of the n
    differences with replacement (indices from default_rng(seed).integers), the mean of each,
    and the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of those means."""
    rng = np.random.default_rng(seed)
    n = len(diffs)
    idx = rng.integers(0, n, size=(resamples, n))
    means = np.array([np.mean([diffs[i] for i in row]) for row in idx])
    return (float(np.quantile(means, (1 - confidence) / 2)),
            float(np.quantile(means, (1 + confidence) / 2)))


DIFFS = np.array([-0.012, 0.003, -0.007, -0.021, 0.001, -0.009, 0.004])


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.5])
@pytest.mark.parametrize("seed", [0, 7])
def test_bootstrap_interval_is_the_percentile_bootstrap(confidence, seed):
    """bootstrap_interval at several levels and seeds equals the percentile bootstrap computed
    here with the same numpy Generator seed, to the last bit of its quantiles."""
    from sweeper.paired import bootstrap_interval
    got = bootstrap_interval(DIFFS, confidence=confidence, resamples=2000, seed=seed)
    assert got == pytest.approx(percentile_bootstrap(DIFFS, confidence, 2000, seed), rel=1e-12)


def test_bootstrap_levels_nest_and_paired_uses_95():
    """The 90% interval lies strictly inside the 95% one (a level not halved into two tails, or
    the tails swapped, breaks this), and paired() reports the 95% bootstrap with seed 0 and
    10000 resamples."""
    from sweeper.paired import bootstrap_interval
    lo90, hi90 = bootstrap_interval(DIFFS, confidence=0.9)
    lo95, hi95 = bootstrap_interval(DIFFS, confidence=0.95)
    assert lo95 < lo90 < DIFFS.mean() < hi90 < hi95
    r = paired("a", {s: 2.0 + d for s, d in enumerate(DIFFS)}, "b", {s: 2.0 for s in range(7)})
    want = percentile_bootstrap(r.diffs, 0.95, 10_000, 0)
    assert (r.boot_low, r.boot_high) == pytest.approx(want, rel=1e-12)


def hand_seeds_to_resolve(sd, delta, confidence=0.95, most=10_000):
    """The fewest n (from 2, then by 1 up to 64, then by n // 8) with
    t_{(1 + confidence)/2, n - 1} sd / sqrt(n) < |delta|, scipy's t quantile; None past most."""
    from scipy import stats
    n = 2
    while n <= most:
        if stats.t.ppf((1 + confidence) / 2, df=n - 1) * sd / math.sqrt(n) < abs(delta):
            return n
        n = n + 1 if n < 64 else n + n // 8
    return None


@pytest.mark.parametrize("sd,delta,confidence", [
    (0.01, 0.005, 0.95), (0.02, 0.01, 0.95), (0.005, 0.01, 0.95), (0.01, -0.004, 0.95),
    (0.02, 0.004, 0.95),      # past 64: 64, 72, 81, 91, 102, ...
    (0.05, 0.0011, 0.95),     # thousands of seeds, by steps of n // 8
    (0.1, 0.001, 0.95),       # more than 10000: None
    (0.01, 0.005, 0.9), (0.02, 0.004, 0.99)])
def test_seeds_to_resolve_matches_a_hand_loop(sd, delta, confidence):
    want = hand_seeds_to_resolve(sd, delta, confidence)
    assert seeds_to_resolve(sd, delta, confidence) == want
    if want is not None and want > 2:   # and it is the first sufficient n of the grid
        from scipy import stats
        assert stats.t.ppf((1 + confidence) / 2, want - 1) * sd / math.sqrt(want) < abs(delta)


def test_seeds_to_resolve_exact_values():
    """Values worked out once by hand from a t table (t_{0.975, 17} = 2.110: 2.110 x 0.01 /
    sqrt(18) = 0.00497 < 0.005, while n = 17 gives 2.120 x 0.01 / sqrt(17) = 0.00514), so the
    hand loop above is checked too."""
    assert seeds_to_resolve(0.01, 0.005) == 18
    assert seeds_to_resolve(0.02, 0.01) == 18
    assert seeds_to_resolve(0.005, 0.01) == 4    # t_{0.975, 3} = 3.182: 3.182 x 0.005 / 2 < 0.01
    assert seeds_to_resolve(0.02, 0.004) == 102  # 1.96 x 5 ~ 9.8: n ~ 96-100 lies in 91..102


def test_l_of_d_fit_uses_the_mean_per_budget_with_unequal_seeds():
    """sweeper.speedup.baseline_fit on a baseline whose budget runs (0.25x, 0.5x, 2x) have 3
    seeds and whose scored runs (the 1x budget, stage 2) have 4: the fit is of the per-budget
    MEANS (each budget one point), equal to scipy.optimize.curve_fit called here on the means
    computed here; other curves, other lrs and unfinished runs are left out."""
    from types import SimpleNamespace

    from scipy.optimize import curve_fit

    from sweeper.rows import SweepRow
    from sweeper.speedup import baseline_fit

    base, lr, col = 400_000, 1e-3, "final_val_loss_full"
    law = {0.25: 2.30, 0.5: 2.05, 1.0: 1.88, 2.0: 1.77}
    noise = {0: 0.031, 1: -0.012, 2: 0.020, 3: -0.044}   # seed 3 only at 1x: skews a pooled fit

    def row(curve, lr, stage, seed, status, tokens, loss):
        return SweepRow(run_id=f"{curve}_{lr}_{stage}_{seed}", curve=curve, optimizer=curve, lr=lr,
                        seed=seed, stage=stage, dir=Path("unused"), status=status, tokens=tokens,
                        **{col: loss})

    rows = []
    for f, loss in law.items():
        stage, seeds = ("2", range(4)) if f == 1.0 else ("budget", range(3))
        for s in seeds:
            rows.append(row("adamw", lr, stage, s, "completed", int(f * base), loss + noise[s] * f))
    rows += [row("muon", lr, "budget", 0, "completed", base // 4, 9.0),
             row("adamw", 2e-3, "budget", 0, "completed", base // 4, 9.0),
             row("adamw", lr, "budget", 5, "diverged", base // 2, 9.0)]
    scored = [r for r in rows if r.curve == "adamw" and r.lr == lr and r.stage == "2"]  # 1x budget
    summary = SimpleNamespace(scores={"adamw": SimpleNamespace(lr=lr)}, column=col,
                              curves={"adamw": SimpleNamespace(tuned={})}, scored={"adamw": scored})
    fit, budgets = baseline_fit(rows, summary, "adamw")

    D = np.array(sorted(int(f * base) for f in law), dtype=np.float64)
    means = []
    for d in D:
        vals = [r.final_val_loss_full for r in rows if r.curve == "adamw" and r.lr == lr
                and r.status == "completed" and r.tokens == d]
        means.append(sum(vals) / len(vals))
    counts = [3, 3, 4, 3]
    assert [(d, n) for d, _, n in budgets] == list(zip(D.tolist(), counts))
    assert [m for _, m, _ in budgets] == pytest.approx(means, rel=1e-12)

    scale = D.max()
    (a, b, g), _ = curve_fit(lambda d, a, b, g: a * (d / scale) ** -b + g, D, np.array(means),
                             p0=(0.1, 0.5, 1.6), maxfev=50_000)
    assert (fit.alpha, fit.beta, fit.gamma) == pytest.approx((a, b, g), rel=1e-4)
    assert fit.scale == scale
    for d in D:   # the same curve at every budget
        assert fit.loss(d) == pytest.approx(a * (d / scale) ** -b + g, rel=1e-7)
    # a fit of every run as its own point weights the 4-seed budget more: a different curve
    pooled = [(r.tokens, r.final_val_loss_full) for r in rows if r.curve == "adamw" and r.lr == lr
              and r.status == "completed"]
    (pa, pb, pg), _ = curve_fit(lambda d, a, b, g: a * (d / scale) ** -b + g,
                                np.array([p[0] for p in pooled], dtype=np.float64),
                                np.array([p[1] for p in pooled]), p0=(0.1, 0.5, 1.6), maxfev=50_000)
    assert abs(pg - g) > 1e-3 * abs(g)


# ---- mean_interval, the verdict line and the edge cases, against scipy and by hand ------------

def test_mean_interval_is_scipys_t_interval():
    from scipy import stats as st
    from sweeper.paired import mean_interval
    values = [1.9, 2.1, 2.05, None, float("nan"), 1.95, 2.3]   # None and nan are left out
    x = np.array([1.9, 2.1, 2.05, 1.95, 2.3])
    for conf in (0.95, 0.8):
        low, high = st.t.interval(conf, len(x) - 1, loc=x.mean(), scale=st.sem(x))
        mean, lo, hi = mean_interval(values, conf)
        assert mean == pytest.approx(x.mean(), abs=1e-12)
        assert (lo, hi) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert mean_interval([3.0]) == (3.0, pytest.approx(math.nan, nan_ok=True),
                                    pytest.approx(math.nan, nan_ok=True))
    assert all(math.isnan(v) for v in mean_interval([None, float("inf")]))


def test_the_verdict_lines_word_for_word():
    from sweeper.paired import paired
    # decided: b better (a - b > 0), n = 3
    p = paired("muon", {0: 2.0, 1: 2.1, 2: 2.2}, "namo", {0: 1.9, 1: 1.98, 2: 2.11})
    assert p.decided and p.winner() == "namo"
    assert p.verdict() == (f"namo better than muon: muon - namo = {p.mean:+.4f} nats, "
                           f"95% CI [{p.low:+.4f}, {p.high:+.4f}], p = {p.p_value:.2g}, n = 3")
    # a tie: what it could resolve at the measured std, at resolve= and at |mean|
    t = paired("x", {0: 1.0, 1: 2.0, 2: 1.5}, "y", {0: 1.2, 1: 1.7, 2: 1.5997})   # mean 1e-4
    assert not t.decided and t.winner() is None
    line = t.verdict(unit="steps", digits=2, resolve=0.5)
    assert line.startswith(f"tie at this budget: x - y = {t.mean:+.2f} steps, 95% CI [")
    need = seeds_to_resolve(t.std, 0.5)
    assert seeds_to_resolve(t.std, abs(t.mean)) is None
    assert line.endswith(f"; resolvable here: differences beyond {t.half_width:.2f} steps; at the "
                         f"measured std {t.std:.2f} of the differences, resolving 0.50 steps: "
                         f"{need} seeds / 0.00 steps: more than 10000 seeds"), line
    # one shared seed: no interval
    one = paired("x", {0: 1.0}, "y", {0: 1.5, 1: 1.0})
    assert one.verdict() == "x - y = -0.5000 nats on 1 shared seed(s): no interval, undecided"
    # two seeds are enough for an interval
    two = paired("x", {0: 1.0, 1: 1.1}, "y", {0: 2.0, 1: 2.11})
    assert two.n == 2 and two.decided and "undecided" not in two.verdict()


def test_paired_when_the_differences_do_not_vary():
    """std 0: p = 0 for a nonzero mean (the interval is a point away from 0), 1 for none."""
    from sweeper.paired import paired
    shifted = paired("x", {0: 1.0, 1: 2.0, 2: 3.0}, "y", {0: 0.5, 1: 1.5, 2: 2.5})
    assert shifted.std == 0 and shifted.p_value == 0.0 and shifted.winner() == "y"
    same = paired("x", {0: 1.0, 1: 2.0}, "y", {0: 1.0, 1: 2.0})
    assert same.p_value == 1.0 and not same.decided
    assert seeds_to_resolve(0.0, 0.1) == 2 and seeds_to_resolve(0.0, 0.0) is None
    assert seeds_to_resolve(1.0, 0.0) is None
    # a mean between 0 and 1 that is decided: the winner is the lower one
    p = paired("x", {0: 1.5, 1: 1.6, 2: 1.55}, "y", {0: 1.0, 1: 1.1, 2: 1.04})
    assert 0 < p.mean < 1 and p.decided and p.winner() == "y"


def test_seeds_to_resolve_at_its_limits():
    """n starts at 2; `most` is the last n tried (inclusive)."""
    from scipy import stats as st
    # resolvable with 2 seeds exactly when t(1) std / sqrt(2) < delta
    half2 = st.t.ppf(0.975, 1) / math.sqrt(2)
    assert seeds_to_resolve(1.0, half2 * 1.0001) == 2
    assert seeds_to_resolve(1.0, half2 * 0.9999) == 3
    # with most = n the answer n is still found; with most = n - 1 it is not
    n = seeds_to_resolve(1.0, 0.9)
    assert seeds_to_resolve(1.0, 0.9, most=n) == n
    assert seeds_to_resolve(1.0, 0.9, most=n - 1) is None


def test_speedup_edges():
    """A curve that lands exactly on the target reaches it there; the asymptote itself is out
    of reach; three budgets are enough for L(D) (exactly determined), two are a clear error."""
    from sweeper.speedup import ScalingFit, fit_scaling
    assert tokens_to_reach([(100, 3.0), (200, 2.5), (300, 2.0)], 2.5) == 200.0
    assert tokens_to_reach([(100, 3.0), (200, 2.5)], 2.5) == 200.0   # on the last point
    fit = ScalingFit(alpha=1.0, beta=0.5, gamma=2.0, scale=1e6, tokens=[], losses=[])
    assert fit.effective_tokens(2.0) is None and fit.effective_tokens(1.9) is None
    assert fit.effective_tokens(3.0) == pytest.approx(1e6)
    D = [1e5, 3e5, 1e6]
    L = [1.0 * (d / 1e6) ** -0.5 + 2.0 for d in D]
    f3 = fit_scaling(D, L)
    assert (f3.alpha, f3.beta, f3.gamma) == (pytest.approx(1.0, rel=1e-4), pytest.approx(0.5, rel=1e-4),
                                             pytest.approx(2.0, rel=1e-4))
    with pytest.raises(ValueError, match="needs 3 or more budgets, got 2"):
        fit_scaling(D[:2], L[:2])


def test_the_small_cases_of_the_intervals_and_seeds_to_resolve():
    """Two values are enough for every interval (n - 1 = 1 degree of freedom); an infinite std
    is 'resolvable with 2' as a nan or zero one is; a difference of exactly 1 is an ordinary
    size; and 'below |delta|' is strict: a half-width equal to delta needs one seed more."""
    from scipy import stats as st
    from sweeper.paired import bootstrap_interval, mean_interval

    two = np.array([0.25, -0.75])
    assert bootstrap_interval(two) == pytest.approx(percentile_bootstrap(two, 0.95, 10_000, 0),
                                                    rel=1e-12)
    mean, lo, hi = mean_interval([1.0, 2.0])
    half = st.t.ppf(0.975, 1) * st.tstd([1.0, 2.0]) / math.sqrt(2)
    assert (mean, lo, hi) == pytest.approx((1.5, 1.5 - half, 1.5 + half), rel=1e-12)
    assert seeds_to_resolve(math.inf, 0.1) == 2 and seeds_to_resolve(math.nan, 0.1) == 2
    assert seeds_to_resolve(0.0, 0.1) == 2 and seeds_to_resolve(0.0, 0.0) is None
    assert seeds_to_resolve(1.0, 1.0) == hand_seeds_to_resolve(1.0, 1.0) == 7
    exact = st.t.ppf(0.5 + 0.95 / 2, 2) * 1.0 / math.sqrt(3)   # the half-width at n = 3
    assert seeds_to_resolve(1.0, exact) == 4


def test_the_bootstrap_draws_10000_resamples_by_default():
    """With 30 distinct differences the resampled means have no ties, so the percentile of
    10000 resamples differs from that of 10001 (one more row of the same Generator): the
    default is the 10000 of the docs, computed here."""
    from sweeper.paired import bootstrap_interval

    diffs = np.random.default_rng(5).normal(0.0, 0.01, 30)
    got = bootstrap_interval(diffs)
    assert got == pytest.approx(percentile_bootstrap(diffs, 0.95, 10_000, 0), rel=1e-12)
    assert got != pytest.approx(percentile_bootstrap(diffs, 0.95, 10_001, 0), rel=1e-9)
