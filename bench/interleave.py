"""Interleaved arms: how every benchmark in bench/ measures a ratio on a shared, noisy machine.

A ratio measured as "arm A for minutes, then arm B" moves with whatever else ran during one of the
two. Here the arms take turns in rounds of equal work: round i runs chunk i of every arm, one arm
after the other, so load that comes and goes falls on both arms of a round alike. Each round gives
one ratio; a benchmark reports the median of each arm and of the per-round ratios over at least
`MIN_REPEATS` rounds, and how far they spread. The order reverses every round (A B C, C B A, A B C,
...): no arm always runs first or right after the same other one (warm caches, memory just freed),
and arms listed next to each other stay next to each other, so a benchmark with more than two arms
lists the two arms of each ratio side by side.

    runs = interleave([Arm("batched", run_batched), Arm("sequential", run_sequential)], repeats=3)
    result = report(runs, "tokens", {"speedup": ("batched", "sequential")})
    # {"repeats": 3, "arms": {"batched": {"tokens_per_s": {"median": .., "spread": .., ...},
    #  "seconds": {...}}, ...}, "ratios": {"speedup": {"of": "batched/sequential tokens/s", ...}},
    #  "speedup": <median of the per-round ratios>}

Spread is the range (max - min) of the values and `rel_spread` the range over the median: with 3 to 6
values the range is the honest summary (an interquartile range of three values is no range at all).
`bench.record` refuses a figure whose ratio's `rel_spread` is over its limit.

The tests slow one arm down on purpose (`timed(fn, slowdown)`) and check that the ratio follows.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: Rounds a recorded figure needs (bench.record refuses fewer); tests may run fewer.
MIN_REPEATS = 3


@dataclass(frozen=True)
class Run:
    """One timed chunk of one arm: `work` units (tokens, samples, jobs) in `seconds`."""

    work: float
    seconds: float
    detail: object = None
    """Whatever else the arm produced (texts, scores, losses): the benchmark's to compare."""

    @property
    def rate(self) -> float:
        return self.work / self.seconds


@dataclass(frozen=True)
class Arm:
    """A named way of doing the work: `run(chunk)` does chunk `chunk` (0-based) and times it."""

    name: str
    run: Callable[[int], Run]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn: Callable[[], T], slowdown: float = 1.0) -> tuple[T, float]:
    """`(fn(), seconds)`. With `slowdown` > 1 the call takes that many times as long: it sleeps
    (slowdown - 1) x its own time inside the measured span (the tests' deliberately slowed arm)."""
    if slowdown < 1:
        raise ValueError(f"slowdown must be >= 1, got {slowdown}")
    t0 = time.perf_counter()
    out = fn()
    if slowdown > 1:
        time.sleep((slowdown - 1) * (time.perf_counter() - t0))
    return out, time.perf_counter() - t0


def interleave(arms: Sequence[Arm], repeats: int, say: Callable[[str], None] = log) -> dict[str, list[Run]]:
    """Run chunk 0 of every arm, then chunk 1, ... (`repeats` rounds; the order reverses each round).
    Returns each arm's runs in chunk order."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = [a.name for a in arms]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"need two or more arms with distinct names, got {names}")
    runs: dict[str, list[Run]] = {a.name: [] for a in arms}
    for chunk in range(repeats):
        for arm in arms if chunk % 2 == 0 else arms[::-1]:
            run = arm.run(chunk)
            runs[arm.name].append(run)
            say(f"round {chunk + 1}/{repeats} {arm.name}: {run.work:g} in {run.seconds:.2f} s ({run.rate:.4g}/s)")
    return runs


def sig(x: float, digits: int = 4) -> float:
    """`x` to `digits` significant digits (JSON that stays readable at any scale)."""
    return float(f"{x:.{digits}g}")


def stats(values: Sequence[float]) -> dict:
    """Median, range (`spread`), range over median (`rel_spread`), min, max and the values."""
    if not values:
        raise ValueError("no values")
    med = statistics.median(values)
    spread = max(values) - min(values)
    return {
        "median": sig(med),
        "spread": sig(spread),
        "rel_spread": sig(spread / med) if med else float("inf"),
        "min": sig(min(values)),
        "max": sig(max(values)),
        "values": [sig(v) for v in values],
    }


def round_ratios(num: Sequence[Run], den: Sequence[Run]) -> list[float]:
    """Per round: rate of `num` over rate of `den` (the two ran the same chunk, side by side)."""
    if len(num) != len(den):
        raise ValueError(f"arms ran {len(num)} and {len(den)} rounds")
    return [a.rate / b.rate for a, b in zip(num, den, strict=True)]


def equal_work(num: Sequence[Run], den: Sequence[Run], tolerance: float = 1e-3) -> bool:
    """Whether the two arms of a ratio did the same work in every round (within `tolerance` of it):
    a ratio of rates over unequal work is not a like-for-like figure, and bench.record refuses it."""
    return all(abs(a.work - b.work) <= tolerance * max(a.work, b.work) for a, b in zip(num, den, strict=True))


def report(runs: Mapping[str, Sequence[Run]], unit: str, ratios: Mapping[str, tuple[str, str]]) -> dict:
    """The interleaved part of a benchmark's JSON: per-arm rate and seconds, and each ratio
    (`key: (numerator arm, denominator arm)`) per round, with its median also under `key` itself
    and `equal_work` (`equal_work` of its two arms)."""
    out: dict = {
        "repeats": min(len(r) for r in runs.values()),
        "arms": {
            name: {f"{unit}_per_s": stats([r.rate for r in rs]), "seconds": stats([r.seconds for r in rs])}
            for name, rs in runs.items()
        },
        "ratios": {},
    }
    for key, (num, den) in ratios.items():
        out["ratios"][key] = {
            "of": f"{num}/{den} {unit}/s",
            **stats(round_ratios(runs[num], runs[den])),
            "equal_work": equal_work(runs[num], runs[den]),
        }
        out[key] = out["ratios"][key]["median"]
    return out


def median_of(runs: Sequence[Run], attr: Callable[[Run], float]) -> float:
    return sig(statistics.median(attr(r) for r in runs))
