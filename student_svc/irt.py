"""Item response theory: 1PL/2PL fitting on a right/wrong matrix, and the PUDF ability estimate.

Used for two things:
- **ARTE probe set** (arXiv 2406.19227): the k most discriminative questions of a validation bank,
  discrimination `a_i` from a 2PL model fitted on several small models' correctness.
- **IRT difficulty from an artificial crowd** (PUDF, nd-ball/cl-irt): the crowd is the same student
  at several checkpoints (or several models); a 1PL fit gives each item's difficulty `b_i`.

Model: `P(subject j answers item i correctly) = sigmoid(a_i * (theta_j - b_i))` (1PL: a_i = 1).
Fitted by joint maximum a posteriori with Gaussian priors (theta ~ N(0, 1), b ~ N(0, prior_b^2),
log a ~ N(0, prior_log_a^2)) so items every subject gets right (or wrong) stay finite; full-batch
gradient ascent with Adam in numpy (no scipy needed). Abilities are fixed to mean 0 to pin the
scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IRTFit:
    """Item difficulties `b`, discriminations `a` (all 1 for 1PL) and subject abilities `theta`."""

    difficulty: np.ndarray
    discrimination: np.ndarray
    ability: np.ndarray


def fit_irt(
    correct: np.ndarray | Sequence[Sequence[float]],
    model: str = "1pl",
    steps: int = 2000,
    lr: float = 0.05,
    prior_b: float = 3.0,
    prior_log_a: float = 1.0,
    mask: np.ndarray | None = None,
) -> IRTFit:
    """Fit an IRT model to `correct` (subjects x items, 1 right / 0 wrong; `mask` 0 = not asked).

    model: "1pl" (Rasch; difficulty only) or "2pl" (difficulty and discrimination).
    steps / lr: Adam iterations and step size. prior_b / prior_log_a: prior std devs (MAP).
    """
    if model not in ("1pl", "2pl"):
        raise ValueError(f"model must be '1pl' or '2pl', got {model!r}")
    y = np.asarray(correct, dtype=np.float64)
    if y.ndim != 2 or y.size == 0:
        raise ValueError(f"correct must be a non-empty subjects x items matrix, got shape {y.shape}")
    m = np.ones_like(y) if mask is None else np.asarray(mask, dtype=np.float64)
    n_subj, n_items = y.shape
    theta = np.zeros(n_subj)
    # Start difficulties at the logit of the error rate: fast, and already the 1PL answer roughly.
    rate = np.clip((y * m).sum(0) / np.maximum(m.sum(0), 1), 0.05, 0.95)
    b = -np.log(rate / (1 - rate))
    log_a = np.zeros(n_items)
    params = [theta, b, log_a]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    for t in range(1, steps + 1):
        a = np.exp(log_a)
        z = a[None, :] * (theta[:, None] - b[None, :])
        p = 1.0 / (1.0 + np.exp(-z))
        r = (y - p) * m  # d loglik / d z
        g_theta = (r * a[None, :]).sum(1) - theta
        g_b = -(r * a[None, :]).sum(0) - b / prior_b**2
        g_log_a = (r * (theta[:, None] - b[None, :])).sum(0) * a - log_a / prior_log_a**2
        grads = [g_theta, g_b, g_log_a if model == "2pl" else np.zeros(n_items)]
        for param, grad, (m1, m2) in zip(params, grads, moments, strict=True):
            m1 *= 0.9
            m1 += 0.1 * grad
            m2 *= 0.999
            m2 += 0.001 * grad**2
            param += lr * (m1 / (1 - 0.9**t)) / (np.sqrt(m2 / (1 - 0.999**t)) + 1e-8)
        shift = theta.mean()  # pin the scale's origin: abilities average 0
        theta -= shift
        b -= shift
    return IRTFit(difficulty=b.copy(), discrimination=np.exp(log_a), ability=theta.copy())


def most_discriminative(fit: IRTFit, k: int) -> list[int]:
    """Indices of the k items with the highest discrimination (ties: lower index first) - ARTE's
    probe set Dpref."""
    order = sorted(range(len(fit.discrimination)), key=lambda i: (-fit.discrimination[i], i))
    return order[:k]
