"""Build this example's seeds, validation and eval splits from SVAMP (MIT; see data/LICENSE).

Run: python examples/svamp/make_subset.py [PATH_TO_SVAMP]   (default: ../shared/data/svamp)

Deterministic: problems in file order, taken round-robin over the four operation types so every
split has each kind of problem: the first SEEDS for the seeds, the next VALIDATION for the
validation split, the next EVAL for the eval set. A problem is `Body + " " + Question`; its answer
is SVAMP's `Answer` (an integer where it is one); a seed also carries SVAMP's `Equation` as its
worked solution ("76 - 25 = 51"), which it trains on before its answer line. The outputs are
committed; re-running reproduces them byte for byte.
"""

from __future__ import annotations

import json
import re
import sys
from itertools import zip_longest
from pathlib import Path

SEEDS, VALIDATION, EVAL = 40, 20, 100
HERE = Path(__file__).resolve().parent


def answer(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def solution(equation: str, result: float) -> str:
    """SVAMP's equation, readable: "( ( 5.0 + 3.0 ) * 2.0 )", 16 -> "(5 + 3) * 2 = 16"."""
    text = re.sub(r"(\d+)\.0\b", r"\1", equation)
    text = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", " ".join(text.split())))
    if text.startswith("(") and text.endswith(")"):  # the outer pair, when it wraps the whole equation
        depth = 0
        for i, c in enumerate(text):
            depth += {"(": 1, ")": -1}.get(c, 0)
            if depth == 0 and i < len(text) - 1:
                break
        else:
            text = text[1:-1]
    return f"{text} = {answer(result)}"


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "svamp"
    problems = json.loads((src / "SVAMP.json").read_text())
    by_type: dict[str, list[dict]] = {}
    for p in problems:
        by_type.setdefault(p["Type"], []).append(p)
    order = [p for group in zip_longest(*(by_type[t] for t in sorted(by_type))) for p in group if p is not None]
    rows = [{"input": f"{p['Body'].strip()} {p['Question'].strip()}", "answer": answer(p["Answer"]),
             "solution": solution(p["Equation"], p["Answer"])} for p in order]  # fmt: skip
    splits = {"seeds": rows[:SEEDS], "validation": rows[SEEDS : SEEDS + VALIDATION], "eval": rows[SEEDS + VALIDATION : SEEDS + VALIDATION + EVAL]}
    for name, split in splits.items():
        fields = ("input", "answer", "solution") if name == "seeds" else ("input", "answer")
        lines = "".join(json.dumps({f: r[f] for f in fields}) + "\n" for r in split)
        (HERE / "data" / f"{name}.jsonl").write_text(lines)
        print(f"{name}: {len(split)} problems")


if __name__ == "__main__":
    main()
