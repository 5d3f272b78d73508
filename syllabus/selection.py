"""Top-fraction selection, the one implementation the orchestrator (LoBaSS: the most learnable kept
examples) and the student's Select RPC (SELECT_POLICY_RATIO, Cherry_LLM's "top rate") share.

Rounding: `top_count(n, fraction)` is ceil(n * fraction), computed with a 1e-9 slack so floating
point does not add an example the user did not ask for (10 * 0.3 == 3.0000000000000004 selects 3,
not 4); any positive fraction of a non-empty set selects at least one; 0 selects none.

Ranking: best first by the column (descending unless `ascending`), ties broken by id so reruns
agree; a missing or NaN score ranks last rather than breaking the sort.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

_EPS = 1e-9


def top_count(n: int, fraction: float) -> int:
    """How many of `n` rows a top `fraction` (in [0, 1]) selects; see the module doc for rounding."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if n <= 0 or fraction == 0.0:
        return 0
    return min(n, max(1, math.ceil(n * fraction - _EPS)))


def _value(row: Mapping, column: str, ascending: bool) -> float:
    v = row.get(column)
    if not isinstance(v, int | float) or math.isnan(v):
        return math.inf  # last either way
    return float(v) if ascending else -float(v)


def ranked(rows: Iterable[Mapping], column: str, ascending: bool = False) -> list[Mapping]:
    """`rows` best first by `column`; ties by id; missing or NaN scores last."""
    return sorted(rows, key=lambda r: (_value(r, column, ascending), str(r["id"])))


def top_fraction(rows: Iterable[Mapping], column: str, fraction: float, ascending: bool = False) -> list[str]:
    """Ids of the best `top_count(len(rows), fraction)` rows by `column`, best first."""
    order = ranked(rows, column, ascending)
    return [str(r["id"]) for r in order[: top_count(len(order), fraction)]]
