"""LoBaSS selection arithmetic: which kept examples a round trains on. Pure and deterministic."""

from __future__ import annotations

import math
from collections.abc import Iterable

# kept * fraction is computed in floating point (10 * 0.3 = 3.0000000000000004); without the slack
# ceil would select one example more than the user asked for.
_EPS = 1e-9


def selection_size(kept: int, top_fraction: float) -> int:
    """How many of `kept` examples to select: ceil(kept * top_fraction), at least 1 if any were kept."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if kept <= 0:
        return 0
    return min(kept, max(1, math.ceil(kept * top_fraction - _EPS)))


def _value(record: dict, metric: str) -> float:
    v = record.get(metric)
    # A missing or NaN score (e.g. zero base loss) ranks last rather than breaking the sort.
    if v is None or not isinstance(v, int | float) or math.isnan(v):
        return -math.inf
    return float(v)


def select_top(scores: Iterable[dict], top_fraction: float, metric: str = "learnability") -> list[str]:
    """Ids of the most learnable examples, best first; ties broken by id so reruns agree."""
    ranked = sorted(scores, key=lambda r: (-_value(r, metric), str(r["id"])))
    return [str(r["id"]) for r in ranked[: selection_size(len(ranked), top_fraction)]]
