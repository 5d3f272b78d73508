"""Learning-rate schedules and curriculum policies — the formulas, in plain Python.

Nothing here imports torch, so the update rules are easy to check by hand
(`tests/trainer/test_curriculum.py` does, against ALGORITHMS.md):

- `lr_at`: linear warm-up, then cosine / linear decay to `final_lr_ratio * peak`, or constant.
- `checkpoint_weights`: weights of the last K checkpoints, newest first: decay**i, normalised.
- `SEC`: Self-Evolving Curriculum. Arms c; p(c) = softmax(Q/tau); after a step with rewards r(c)
  for the arms in the batch, Q(c) <- (1 - alpha) Q(c) + alpha r(c), unsampled arms get r = 0.
  For SFT the reward is learning progress: the drop of the arm's batch loss over the step.
- `AdaRFT`: target difficulty T <- clip(T + eta * tanh(alpha * (R_avg - beta)), dmin, dmax); the
  batch is the B records with the smallest |d_i - T|. For SFT, R_avg is the batch's mean
  per-sample token probability exp(-loss) — the SFT stand-in for the success rate.
- `PUDF`: ability theta = argmax [log N(theta; 0, 1) + sum_j log(1 + (2 sigmoid(theta - b_j) - 1) r_j)]
  over a probe set with right/wrong r_j = +-1; each epoch trains on {b_i <= cap},
  cap = theta if theta improved, else cap + step.

Policies keep their whole state in picklable attributes, so a checkpoint restores them exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def lr_at(
    step: int, total: int, peak: float, warmup_ratio: float, kind: str = "cosine", final_ratio: float = 0.0
) -> float:
    """Learning rate of step `step` (0-based) of `total`; warm-up as in transformers (step 0 at 0)."""
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return peak * step / warmup
    if kind == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return peak * (final_ratio + (1.0 - final_ratio) * shape)


def checkpoint_weights(k: int, decay: float) -> list[float]:
    """Averaging weights of the last k checkpoints, newest first."""
    w = [decay**i for i in range(k)]
    s = sum(w)
    return [x / s for x in w]


def softmax(xs: Sequence[float], tau: float) -> list[float]:
    m = max(xs)
    e = [math.exp((x - m) / tau) for x in xs]
    s = sum(e)
    return [x / s for x in e]


class SEC:
    """Bandit over arms (categories or difficulty bins), one per record."""

    def __init__(self, arm_of: Sequence[int], n_arms: int, alpha: float, tau: float, seed: int) -> None:
        self.arm_of = list(arm_of)
        self.members = [[i for i, a in enumerate(arm_of) if a == c] for c in range(n_arms)]
        self.q = [0.0] * n_arms
        self.alpha = alpha
        self.tau = tau
        self.rng = random.Random(seed)

    def probs(self) -> list[float]:
        # Arms without records can never be drawn.
        p = softmax(self.q, self.tau)
        p = [x if self.members[c] else 0.0 for c, x in enumerate(p)]
        s = sum(p)
        return [x / s for x in p]

    def sample(self, batch_size: int) -> list[int]:
        """Draw an arm per slot from softmax(Q/tau), then a record of that arm uniformly."""
        p = self.probs()
        arms = self.rng.choices(range(len(p)), weights=p, k=batch_size)
        return [self.rng.choice(self.members[a]) for a in arms]

    def update(self, rewards: dict[int, float]) -> None:
        """Q <- (1 - alpha) Q + alpha r, with r = 0 for arms not in `rewards`."""
        self.q = [(1 - self.alpha) * q + self.alpha * rewards.get(c, 0.0) for c, q in enumerate(self.q)]


class AdaRFT:
    """Batches of the records nearest a target difficulty that follows the reward."""

    def __init__(
        self, difficulty: Sequence[float], eta: float, alpha: float, beta: float, t0: float, lo: float, hi: float
    ) -> None:
        self.d = list(difficulty)
        self.eta, self.alpha, self.beta = eta, alpha, beta
        self.lo, self.hi = lo, hi
        self.target = t0

    def sample(self, batch_size: int) -> list[int]:
        """The `batch_size` records with the smallest |d_i - T| (ties: lower index first)."""
        order = sorted(range(len(self.d)), key=lambda i: (abs(self.d[i] - self.target), i))
        return order[:batch_size]

    def update(self, reward: float) -> None:
        t = self.target + self.eta * math.tanh(self.alpha * (reward - self.beta))
        self.target = min(self.hi, max(self.lo, t))


def irt_ability(difficulties: Sequence[float], right: Sequence[bool]) -> float:
    """PUDF's MAP ability: maximise log N(theta;0,1) + sum_j log(1 + (2 sigmoid(theta - b_j) - 1) r_j).

    1-D and concave enough in practice: a grid over [-6, 6] then golden-section refinement.
    """

    def objective(theta: float) -> float:
        total = -0.5 * theta * theta
        for b, ok in zip(difficulties, right, strict=True):
            r = 1.0 if ok else -1.0
            total += math.log(max(1e-12, 1.0 + (2.0 / (1.0 + math.exp(-(theta - b))) - 1.0) * r))
        return total

    grid = [-6 + 0.05 * i for i in range(241)]
    best = max(grid, key=objective)
    lo, hi = best - 0.05, best + 0.05
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if objective(a) < objective(b):
            lo = a
        else:
            hi = b
    return (lo + hi) / 2


class PUDF:
    """Each epoch trains on the records with difficulty <= cap; cap follows the estimated ability."""

    def __init__(self, difficulty: Sequence[float], step: float) -> None:
        self.b = list(difficulty)
        self.step = step
        self.theta: float | None = None
        self.cap = min(self.b) if self.b else 0.0

    def update(self, theta: float) -> None:
        """cap = theta if theta improved on the last estimate, else cap + step."""
        if self.theta is None or theta > self.theta:
            self.cap = max(theta, min(self.b))  # never an empty epoch
        else:
            self.cap += self.step
        self.theta = theta if self.theta is None else max(self.theta, theta)

    def eligible(self) -> list[int]:
        return [i for i, b in enumerate(self.b) if b <= self.cap]
