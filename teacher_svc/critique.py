"""Rule critique (CRITIQUE_MODE_RULES): keep or drop each generated example, with a reason. No model.

Rules, in order (the first that applies decides):

1. `label_not_in_task` — the label is not one of the task's labels (classification only);
2. `empty` / `too_short` / `too_long` — the input is not a usable message
   (`teacher_svc.generation.input_length_problem`);
3. `copies_seed` — the input equals a seed after normalisation or is a near-duplicate of one
   (`teacher_svc.dedupe`, the same measure Generate uses);
4. `duplicate` — the input duplicates an earlier *kept* example;
5. otherwise `ok`.

A reason is the rule's code, followed by ": <detail>" where there is one (e.g. which seed was copied).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from syllabus.records import content_id
from teacher_svc.dedupe import DuplicateIndex, Match
from teacher_svc.generation import Seed, input_length_problem

OK = "ok"
LABEL_NOT_IN_TASK = "label_not_in_task"
COPIES_SEED = "copies_seed"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Verdict:
    """The critique record of one example: {"id", "keep", "reason"}."""

    id: str
    keep: bool
    reason: str

    def record(self) -> dict:
        return {"id": self.id, "keep": self.keep, "reason": self.reason}


def _describe(match: Match) -> str:
    if match.kind == "exact":
        return f"same text as {match.of}"
    return f"near-duplicate of {match.of} (word Jaccard {match.similarity:.2f})"


def judge(examples: Sequence[dict], labels: Sequence[str], seeds: Sequence[Seed]) -> list[Verdict]:
    """One verdict per example, in order."""
    known = set(labels)
    seed_index = DuplicateIndex()
    for s in seeds:
        seed_index.add(s.input, s.id)
    kept_index = DuplicateIndex()
    verdicts = []
    for ex in examples:
        text, label = ex.get("input"), ex.get("label")
        text = text if isinstance(text, str) else ""
        label = label if isinstance(label, str) else ""
        rid = ex.get("id") or content_id(text, label)
        verdict = _judge_one(rid, text, label, known, seed_index, kept_index)
        if verdict.keep:
            kept_index.add(text, rid)
        verdicts.append(verdict)
    return verdicts


def _judge_one(
    rid: str, text: str, label: str, known: set[str], seeds: DuplicateIndex, kept: DuplicateIndex
) -> Verdict:
    if known and label not in known:  # no label set: a question kind (answers come later)
        return Verdict(rid, False, f"{LABEL_NOT_IN_TASK}: {label!r}")
    if problem := input_length_problem(text):
        return Verdict(rid, False, problem)
    if match := seeds.find(text):
        return Verdict(rid, False, f"{COPIES_SEED}: {_describe(match)}")
    if match := kept.find(text):
        return Verdict(rid, False, f"{DUPLICATE}: {_describe(match)}")
    return Verdict(rid, True, OK)
