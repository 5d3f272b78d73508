"""CAR per generation method and the generation budget it sizes (pure logic; no I/O, safe in workflows).

Compatibility-Adjusted Reward ("Stronger Models are NOT Stronger Teachers", arXiv 2411.07133):

    CAR(T) = r(D_T) / (1 + beta * L(D_T, student))

computed here per generation method T (expand, targeted, rationales, rft: the loop's "teachers").

- r(D_T), the reward, is the share of method T's responses this round that the loop accepted: the
  critique's verdict on the generated examples (the judge's right/wrong with critique.mode judge or
  cft, the rubric or reflection revision, the rule filter with rules; leaked and unparsable ones count
  as produced, not kept), and answer verification for rationales and RFT (kept of written). The paper
  uses a reward model's mean score; the loop's judge and verifiers are the reward it has.
- L(D_T, student) is the mean response NLL (`loss_base`) of T's kept records under the *base*
  student, as in the paper; the dropped ones are never scored, so L is over what was accepted.

`generate.budget: car` splits the next round's generation in proportion to CAR: each budgeted mode's
size (expand per_label, targeted per_skill, rationales / rft max_questions) is multiplied by
n * CAR_m / sum(CAR) over the n modes with a CAR, so the factors average 1 and the modes' sizes
move towards the methods that suit this student; a mode without a CAR yet (targeted in round 1)
keeps its size, and every size stays >= 1 so a method with CAR 0 is still measured next round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from orchestrator.types import MethodCar


def car_by_method(rows: Sequence[Mapping], produced: Mapping[str, int], beta: float) -> list[MethodCar]:
    """CAR of each method in `produced` (method -> responses it produced this round) from the round's
    scored records `rows` ({"category", "loss_base"}), best first (ties: by name)."""
    out = []
    for method, n in sorted(produced.items()):
        if n <= 0:
            continue
        losses = [float(r["loss_base"]) for r in rows if r.get("category") == method]
        finite = [x for x in losses if math.isfinite(x)]
        reward = min(1.0, len(losses) / n)
        loss = sum(finite) / len(finite) if finite else 0.0
        out.append(MethodCar(method, produced=n, kept=len(losses), reward=reward, loss=loss,
                             car=reward / (1.0 + beta * loss)))  # fmt: skip
    return sorted(out, key=lambda c: (-c.car, c.method))


def method_rewards(records: Sequence[Mapping], produced: Mapping[str, int]) -> dict[str, float]:
    """r per method of `produced`: its records among `records` (by "category") over what it produced."""
    kept: dict[str, int] = {}
    for r in records:
        kept[r.get("category", "")] = kept.get(r.get("category", ""), 0) + 1
    return {m: min(1.0, kept.get(m, 0) / n) for m, n in produced.items() if n > 0}


def budget_scales(cars: Sequence[MethodCar], modes: Sequence[str]) -> dict[str, float]:
    """Mode -> the factor its budget is multiplied by next round (modes without a CAR: absent = 1)."""
    known = [c for c in cars if c.method in modes]
    total = sum(c.car for c in known)
    if not known or total <= 0:
        return {}  # nothing to tell the methods apart by: every mode keeps its budget
    return {c.method: len(known) * c.car / total for c in known}


def scaled(size: int, scale: float) -> int:
    """A mode's budget times its scale, at least 1."""
    return max(1, round(size * scale))
