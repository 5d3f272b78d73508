"""Build this example's seeds, validation and eval splits from the full Banking77 data set.

Run: python examples/banking77/make_subset.py [PATH_TO_BANKING77]   (default: ../shared/data/banking77)

Deterministic: the first SEEDS_PER_LABEL train rows, the next VALIDATION_PER_LABEL train rows (disjoint
from the seeds: ARTE's probe set and error analysis must not read training data) and the first
EVAL_PER_LABEL test rows of each chosen intent, in file order. The outputs (seeds.jsonl,
validation.jsonl, eval.jsonl) are committed; re-running reproduces them byte for byte.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "passcode_forgotten"]
SEEDS_PER_LABEL = 4
VALIDATION_PER_LABEL = 4
EVAL_PER_LABEL = 8
HERE = Path(__file__).resolve().parent


def first_per_label(path: Path, k: int, skip: int = 0) -> list[dict]:
    """Rows skip+1 .. skip+k of each chosen intent, in file order."""
    taken: dict[str, list[dict]] = {label: [] for label in LABELS}
    seen: dict[str, int] = dict.fromkeys(LABELS, 0)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            bucket = taken.get(row["category"])
            if bucket is None:
                continue
            seen[row["category"]] += 1
            if seen[row["category"]] > skip and len(bucket) < k:
                bucket.append({"input": row["text"].strip(), "label": row["category"]})
    return [ex for label in LABELS for ex in taken[label]]


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "banking77"
    splits = (
        ("seeds", "train.csv", SEEDS_PER_LABEL, 0),
        ("validation", "train.csv", VALIDATION_PER_LABEL, SEEDS_PER_LABEL),
        ("eval", "test.csv", EVAL_PER_LABEL, 0),
    )
    for name, csv_name, k, skip in splits:
        rows = first_per_label(src / csv_name, k, skip)
        (HERE / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}: {len(rows)} examples")


if __name__ == "__main__":
    main()
