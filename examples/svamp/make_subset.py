"""Build this example's seeds, validation and eval splits from SVAMP (MIT; see data/LICENSE).

Run: python examples/svamp/make_subset.py [PATH_TO_SVAMP]   (default: ../shared/data/svamp)

Deterministic: problems in file order, taken round-robin over the four operation types so every
split has each kind of problem: the first SEEDS for the seeds, the next VALIDATION for the
validation split, the next EVAL for the eval set. A problem is `Body + " " + Question`; its answer
is SVAMP's `Answer` (an integer where it is one). The outputs are committed; re-running reproduces
them byte for byte.
"""

from __future__ import annotations

import json
import sys
from itertools import zip_longest
from pathlib import Path

SEEDS, VALIDATION, EVAL = 40, 20, 100
HERE = Path(__file__).resolve().parent


def answer(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "svamp"
    problems = json.loads((src / "SVAMP.json").read_text())
    by_type: dict[str, list[dict]] = {}
    for p in problems:
        by_type.setdefault(p["Type"], []).append(p)
    order = [p for group in zip_longest(*(by_type[t] for t in sorted(by_type))) for p in group if p is not None]
    rows = [{"input": f"{p['Body'].strip()} {p['Question'].strip()}", "answer": answer(p["Answer"]), "id": p["ID"]} for p in order]
    splits = {"seeds": rows[:SEEDS], "validation": rows[SEEDS : SEEDS + VALIDATION], "eval": rows[SEEDS + VALIDATION : SEEDS + VALIDATION + EVAL]}
    for name, split in splits.items():
        lines = "".join(json.dumps({"input": r["input"], "answer": r["answer"]}) + "\n" for r in split)
        (HERE / "data" / f"{name}.jsonl").write_text(lines)
        print(f"{name}: {len(split)} problems")


if __name__ == "__main__":
    main()
