"""sweeper/speedup.py against hand computations: the L(D) = alpha (D/scale)^-beta + gamma fit where
its start and bounds decide the answer (losses within 4e-4 nats of each other; a loss curve
whose best beta lies past the upper bound 10, or below the lower bound 1e-3 where the loss is
linear in log D: there the fit is the linear least squares of (alpha, gamma) at the bound,
computed here with numpy), and speedups() / baseline_fit() on hand-made SweepRows and metrics
files: tuned values, the seeds both curves share, a baseline without evaluations, a curve that
never reaches the target, a baseline with too few budgets for L(D)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sweeper.rows import SweepRow
from sweeper.speedup import baseline_fit, fit_scaling, speedups


def lstsq_at(D, L, beta):
    """(alpha, gamma) minimizing sum (alpha x + gamma - L)² with x = (D / max D)^-beta."""
    D, L = np.asarray(D, dtype=np.float64), np.asarray(L, dtype=np.float64)
    A = np.stack([(D / D.max()) ** -beta, np.ones_like(D)], axis=1)
    (alpha, gamma), *_ = np.linalg.lstsq(A, L, rcond=None)
    return alpha, gamma


@pytest.mark.parametrize("alpha, beta", [(3e-4 * 2 ** -0.5, 0.5), (1e-4, 0.3)])
def test_fit_of_losses_within_a_few_1e_4_nats(alpha, beta):
    """A nearly flat curve (range 4e-4 or 1.1e-4 nats, an exact law): the fit still finds the
    law (a start from far away, or none, ends at beta = 1e-3; a start above min L is refused)."""
    gamma = 3.0
    D = [0.5e6, 1e6, 2e6, 4e6]
    L = [alpha * (d / 4e6) ** -beta + gamma for d in D]
    fit = fit_scaling(D, L)
    assert (fit.alpha, fit.beta, fit.gamma) == pytest.approx((alpha, beta, gamma), rel=2e-4)
    assert max(abs(r) for r in fit.residuals) < 1e-9
    assert fit.gamma <= min(L)


def test_fit_whose_best_beta_is_past_the_upper_bound():
    """One high loss, then flat: a larger beta always fits better, so the fit stops at the
    bound beta = 10, with (alpha, gamma) the linear least squares there."""
    D, L = [1e5, 2e5, 4e5, 8e5], [5.0, 3.0, 2.9995, 2.999]
    fit = fit_scaling(D, L)
    assert fit.beta == pytest.approx(10.0, rel=1e-5)
    alpha, gamma = lstsq_at(D, L, 10.0)
    assert (fit.alpha, fit.gamma) == pytest.approx((alpha, gamma), rel=1e-4)
    assert fit.scale == 8e5 and fit.gamma <= min(L)


def test_fit_of_a_loss_linear_in_log_d_stops_at_the_lower_bound():
    """L = 5 - 0.3 ln(D / 1e5): alpha D^-beta + gamma approaches it only as beta -> 0 (alpha
    beta -> 0.3, gamma -> -inf); the fit stops at beta = 1e-3 with the least squares there."""
    D = [1e5, 2e5, 4e5, 8e5, 1.6e6]
    L = [5 - 0.3 * math.log(d / 1e5) for d in D]
    fit = fit_scaling(D, L)
    assert fit.beta == pytest.approx(1e-3, rel=1e-6)
    alpha, gamma = lstsq_at(D, L, 1e-3)
    assert (fit.alpha, fit.gamma) == pytest.approx((alpha, gamma), rel=1e-6)


# ---- speedups() and baseline_fit() on hand-made rows ------------------------------------------

COL = "final_val_loss_full"


def run(tmp_path, curve, lr, seed, stage, tokens, final, evals=None, status="completed", tuned=None):
    """A SweepRow and its metrics.jsonl: `evals` [(tokens, val/loss)] (None: no evaluation)."""
    d = tmp_path / f"{curve}_{lr}_{seed}_{stage}_{tokens}_{sorted((tuned or {}).items())}"
    d.mkdir()
    records = [{"step": i, "tokens": t, "val/loss": l} for i, (t, l) in enumerate(evals or [])]
    records.insert(0, {"step": 0, "tokens": 0, "train/loss": 9.0})     # not an evaluation
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return SweepRow(run_id=d.name, curve=curve, optimizer=curve, lr=lr, seed=seed, stage=stage,
                    dir=d, status=status, tokens=tokens, tuned=dict(tuned or {}), **{COL: final})


def summary_of(rows, scores, ranked, tuned):
    """What sweeper.stats.summarize hands speedups(): per curve its lr, tuned values, its scored
    runs (the finished runs at that lr and those values: the held-out stage's if it has any,
    else the tuning seeds') and their scores."""
    def scored_at(c, lr):
        at = [r for r in rows if r.curve == c and r.lr == lr and r.tuned == tuned[c]
              and r.status in ("completed", "diverged")]
        return [r for r in at if r.stage == "2"] or [r for r in at if r.stage in ("1", "extend", "tune")]
    scored = {c: scored_at(c, lr) for c, lr in scores.items()}
    return SimpleNamespace(scored=scored,
        column=COL, ranked=ranked,
        scores={c: SimpleNamespace(lr=lr, values={r.seed: r.score(COL) for r in rows
                                                  if r.curve == c and r.lr == lr
                                                  and r.tuned == tuned[c] and r.stage == "2"})
                for c, lr in scores.items()},
        curves={c: SimpleNamespace(tuned=t) for c, t in tuned.items()})


def law(tokens):
    return 0.5 * (tokens / 10_000) ** -0.5 + 1.5


def test_speedups_by_hand(tmp_path):
    """Baseline b (wd 0.1 tuned) at 10k tokens, seeds 0-2, evaluations every 2k tokens; its
    budgets 5k and 20k (a third budget: the scored runs at 10k). Curve x (seeds 1-3) reaches
    b's final loss between evaluations (x tuned beta2 0.9); curve y never does; curve z is ranked
    after b. Rows of other tuned values and the seeds only one curve has must change nothing."""
    wd = {"weight_decay": 0.1}
    rows = []
    for seed in (0, 1, 2):
        final = law(10_000) + 0.01 * seed
        b_evals = [(t, law(t) + 0.01 * seed) for t in range(2_000, 10_001, 2_000)]
        rows.append(run(tmp_path, "b", 1e-3, seed, "2", 10_000, final, b_evals, tuned=wd))
        for tokens in (5_000, 20_000):
            rows.append(run(tmp_path, "b", 1e-3, seed, "budget", tokens, law(tokens), tuned=wd))
        # the same budgets and scored runs with wd 0.2 (another tuned value): other losses
        rows.append(run(tmp_path, "b", 1e-3, seed, "budget", 40_000, 1.0, tuned={"weight_decay": 0.2}))
        rows.append(run(tmp_path, "b", 1e-3, seed, "2", 10_000, 1.0, [(10_000, 1.0)],
                        tuned={"weight_decay": 0.2}))
    x_final = {1: 1.70, 2: 1.72, 3: 1.60}
    for seed in (1, 2, 3):
        target = law(10_000) + 0.01 * seed
        # x crosses b's final loss halfway between its evaluations at 4k and 6k tokens
        x_evals = [(2_000, 3.0), (4_000, target + 0.1), (6_000, target - 0.1), (8_000, 1.7)]
        rows.append(run(tmp_path, "x", 2e-3, seed, "2", 8_000, x_final[seed], x_evals,
                        tuned={"beta2": 0.9}))
        rows.append(run(tmp_path, "x", 2e-3, seed, "2", 8_000, 9.0, [(8_000, 9.0)]))
        rows.append(run(tmp_path, "y", 2e-3, seed, "2", 10_000, 2.5, [(5_000, 3.0), (10_000, 2.5)]))
        rows.append(run(tmp_path, "z", 3e-3, seed, "2", 10_000, 1.65, [(2_000, 1.0)]))
    summary = summary_of(rows, {"b": 1e-3, "x": 2e-3, "y": 2e-3, "z": 3e-3},
                         ["x", "b", "z", "y"], {"b": wd, "x": {"beta2": 0.9}, "y": {}, "z": {}})
    out = speedups(rows, summary, "b")
    assert out.baseline == "b" and [s.curve for s in out.curves] == ["x", "z", "y"]
    # L(D): the 5k and 20k budgets and the 10k scored runs' mean (wd 0.1 only)
    assert [(d, n) for d, _, n in out.budgets] == [(5_000, 3), (10_000, 3), (20_000, 3)]
    assert out.budgets[1][1] == pytest.approx(law(10_000) + 0.01, rel=1e-12)
    assert out.fit is not None and out.fit.scale == 20_000
    x, z, y = out.curves
    assert set(x.ratios) == {1, 2} and set(y.ratios) == {1, 2} and set(z.ratios) == {1, 2}
    for seed in (1, 2):
        assert x.ratios[seed] == pytest.approx(10_000 / 5_000, rel=1e-12)
        assert z.ratios[seed] == pytest.approx(10_000 / 2_000, rel=1e-12)
        assert y.ratios[seed] is None
        # D_eff / D by hand from the fitted law: scale (alpha / (L - gamma))^(1 / beta) / D
        f = out.fit
        d_eff = f.scale * (f.alpha / (x_final[seed] - f.gamma)) ** (1 / f.beta)
        assert x.effective[seed] == pytest.approx(d_eff / 8_000, rel=1e-12)
    assert set(x.effective) == {1, 2}


def test_speedups_without_a_baseline_evaluation_or_a_fit(tmp_path):
    """A baseline run with no evaluation has no target: no ratio. Two budgets only: no L(D)
    fit and no D_eff, the ratios still there. A baseline not in the scores: None."""
    rows = [run(tmp_path, "b", 1e-3, 0, "2", 10_000, 2.0, None),
            run(tmp_path, "b", 1e-3, 1, "2", 10_000, 2.0, [(10_000, 2.0)]),
            run(tmp_path, "b", 1e-3, 0, "budget", 5_000, 2.5),
            run(tmp_path, "x", 2e-3, 0, "2", 10_000, 1.9, [(5_000, 1.9)]),
            run(tmp_path, "x", 2e-3, 1, "2", 10_000, 1.9, [(5_000, 1.9)])]
    summary = summary_of(rows, {"b": 1e-3, "x": 2e-3}, ["b", "x"], {"b": {}, "x": {}})
    out = speedups(rows, summary, "b")
    assert out.fit is None and [(d, n) for d, _, n in out.budgets] == [(5_000, 1), (10_000, 2)]
    (x,) = out.curves
    assert x.ratios == {0: None, 1: pytest.approx(2.0)} and x.effective == {}
    assert speedups(rows, summary, "adamw") is None and speedups(rows, summary, None) is None


def test_baseline_fit_with_exactly_three_budgets_and_tuned_values(tmp_path):
    """Three budgets (the least L(D) takes), with the baseline's tuned values: fitted, through
    the three means exactly; the same runs under other tuned values are not the baseline's."""
    tuned = {"weight_decay": 0.05}
    rows = []
    for seed, noise in ((0, 0.01), (1, -0.01)):
        for tokens in (2_500, 5_000):
            rows.append(run(tmp_path, "b", 1e-3, seed, "budget", tokens, law(tokens) + noise,
                            tuned=tuned))
            rows.append(run(tmp_path, "b", 1e-3, seed, "budget", tokens, 0.1, tuned={}))
        rows.append(run(tmp_path, "b", 1e-3, seed, "1", 10_000, law(10_000) + noise, tuned=tuned))
        rows.append(run(tmp_path, "b", 1e-3, seed, "1", 10_000, 0.1, tuned={}))
    summary = summary_of(rows, {"b": 1e-3}, ["b"], {"b": tuned})
    fit, budgets = baseline_fit(rows, summary, "b")
    assert budgets == [(2_500, pytest.approx(law(2_500)), 2), (5_000, pytest.approx(law(5_000)), 2),
                       (10_000, pytest.approx(law(10_000)), 2)]
    assert fit is not None
    assert (fit.alpha, fit.beta, fit.gamma) == pytest.approx((0.5, 0.5, 1.5), rel=1e-4)


def test_speedups_of_a_grid_study_against_the_baseline_at_the_same_value(tmp_path):
    """A width ladder: b and x at n_embd 64 and 128. Each x is measured against b at its own
    width (b@64 ends at 2.0 after 10k tokens, b@128 at 1.8), never across: x@64 crosses 2.0 at
    5k tokens (2x) and reaches 1.8 only at 6k; x@128 crosses 1.8 at 4k (2.5x)."""
    evals = {"b n_embd=64": [(5_000, 2.5), (10_000, 2.0)], "b n_embd=128": [(5_000, 2.3), (10_000, 1.8)],
             "x n_embd=64": [(4_000, 2.2), (6_000, 1.8), (8_000, 1.7)],
             "x n_embd=128": [(2_000, 2.0), (6_000, 1.6)]}
    rows = [run(tmp_path, c, 1e-3, seed, "2", 10_000, e[-1][1], e)
            for c, e in evals.items() for seed in (0, 1)]
    curves = list(evals)
    summary = summary_of(rows, {c: 1e-3 for c in curves}, ["x n_embd=128", "b n_embd=128",
                                                           "x n_embd=64", "b n_embd=64"],
                         {c: {} for c in curves})
    out = speedups(rows, summary, {"x n_embd=64": "b n_embd=64", "b n_embd=64": "b n_embd=64",
                                   "x n_embd=128": "b n_embd=128", "b n_embd=128": "b n_embd=128"})
    assert out.per_value and out.baseline == "b" and set(out.fits) == {"b n_embd=64", "b n_embd=128"}
    x128, x64 = out.curves
    assert (x128.curve, x128.baseline, x64.curve, x64.baseline) == (
        "x n_embd=128", "b n_embd=128", "x n_embd=64", "b n_embd=64")
    assert x64.ratios == {0: pytest.approx(10_000 / 5_000), 1: pytest.approx(10_000 / 5_000)}
    assert x128.ratios == {0: pytest.approx(10_000 / 4_000), 1: pytest.approx(10_000 / 4_000)}
    # the single-baseline call measures x@64 against b@128's 1.8 instead: at 6k tokens
    across = speedups(rows, summary, "b n_embd=128")
    assert not across.per_value and across.baseline == "b n_embd=128"
    assert {c.curve: c.ratios[0] for c in across.curves}["x n_embd=64"] == pytest.approx(10_000 / 6_000)


def test_baseline_of_maps_each_grid_value_to_its_own_baseline():
    """sweep.grid with the baseline at every value: {curve: the baseline at its value}; no grid,
    or one baseline curve: that curve for every curve (the old single baseline); none: {}."""
    from sweeper.config import SweepConfig
    from sweeper.stats import baseline_of

    rows = [SweepRow(run_id=f"{o}{w}", curve=f"{o} n_embd={w}", optimizer=o, lr=1e-3, seed=0,
                     stage="2", dir=Path("."), status="completed", tokens=1,
                     grid={"model.n_embd": w}) for o in ("adamw", "muon") for w in (64, 128)]
    curves = {r.curve: None for r in rows}
    cfg = SweepConfig(grid={"model.n_embd": [64, 128]})
    assert baseline_of(cfg, curves, rows) == {
        "adamw n_embd=64": "adamw n_embd=64", "muon n_embd=64": "adamw n_embd=64",
        "adamw n_embd=128": "adamw n_embd=128", "muon n_embd=128": "adamw n_embd=128"}
    assert baseline_of(SweepConfig(), curves, rows) == {c: "adamw n_embd=64" for c in curves}
    two = {"adamw n_embd=64": None, "muon n_embd=64": None}
    assert baseline_of(cfg, two, rows) == {c: "adamw n_embd=64" for c in two}
    assert baseline_of(SweepConfig(grid={"model.n_embd": [64, 128]}, baseline="lion"), curves,
                       rows) == {}
