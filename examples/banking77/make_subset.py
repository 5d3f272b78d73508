"""Build this example's data splits from the full Banking77 data set: the demo's and the outcome task's.

Run: python examples/banking77/make_subset.py [PATH_TO_BANKING77]   (default: ../shared/data/banking77)

Deterministic: per chosen intent, the first `seeds` train rows, the next `validation` train rows
(disjoint from the seeds: ARTE's probe set, error analysis and tuning must not read training data)
and the first `eval` test rows, in file order. The outputs are committed; re-running reproduces them
byte for byte.

- `data/`: the demo (task.yaml, full.yaml): 5 intents; 4 seeds, 4 validation, 8 eval rows each.
- `data/outcome/` (outcome.yaml, bench.outcome): 10 intents chosen before any run, the first ten of
  the data set's categories.json that the demo does not use; 4 seeds, 10 validation, 10 eval rows each.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import NamedTuple

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "passcode_forgotten"]
OUTCOME_LABELS = [
    "card_linking", "card_payment_wrong_exchange_rate", "extra_charge_on_statement", "pending_cash_withdrawal",
    "fiat_currency_support", "card_delivery_estimate", "automatic_top_up", "card_not_working", "exchange_via_app",
    "age_limit",
]  # fmt: skip
HERE = Path(__file__).resolve().parent


class Subset(NamedTuple):
    folder: str
    labels: list[str]
    seeds: int
    validation: int
    eval: int


SUBSETS = (Subset("data", LABELS, 4, 4, 8), Subset("data/outcome", OUTCOME_LABELS, 4, 10, 10))


def first_per_label(path: Path, labels: list[str], k: int, skip: int = 0) -> list[dict]:
    """Rows skip+1 .. skip+k of each chosen intent, in file order."""
    taken: dict[str, list[dict]] = {label: [] for label in labels}
    seen: dict[str, int] = dict.fromkeys(labels, 0)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            bucket = taken.get(row["category"])
            if bucket is None:
                continue
            seen[row["category"]] += 1
            if seen[row["category"]] > skip and len(bucket) < k:
                bucket.append({"input": row["text"].strip(), "label": row["category"]})
    return [ex for label in labels for ex in taken[label]]


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "banking77"
    for sub in SUBSETS:
        splits = (
            ("seeds", "train.csv", sub.seeds, 0),
            ("validation", "train.csv", sub.validation, sub.seeds),
            ("eval", "test.csv", sub.eval, 0),
        )
        out = HERE / sub.folder
        out.mkdir(parents=True, exist_ok=True)
        for name, csv_name, k, skip in splits:
            rows = first_per_label(src / csv_name, sub.labels, k, skip)
            (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            print(f"{sub.folder}/{name}: {len(rows)} examples")


if __name__ == "__main__":
    main()
