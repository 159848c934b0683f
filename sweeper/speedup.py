"""Speedup over a baseline optimizer, two ways.

1. Tokens to the baseline's loss: per seed, the tokens an optimizer's eval curve needs to
   reach the baseline's final loss at the same seed (linear interpolation between the two
   evaluations around the first crossing); the speedup is baseline tokens / those tokens.
2. Effective data (Wen et al. 2025, arXiv 2509.02046): fit the baseline's final losses at
   several budgets D to L(D) = alpha D^-beta + gamma; an optimizer reaching loss L with D
   tokens is worth D_eff = (alpha / (L - gamma))^(1 / beta) tokens of the baseline, and its
   speedup is D_eff / D.
In a study with a grid axis (a width ladder) each curve is measured against the baseline at its
own grid values (sweeper/stats.py's baseline_of), never across them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from trainer.outputs import Status, read_metrics


def tokens_to_reach(curve: Sequence[tuple[float, float]], target: float) -> Optional[float]:
    """The tokens at which a (tokens, loss) curve, in order, first reaches `target`."""
    prev = None
    for tokens, loss in curve:
        if loss is not None and loss <= target:
            if prev is None or prev[1] is None:
                return float(tokens)
            (t0, l0), (t1, l1) = prev, (tokens, loss)
            return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))
        prev = (tokens, loss)
    return None


@dataclass
class ScalingFit:
    """L(D) = alpha (D / scale)^-beta + gamma, with the fit's residuals at the fitted points."""
    alpha: float
    beta: float
    gamma: float
    scale: float
    tokens: list
    losses: list

    def loss(self, tokens: float) -> float:
        return self.alpha * (tokens / self.scale) ** -self.beta + self.gamma

    def effective_tokens(self, loss: float) -> Optional[float]:
        """The baseline tokens that would reach `loss`; None below the asymptote gamma."""
        if not loss > self.gamma:
            return None
        return self.scale * (self.alpha / (loss - self.gamma)) ** (1 / self.beta)

    @property
    def residuals(self) -> list:
        return [l - self.loss(d) for d, l in zip(self.tokens, self.losses)]


def fit_scaling(tokens: Sequence[float], losses: Sequence[float]) -> ScalingFit:
    """Least-squares fit of L(D) = alpha (D/scale)^-beta + gamma (scipy.optimize.curve_fit);
    needs at least 3 budgets. scale = the largest budget, so alpha is a loss, not a huge
    number."""
    import numpy as np
    from scipy.optimize import curve_fit

    if len(tokens) < 3:
        raise ValueError(f"fitting L(D) = alpha D^-beta + gamma needs 3 or more budgets, got {len(tokens)}")
    D, L = np.asarray(tokens, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    scale = float(D.max())

    def law(d, alpha, beta, gamma):
        return alpha * (d / scale) ** -beta + gamma

    gamma0 = float(L.min()) - 0.5 * float(L.max() - L.min()) - 1e-3
    p0 = (float(L.min()) - gamma0, 0.5, gamma0)
    (alpha, beta, gamma), _ = curve_fit(law, D, L, p0=p0, maxfev=20_000,
                                        bounds=([0, 1e-3, -np.inf], [np.inf, 10, float(L.min())]))
    return ScalingFit(float(alpha), float(beta), float(gamma), scale, D.tolist(), L.tolist())


def effective_speedup(fit: ScalingFit, loss: float, tokens: float) -> float:
    """D_eff / D; inf when the loss is below the baseline's asymptote."""
    d_eff = fit.effective_tokens(loss)
    return math.inf if d_eff is None else d_eff / tokens


@dataclass
class Speedup:
    """One curve against its baseline curve, per shared seed."""
    curve: str
    ratios: dict          # seed -> baseline tokens / tokens to the baseline's final loss (None: never)
    effective: dict       # seed -> D_eff / D from the baseline's L(D) fit (empty without a fit)
    baseline: str = ""    # the baseline curve it is measured against


@dataclass
class Speedups:
    baseline: str                 # the baseline curve; its optimizer where each grid value has one
    curves: list                  # [Speedup], in ranking order
    fits: dict                    # baseline curve -> (L(D) fit or None with < 3 budgets, budgets)

    @property
    def per_value(self) -> bool:
        """Several baseline curves, one per grid value."""
        return len(self.fits) > 1

    @property
    def fit(self) -> Optional[ScalingFit]:
        """The one baseline's L(D) fit (None with fewer than 3 budgets, or several baselines)."""
        return None if self.per_value else next(iter(self.fits.values()))[0]

    @property
    def budgets(self) -> list:
        """The one baseline's [(tokens, mean metric, runs)] the fit used."""
        return [] if self.per_value else next(iter(self.fits.values()))[1]


def final_eval_loss(run_dir) -> Optional[float]:
    evals = [r["val/loss"] for r in read_metrics(run_dir) if r.get("val/loss") is not None]
    return evals[-1] if evals else None


def eval_curve(run_dir) -> list:
    return [(r["tokens"], r["val/loss"]) for r in read_metrics(run_dir) if "val/loss" in r]


def baseline_fit(rows: list, summary, baseline: str) -> tuple[Optional[ScalingFit], list]:
    """L(D) from the baseline's budget runs and its scored runs (budget 1; `rows`: SweepRows):
    the mean of the summary's column per token budget."""
    from sweeper.tuning import same_tuned

    lr, column, tuned = summary.scores[baseline].lr, summary.column, summary.curves[baseline].tuned
    runs = [r for r in rows if r.curve == baseline and r.stage == "budget"
            and r.lr == lr and same_tuned(r, tuned)] + summary.scored[baseline]
    by_tokens = {}
    for r in runs:
        if r.status == Status.COMPLETED and isinstance(r.value(column), (int, float)):
            by_tokens.setdefault(r.tokens, []).append(r.value(column))
    budgets = [(d, sum(v) / len(v), len(v)) for d, v in sorted(by_tokens.items())]
    if len(budgets) < 3:
        return None, budgets
    return fit_scaling([d for d, _, _ in budgets], [l for _, l, _ in budgets]), budgets


def speedups(rows: list, summary, baseline) -> Optional[Speedups]:
    """Every ranked curve's speedup over its baseline on the seeds both were scored on (the runs
    behind each curve's scores: summary.scored). `baseline`: one baseline curve for every curve,
    or {curve: its baseline curve} (a grid study: the baseline at the curve's grid values)."""
    if not isinstance(baseline, dict):
        baseline = {c: baseline for c in summary.ranked}
    against = {c: b for c, b in baseline.items() if b in summary.scores}
    if not against:
        return None
    fits = {b: baseline_fit(rows, summary, b) for b in dict.fromkeys(against.values())}
    out = []
    for curve in summary.ranked:
        b = against.get(curve)
        if b is None or curve in fits:
            continue
        base = {r.seed: r for r in summary.scored[b] if r.status == Status.COMPLETED}
        fit = fits[b][0]
        runs = {r.seed: r for r in summary.scored[curve] if r.status == Status.COMPLETED}
        ratios, effective = {}, {}
        for seed in sorted(set(base) & set(runs)):
            target = final_eval_loss(base[seed].dir)
            reached = tokens_to_reach(eval_curve(runs[seed].dir), target) if target else None
            ratios[seed] = base[seed].tokens / reached if reached else None
            value = summary.scores[curve].values.get(seed)
            if fit is not None and value is not None:
                effective[seed] = effective_speedup(fit, value, runs[seed].tokens)
        out.append(Speedup(curve, ratios, effective, b))
    name = next(iter(fits)) if len(fits) == 1 else next(iter(fits)).split(" ")[0]
    return Speedups(name, out, fits)
