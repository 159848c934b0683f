"""Paired comparisons of two optimizers over shared seeds: the numbers behind every verdict.

The same seed gives every optimizer the same initial weights and the same batches, so the
per-seed differences d_s = a_s - b_s cancel what the seeds share. From them: the mean
difference, a 95% Student-t confidence interval, the two-sided p-value of a paired t-test
(scipy.stats.ttest_rel), a percentile bootstrap interval as a check, and a verdict that says
"better" only when the t interval excludes 0 and a tie otherwise, with the smallest difference
this study could have resolved (the interval's half-width) and the seeds that would resolve a
given difference at the measured std of the differences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

CONFIDENCE = 0.95


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t quantile for n paired differences (n - 1 degrees of freedom)."""
    from scipy import stats
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1))


def seeds_to_resolve(std: float, delta: float, confidence: float = CONFIDENCE,
                     most: int = 10_000) -> Optional[int]:
    """The fewest seeds n whose t interval half-width t(n-1) std / sqrt(n) is below |delta|
    (so that a true difference of delta would be declared); None if more than `most`."""
    if not (std > 0 and math.isfinite(std)):
        return 2 if delta else None
    if delta == 0:
        return None
    n = 2
    while n <= most:
        if t_quantile(n, confidence) * std / math.sqrt(n) < abs(delta):
            return n
        n += 1 if n < 64 else n // 8
    return None


@dataclass
class Paired:
    """a minus b over the seeds both have (lower is better for a loss or a step count)."""
    a: str
    b: str
    seeds: list
    diffs: list
    mean: float
    std: float                      # of the differences (n - 1)
    half_width: float               # of the t interval; nan for fewer than 2 seeds
    low: float
    high: float
    p_value: float
    boot_low: float
    boot_high: float

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def decided(self) -> bool:
        return self.n >= 2 and (self.high < 0 or self.low > 0)

    def winner(self) -> Optional[str]:
        if not self.decided:
            return None
        return self.a if self.mean < 0 else self.b

    def verdict(self, unit: str = "nats", digits: int = 4, resolve: Optional[float] = None) -> str:
        """One line: who is better with the interval, or a tie with what it could resolve."""
        if self.n < 2:
            return (f"{self.a} - {self.b} = {self.mean:+.{digits}f} {unit} on {self.n} shared "
                    "seed(s): no interval, undecided")
        ci = f"95% CI [{self.low:+.{digits}f}, {self.high:+.{digits}f}], p = {self.p_value:.2g}, n = {self.n}"
        diff = f"{self.a} - {self.b} = {self.mean:+.{digits}f} {unit}"
        if self.decided:
            better, worse = (self.a, self.b) if self.mean < 0 else (self.b, self.a)
            return f"{better} better than {worse}: {diff}, {ci}"
        parts = []
        for size in dict.fromkeys([s for s in (resolve, abs(self.mean)) if s]):
            need = seeds_to_resolve(self.std, size)
            parts.append(f"{size:.{digits}f} {unit}: {'more than 10000' if need is None else need} seeds")
        return (f"tie at this budget: {diff}, {ci}; resolvable here: differences beyond "
                f"{self.half_width:.{digits}f} {unit}; at the measured std {self.std:.{digits}f} "
                f"of the differences, resolving " + " / ".join(parts))


def bootstrap_interval(diffs: np.ndarray, confidence: float = CONFIDENCE,
                       resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean difference (a check on the t interval)."""
    if len(diffs) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), (resamples, len(diffs)))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired(a_name: str, a: dict, b_name: str, b: dict) -> Paired:
    """Compare {seed: value} of a with that of b on the seeds both have."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    diffs = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    n = len(diffs)
    mean = float(diffs.mean()) if n else math.nan
    if n >= 2:
        std = float(diffs.std(ddof=1))
        half = t_quantile(n) * std / math.sqrt(n)
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue) \
            if std > 0 else (0.0 if mean else 1.0)
    else:
        std = half = p = math.nan
    boot = bootstrap_interval(diffs)
    return Paired(a_name, b_name, seeds, diffs.tolist(), mean, std, half, mean - half,
                  mean + half, p, *boot)


def mean_interval(values: list, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean of independent values (nan bounds
    for fewer than 2; nan mean for none)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) < 2:
        return float(x[0]), math.nan, math.nan
    half = t_quantile(len(x), confidence) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half
