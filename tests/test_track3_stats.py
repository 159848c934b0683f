"""Track 3's statistics (sweeper/track3.py) against hand computations and the worked examples of
modded-nanogpt's records/track_3_optimization/README.md at f411b3d ("Rules" 3 and 5, "Pairwise
statistical significance", and the results table's ✓/Ⓧ marks), on fixed synthetic curves."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from sweeper import track3


def test_margin_is_track3s_0004_and_follows_sigma_and_p():
    assert track3.margin() == 0.004                       # 3.09 x 0.0013, as Track 3 states it
    assert track3.margin(0.002, 0.001) == 0.0062          # 3.0902 x 0.002 = 0.00618
    assert track3.margin(0.0013, 0.05) == 0.0021          # 1.645 x 0.0013 = 0.00214


@pytest.mark.parametrize("mean, n, ok", [
    (3.276, 1, True), (3.2761, 1, False),                 # "a single run: below 3.276 suffices"
    (3.278, 4, True), (3.2781, 4, False),                 # "n=4: any average below 3.278"
    # rows of the results table with their marks: #1 3.2777 (n=1) Ⓧ, #2 3.2790 (n=1) Ⓧ,
    # #3 3.2767 (n=1) Ⓧ, #7 3.2752 (n=1) ✓, #4 3.2741 (n=5) ✓, #6 3.2788 (n=20) ✓,
    # #35 3.2767 (n=2) ✓, #11 3.2785 (n=16) ✓, #13 3.2785 (n=10) ✓
    (3.2777, 1, False), (3.2790, 1, False), (3.2767, 1, False), (3.2752, 1, True),
    (3.2741, 5, True), (3.2788, 20, True), (3.2767, 2, True), (3.2785, 16, True),
    (3.2785, 10, True),
])
def test_significance_equals_track3s_condition(mean, n, ok):
    # (3.28 - avg_loss) * num_runs ** 0.5 >= 0.004, by hand
    assert track3.significance_lhs(mean, n) == pytest.approx((3.28 - mean) * n ** 0.5)
    assert track3.passes(mean, n) is ok


def test_pairwise_rule_equals_the_worked_examples():
    # #13 (3210 steps, 3.2785, n=10) vs #11 (3225, 3.2785, n=16): "the LHS is 0.00167"
    assert track3.pairwise_lhs(3.2785, 3210, 10, 3.2785, 3225, 16) == pytest.approx(0.00167, abs=5e-6)
    # #13 vs #8 as the README writes it: ((3.2778 - 3.2785) + 40/100 * 0.0045) / (1/10 + 1/16)**0.5
    # = 0.0027 (its n=16 is #11's; #8's own n=10 gives 0.0025: not significant either way)
    assert track3.pairwise_lhs(3.2785, 3210, 10, 3.2778, 3250, 16) == pytest.approx(0.0027, abs=5e-5)
    assert track3.pairwise_lhs(3.2785, 3210, 10, 3.2778, 3250, 10) == pytest.approx(
        (-0.0007 + 0.0018) / math.sqrt(0.2))
    # #12 (3325, 3.2790, n=20) vs #6 (3375, 3.2788, n=20): "the LHS ... is 0.00648"
    assert track3.pairwise_lhs(3.2790, 3325, 20, 3.2788, 3375, 20) == pytest.approx(0.00648, abs=5e-6)
    # #11 (3225, 3.2785, n=16) vs #9 (3250, 3.2771, n=8): 25 steps saved, 0.0014 lost: not
    # significant ("0.0014 val loss is worth about 31 steps")
    lhs = track3.pairwise_lhs(3.2785, 3225, 16, 3.2771, 3250, 8)
    assert lhs == pytest.approx((-0.0014 + 25 * 0.000045) / math.sqrt(1 / 16 + 1 / 8)) and lhs < 0


def entry(name, means_by_seed, steps=(100, 200, 300, 400, 450, 475, 500)):
    return {seed: dict(zip(steps, curve)) for seed, curve in means_by_seed.items()}


def test_score_is_the_earliest_common_step_whose_mean_passes():
    curves = entry("a", {0: [4.0, 3.5, 3.3, 3.279, 3.272, 3.270, 3.268],
                         1: [4.1, 3.6, 3.29, 3.282, 3.276, 3.274, 3.270],
                         2: [4.0, 3.5, 3.31, 3.281, 3.274, 3.272, 3.266]})
    e = track3.score("a", curves)
    # mean at 450: 3.274 -> (3.28 - 3.274) * sqrt(3) = 0.0104 >= 0.004; at 400 the mean is 3.2807
    assert e.step == 450 and e.n == 3 and e.passed
    assert e.mean == pytest.approx((3.272 + 3.276 + 3.274) / 3)
    assert e.lhs == pytest.approx((3.28 - e.mean) * math.sqrt(3))
    assert e.per_seed == {0: 400, 1: 450, 2: 450}   # each run's own first step <= 3.28


def test_score_never_uses_a_per_run_stop():
    # each run dips below the target once, at a different step; no step has a passing mean
    curves = entry("a", {0: [4.0, 3.4, 3.29, 3.270, 3.295, 3.29, 3.29],
                         1: [4.0, 3.4, 3.29, 3.295, 3.270, 3.29, 3.29]})
    e = track3.score("a", curves)
    assert e.per_seed == {0: 400, 1: 450}            # a per-run stop would claim both
    assert not e.passed and e.step is None            # the same-step means never pass
    assert e.mean == pytest.approx(3.29) and e.lhs < 0


def test_a_run_that_never_reaches_ranks_last_and_is_counted():
    good = track3.score("good", entry("g", {0: [4, 3.5, 3.3, 3.27, 3.26, 3.26, 3.25],
                                             1: [4, 3.5, 3.3, 3.27, 3.26, 3.26, 3.25]}))
    # one seed diverged at step 300 (its curve stops there): the mean is infinite afterwards,
    # so the entry never passes although its other seed is far below the target
    broken = track3.score("broken", {0: dict(zip((100, 200, 300, 400, 450, 475, 500),
                                                 [4, 3.4, 3.2, 3.1, 3.0, 3.0, 3.0])),
                                     1: {100: 4.0, 200: 3.5, 300: float("nan")}})
    slow = track3.score("slow", entry("s", {0: [4, 3.6, 3.4, 3.33, 3.3, 3.29, 3.285],
                                             1: [4, 3.6, 3.4, 3.33, 3.3, 3.29, 3.285]}))
    assert good.passed and not broken.passed and not slow.passed
    assert broken.n == 2 and broken.per_seed == {0: 300, 1: None}
    assert [e.name for e in track3.rank([broken, slow, good])][0] == "good"
    assert {e.name for e in track3.rank([broken, slow, good])[1:]} == {"broken", "slow"}
    assert track3.pairwise(good, slow).lhs is None           # no step count to compare with
    assert not track3.pairwise(good, slow).a_beats_b


def test_pairwise_of_two_entries_uses_their_steps_and_means():
    a = track3.Entry("a", 10, 3000, 3.2780, 0, [], [], {})
    b = track3.Entry("b", 10, 3200, 3.2785, 0, [], [], {})
    pw = track3.pairwise(a, b)
    assert pw.lhs == pytest.approx((0.0005 + 200 * 0.000045) / math.sqrt(0.2))
    assert pw.a_beats_b and not track3.pairwise(b, a).a_beats_b


def test_pilot_pooled_std_by_hand():
    """scripts/track3_pilot.py's sigma: var([1, 3]) = 2 on 1 df, var([2, 2, 5]) = 3 on 2 df,
    pooled (2 * 1 + 3 * 2) / 3 = 8/3; a one-value group adds nothing."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from track3_pilot import pooled_std
    sigma, df = pooled_std([[1.0, 3.0], [2.0, 2.0, 5.0], [7.0]])
    assert df == 3 and sigma == pytest.approx(math.sqrt(8 / 3), rel=1e-12)
    assert math.isnan(pooled_std([[1.0]])[0])
