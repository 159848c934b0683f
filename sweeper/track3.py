"""Track 3's statistics (modded-nanogpt records/track_3_optimization/README.md, "Rules" 3 and 5
and "Pairwise statistical significance"): steps to a target val loss, decided by a z-test.

- An entry (optimizer at its chosen hyperparameters, n seeds that were not cherry-picked) reaches
  the target at a step when `(target - mean loss) * sqrt(n) >= margin`, margin = z(1 - p) * sigma
  (3.09 x 0.0013 = 0.004: Track 3's "precise condition"; the margin is rounded to 0.1 millinat,
  the precision of the losses it is stated with, so the defaults give Track 3's 0.004 exactly).
- Its score is the earliest *scheduled evaluation step* at which that holds, the same step for
  every seed: the mean is over all n runs at that step, never over per-run early stops. A run that
  diverged, or lacks that evaluation, makes the mean infinite: such an entry never passes.
- "A really beats B": `((loss_B - loss_A) + (steps_B - steps_A) * loss_per_step)
  / sqrt(1/n_A + 1/n_B) >= margin`, with loss_per_step = 0.0045 / 100 (Track 3's measured
  exchange rate of steps for loss).
Pure functions of curves ({step: val loss} per seed); sweeper/report.py writes the tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

TARGET = 3.28              # Track 3's target val loss (Karpathy's llm.c GPT-2 124M)
SIGMA = 0.0013             # Track 3's assumed seed std of the final val loss
P_VALUE = 0.001            # one-sided
LOSS_PER_STEP = 0.0045 / 100   # Track 3: 200 fewer steps cost 0.0091 nats (result #12)
EPS = 1e-9                 # float slack at the boundary: (3.28 - 3.278) * 2 is 0.0039999999999996


def margin(sigma: float = SIGMA, p: float = P_VALUE) -> float:
    """z(1 - p) * sigma, rounded to 1e-4 as Track 3 states it (3.09 sigma = 0.004)."""
    from scipy import stats

    return round(float(stats.norm.ppf(1 - p)) * sigma, 4)


def significance_lhs(mean: float, n: int, target: float = TARGET) -> float:
    """Track 3's `(target - avg_loss) * num_runs ** 0.5` (>= margin: significant)."""
    return (target - mean) * math.sqrt(n) if math.isfinite(mean) else -math.inf


def passes(mean: float, n: int, target: float = TARGET, m: Optional[float] = None) -> bool:
    return n > 0 and significance_lhs(mean, n, target) >= (margin() if m is None else m) - EPS


def pairwise_lhs(loss_a: float, steps_a: int, n_a: int, loss_b: float, steps_b: int, n_b: int,
                 loss_per_step: float = LOSS_PER_STEP) -> float:
    """Track 3's `(final_loss_diff + exp_stepbased_loss_diff) / (1/n1 + 1/n2) ** 0.5` for "A
    beats B": the loss B is behind A plus what B's extra steps are worth in loss."""
    return ((loss_b - loss_a) + (steps_b - steps_a) * loss_per_step) / math.sqrt(1 / n_a + 1 / n_b)


def first_step_below(curve: Dict[int, float], target: float) -> Optional[int]:
    """A run's first scheduled evaluation with val loss <= target (None: never): its own steps to
    target, shown beside the entry's score, never used as a stop."""
    for step in sorted(curve):
        if math.isfinite(curve[step]) and curve[step] <= target:
            return step
    return None


@dataclass
class Entry:
    """One entry's Track-3 score over its runs."""
    name: str
    n: int                          # runs counted (every scored run, diverged ones included)
    step: Optional[int]             # earliest common evaluation step that passes; None: none
    mean: float                     # mean val loss at `step` (at the last common step if none)
    lhs: float                      # significance_lhs at that step
    steps: List[int]                # the common evaluation steps
    means: List[float]              # the mean over runs at each of them (inf: a run lacks it)
    per_seed: Dict[int, Optional[int]]   # seed -> first_step_below

    @property
    def passed(self) -> bool:
        return self.step is not None


def score(name: str, curves: Dict[int, Dict[int, float]], target: float = TARGET,
          m: Optional[float] = None) -> Entry:
    """The earliest evaluation step, the same for every seed, whose mean over all runs passes.
    `curves`: seed -> {step: val loss}; the steps are those every run was scheduled to evaluate
    (the union over runs: a diverged run, stopped early, lacks its later steps and counts as
    infinite loss there)."""
    m = margin() if m is None else m
    n = len(curves)
    steps = sorted({s for c in curves.values() for s in c})
    means = []
    for s in steps:
        vals = [c.get(s, math.inf) for c in curves.values()]
        means.append(sum(vals) / n if all(math.isfinite(v) for v in vals) else math.inf)
    per_seed = {seed: first_step_below(c, target) for seed, c in sorted(curves.items())}
    for s, mean in zip(steps, means):
        if passes(mean, n, target, m):
            return Entry(name, n, s, mean, significance_lhs(mean, n, target), steps, means, per_seed)
    last = means[-1] if means else math.inf
    return Entry(name, n, None, last, significance_lhs(last, n, target), steps, means, per_seed)


@dataclass
class Pairwise:
    a: str
    b: str
    lhs: Optional[float]       # None: one of them never passed (no step count to compare)
    margin: float

    @property
    def a_beats_b(self) -> bool:
        return self.lhs is not None and self.lhs >= self.margin - EPS


def pairwise(a: Entry, b: Entry, loss_per_step: float = LOSS_PER_STEP,
             m: Optional[float] = None) -> Pairwise:
    """Does a really beat b (Track 3's pairwise rule at each one's step count)?"""
    m = margin() if m is None else m
    if not (a.passed and b.passed):
        return Pairwise(a.name, b.name, None, m)
    return Pairwise(a.name, b.name,
                    pairwise_lhs(a.mean, a.step, a.n, b.mean, b.step, b.n, loss_per_step), m)


def rank(entries: List[Entry]) -> List[Entry]:
    """Fewest steps first; entries that never passed last, by their final mean loss."""
    return sorted(entries, key=lambda e: (not e.passed, e.step if e.passed else 0, e.mean))
