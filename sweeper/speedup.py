"""Speedup over a baseline optimizer, two ways.

1. Tokens to the baseline's loss: per seed, the tokens an optimizer's eval curve needs to
   reach the baseline's final loss at the same seed (linear interpolation between the two
   evaluations around the first crossing); the speedup is baseline tokens / those tokens.
2. Effective data (Wen et al. 2025, arXiv 2509.02046): fit the baseline's final losses at
   several budgets D to L(D) = alpha D^-beta + gamma; an optimizer reaching loss L with D
   tokens is worth D_eff = (alpha / (L - gamma))^(1 / beta) tokens of the baseline, and its
   speedup is D_eff / D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


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
