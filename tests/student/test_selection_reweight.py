"""Diversify and Conquer's iterative cluster reweighting (ALGORITHMS.md "Diversity first"), by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from student_svc import selection

pytestmark = pytest.mark.unit


def test_cluster_weights_are_the_softmax_of_mean_gaps_over_the_temperature() -> None:
    # means 0.1 and 1.1 at temperature 0.5: e^0.2 : e^2.2, i.e. 1 : e^2
    w = selection.cluster_weights([0.1, 1.1], 0.5)
    assert w == pytest.approx([1 / (1 + math.e**2), math.e**2 / (1 + math.e**2)])  # 0.1192, 0.8808
    assert selection.cluster_weights([0.0, math.log(3)]) == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError, match="gap temperature must be > 0"):
        selection.cluster_weights([0.0], 0.0)


def test_each_slot_draws_its_cluster_from_the_weights_and_a_full_cluster_passes_its_draws_on() -> None:
    rng = np.random.default_rng(0)
    counts = selection.reweighted_quotas([10_000, 10_000], [0.25, 0.75], 4000, rng)
    # Binomial(4000, 0.25): mean 1000, sd 27.4
    assert sum(counts) == 4000 and abs(counts[0] - 1000) < 100
    # every draw goes to cluster 1, which holds 3: the other 3 slots go to the clusters with room
    q = selection.reweighted_quotas([5, 3, 5], [0.0, 1.0, 0.0], 6, np.random.default_rng(1))
    assert q[1] == 3 and sum(q) == 6
    assert selection.reweighted_quotas([2, 1], [0.5, 0.5], 10, np.random.default_rng(2)) == [2, 1]  # budget > total


def test_diversity_first_gives_the_cluster_with_the_larger_reward_gap_most_of_the_budget() -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(3) * 10  # k-means works in cosine geometry: two directions, two clusters
    x = np.concatenate([centers[0] + rng.normal(size=(20, 3)), centers[1] + rng.normal(size=(20, 3))])
    ids = [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)]
    # the student answers the a-records as well as the gold (gap 0), the b-records badly (gap ln 9):
    # w = softmax([0, ln 9]) = [0.1, 0.9], so about 9 of 10 slots go to b
    gap = [0.0] * 20 + [math.log(9)] * 20
    picks = [selection.diversity_first(ids, x, 10, 2, gap=gap, seed=s) for s in range(20)]
    from_b = [sum(p.startswith("b") for p in pick) for pick in picks]
    assert all(len(set(p)) == 10 for p in picks)
    assert sum(from_b) / len(from_b) == pytest.approx(9, abs=0.6)
    # without the gap: proportional quotas, 5 and 5; the opposite gap: most from a
    assert sum(p.startswith("b") for p in selection.diversity_first(ids, x, 10, 2, seed=0)) == 5
    flipped = [selection.diversity_first(ids, x, 10, 2, gap=gap[20:] + gap[:20], seed=s) for s in range(20)]
    assert sum(sum(p.startswith("a") for p in pick) for pick in flipped) / 20 == pytest.approx(9, abs=0.6)
    with pytest.raises(ValueError, match="40 ids but 3 gaps"):
        selection.diversity_first(ids, x, 10, 2, gap=[0.0] * 3)
