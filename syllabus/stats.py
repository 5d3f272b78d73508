"""Did the distillation help? The loop's lift over a baseline arm, with a paired bootstrap CI.

    from syllabus.stats import correct_by_item, paired_differences, paired_bootstrap, verdict
    diffs = paired_differences(correct_by_item(loop_predictions), [correct_by_item(p) for p in arm_repeats])
    lift = paired_bootstrap(diffs)            # Lift(lift=0.03, ci_low=-0.01, ci_high=0.07, n=100, ...)
    verdict("selection", lift)                # "selection: +3.0 points [-1.0, +7.0], not significant"

Pure functions (numpy only), shared by the orchestrator's comparison step and `syllabus report`, so
both print the same numbers for the same predictions.

The unit is the eval item: the loop and the arm answered the same items, so each item gives one
paired difference d_i = loop_i - arm_i, where loop_i is 1 when the loop's student got item i right
and arm_i is the share of the arm's repeats (training seeds) that got it right ("pooled over
repeats"). The lift is the mean of d. Its confidence interval is the percentile bootstrap over items:
resample the n items with replacement, take the mean of d, and read the alpha/2 and 1 - alpha/2
quantiles of those means (the "inverted CDF" quantile: the smallest resampled mean whose share of
means at or below it reaches the level). Pairing removes the items' own difficulty from the noise,
which is what makes a few points of lift measurable on a hundred items.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000  # bootstrap resamples: the CI's Monte Carlo error is ~0.1 points at this size
CONFIDENCE = 0.95
SEED = 0  # fixed: the same predictions always give the same interval


@dataclass(frozen=True)
class Lift:
    """The loop's accuracy minus an arm's, paired over eval items (fractions: 0.03 = 3 points)."""

    lift: float
    ci_low: float
    ci_high: float
    n: int  # eval items paired
    confidence: float = CONFIDENCE

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0


def correct_by_item(predictions: Iterable[Mapping]) -> dict[str, float]:
    """Eval item id -> 1.0 (right) or 0.0 (wrong) from prediction records ({"id", "correct", ...})."""
    return {str(p["id"]): 1.0 if p.get("correct") else 0.0 for p in predictions}


def paired_differences(loop: Mapping[str, float], arm_repeats: Sequence[Mapping[str, float]]) -> list[float]:
    """d_i = loop_i - mean over repeats of arm_i, for the items every run answered (sorted by id)."""
    if not arm_repeats:
        raise ValueError("an arm needs at least one repeat")
    items = set(loop)
    for repeat in arm_repeats:
        items &= set(repeat)
    return [loop[i] - sum(r[i] for r in arm_repeats) / len(arm_repeats) for i in sorted(items)]


def paired_bootstrap(
    diffs: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED
) -> Lift:
    """The mean of `diffs` and its percentile-bootstrap interval (resampling items with replacement).

    A resample of n items is a multinomial draw of how often each distinct difference value is
    picked, which is the same distribution as drawing item indices, at a cost independent of n (the
    differences take few distinct values: -1, 0, 1 with one repeat)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n == 0:
        return Lift(0.0, 0.0, 0.0, 0, confidence)
    values, counts = np.unique(d, return_counts=True)
    rng = np.random.default_rng(seed)
    picks = rng.multinomial(n, counts / n, size=resamples)  # (resamples, distinct values)
    means = picks @ values / n
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return Lift(float(d.mean()), float(lo), float(hi), n, confidence)


def compare(loop: Mapping[str, float], arm_repeats: Sequence[Mapping[str, float]], **kwargs) -> Lift:
    """`paired_bootstrap(paired_differences(loop, arm_repeats))`."""
    return paired_bootstrap(paired_differences(loop, arm_repeats), **kwargs)


def accuracy_interval(
    repeats: Sequence[Mapping[str, float]], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED
) -> tuple[float, float, float]:
    """(accuracy, low, high): the accuracy of one or more runs on the same eval items (an arm's
    repeats, or the loop's one run) pooled over the runs, with the same percentile bootstrap over
    items as the lift. The report's band: it covers which items were drawn and, given repeats,
    training randomness; a single run's band covers the items only."""
    if not repeats:
        raise ValueError("an accuracy needs at least one run")
    items = set(repeats[0]).intersection(*repeats[1:])
    pooled = [sum(r[i] for r in repeats) / len(repeats) for i in sorted(items)]
    got = paired_bootstrap(pooled, resamples=resamples, confidence=confidence, seed=seed)
    return got.lift, got.ci_low, got.ci_high


def points(x: float) -> str:
    """An accuracy difference in points with its sign: 0.03 -> "+3.0"."""
    return f"{100 * x:+.1f}"


def verdict(label: str, lift: Lift) -> str:
    """One line: "selection: +3.0 points [-1.0, +7.0], not significant"."""
    ci = f"[{points(lift.ci_low)}, {points(lift.ci_high)}]"
    if not lift.significant:
        word = "not significant"
    elif lift.lift > 0:
        word = "significant"
    else:
        word = "significant (the baseline beats the loop)"
    return f"{label}: {points(lift.lift)} points {ci}, {word}"
