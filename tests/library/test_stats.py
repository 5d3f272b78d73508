"""The paired bootstrap of the loop's lift over a baseline arm, against cases computed by hand."""

from __future__ import annotations

import itertools

import pytest

from syllabus.stats import (
    Lift,
    accuracy_interval,
    compare,
    correct_by_item,
    paired_bootstrap,
    paired_differences,
    verdict,
)

pytestmark = pytest.mark.unit


def test_pooled_paired_differences_by_hand() -> None:
    loop = {"a": 1.0, "b": 1.0, "c": 0.0, "x": 1.0}  # "x": an item one arm run lacks is not paired
    arm = [{"a": 1.0, "b": 0.0, "c": 1.0}, {"a": 0.0, "b": 0.0, "c": 1.0, "x": 0.0}]
    # a: 1 - (1 + 0)/2 = 0.5; b: 1 - 0 = 1; c: 0 - 1 = -1
    assert paired_differences(loop, arm) == [0.5, 1.0, -1.0]
    assert compare(loop, arm).lift == pytest.approx(0.5 / 3)
    with pytest.raises(ValueError, match="repeat"):
        paired_differences(loop, [])


def test_correct_by_item_reads_prediction_records() -> None:
    rows = [{"id": "q1", "label": "a", "prediction": "a", "correct": True}, {"id": "q2", "correct": False}, {"id": 3}]
    assert correct_by_item(rows) == {"q1": 1.0, "q2": 0.0, "3": 0.0}


def test_bootstrap_ci_of_a_symmetric_case_by_hand() -> None:
    """d = [1, 0, -1, 0]: a resampled sum of 4 draws is distributed as Bin(8, 1/2) - 4 (each draw is
    two fair coins: +1 w.p. 1/4, 0 w.p. 1/2, -1 w.p. 1/4). P(sum <= -4) = 1/256 < 2.5% and
    P(sum <= -3) = 9/256 = 3.5% >= 2.5%, so the 2.5% quantile of the mean is -3/4; by symmetry the
    97.5% quantile is +3/4 (P(sum <= 2) = 247/256 = 96.5% < 97.5%)."""
    lift = paired_bootstrap([1.0, 0.0, -1.0, 0.0])
    assert (lift.lift, lift.ci_low, lift.ci_high, lift.n) == (0.0, -0.75, 0.75, 4)
    assert not lift.significant

    # The same numbers by enumerating all 4^4 equally likely resamples.
    d = [1.0, 0.0, -1.0, 0.0]
    means = sorted(sum(d[i] for i in idx) / 4 for idx in itertools.product(range(4), repeat=4))
    cdf = lambda x: sum(m <= x for m in means) / len(means)
    assert min(m for m in means if cdf(m) >= 0.025) == -0.75
    assert min(m for m in means if cdf(m) >= 0.975) == 0.75


def test_bootstrap_ci_of_a_skewed_case_by_hand() -> None:
    """d = [1, 0, 0]: the resampled mean is k/3 with k ~ Bin(3, 1/3): P(k=0) = 8/27 (>= 2.5%), so the
    low end is 0; P(k <= 2) = 26/27 = 96.3% < 97.5%, so the high end is 1. The lift is 1/3."""
    lift = paired_bootstrap([1.0, 0.0, 0.0])
    assert lift.lift == pytest.approx(1 / 3)
    assert (lift.ci_low, lift.ci_high) == (0.0, 1.0)


def test_a_constant_difference_has_a_point_interval_and_is_significant() -> None:
    lift = paired_bootstrap([1.0] * 20)
    assert (lift.lift, lift.ci_low, lift.ci_high) == (1.0, 1.0, 1.0) and lift.significant
    assert paired_bootstrap([]) == Lift(0.0, 0.0, 0.0, 0)


def test_the_interval_narrows_with_more_items_and_is_reproducible() -> None:
    small = paired_bootstrap([1.0, 0.0, 0.0, -1.0, 1.0] * 4)
    large = paired_bootstrap([1.0, 0.0, 0.0, -1.0, 1.0] * 80)
    assert small.lift == pytest.approx(large.lift) == pytest.approx(0.2)
    assert large.ci_high - large.ci_low < small.ci_high - small.ci_low
    assert large.ci_low > 0 and large.significant and not small.significant
    assert paired_bootstrap([1.0, 0.0, 0.0, -1.0, 1.0] * 80) == large  # fixed seed


def test_verdicts() -> None:
    assert verdict("selection", Lift(0.03, -0.01, 0.07, 100)) == "selection: +3.0 points [-1.0, +7.0], not significant"
    assert verdict("generated data", Lift(0.1, 0.02, 0.18, 100)) == "generated data: +10.0 points [+2.0, +18.0], significant"
    assert verdict("curriculum", Lift(-0.1, -0.2, -0.01, 100)).endswith("significant (the baseline beats the loop)")
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], confidence=1.0)


def test_an_accuracy_band_pools_repeats_per_item_then_bootstraps_items() -> None:
    """Two repeats over items a, b, c: pooled per item [1, 0.5, 0] (mean 0.5). A resample of 3 items
    has mean (2 #a + #b) / 6: it is 0 only for "c c c" (P = 1/27 = 3.7% >= 2.5%, so the low end is 0)
    and 1 only for "a a a" (P(mean <= 5/6) = 26/27 = 96.3% < 97.5%, so the high end is 1)."""
    runs = [{"a": 1.0, "b": 1.0, "c": 0.0}, {"a": 1.0, "b": 0.0, "c": 0.0, "z": 1.0}]  # "z": not in every run
    acc, lo, hi = accuracy_interval(runs)
    assert acc == pytest.approx(0.5) and (lo, hi) == (0.0, 1.0)
    # the same numbers by enumerating all 27 equally likely resamples
    pooled = [1.0, 0.5, 0.0]
    means = sorted(sum(pooled[i] for i in idx) / 3 for idx in itertools.product(range(3), repeat=3))
    cdf = lambda x: sum(m <= x for m in means) / len(means)
    assert (min(m for m in means if cdf(m) >= 0.025), min(m for m in means if cdf(m) >= 0.975)) == (lo, hi)
    # more repeats agreeing narrow nothing per item, more items do
    wide = accuracy_interval([{str(i): float(i % 2) for i in range(10)}])
    narrow = accuracy_interval([{str(i): float(i % 2) for i in range(400)}])
    assert wide[0] == narrow[0] == 0.5 and narrow[2] - narrow[1] < wide[2] - wide[1]
    with pytest.raises(ValueError, match="at least one run"):
        accuracy_interval([])
