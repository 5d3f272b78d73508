"""Rationale and RFT records as training candidates (pure logic; the step is
`TeacherActivities.reason_examples`).

Fine-tune-CoT (itsnamgyu/reasoning-teacher) writes rationales per question and style and keeps only
those whose final answer is right; RFT (OFA-Sys/gsm8k-ScRel) samples k per question and keeps the
verified ones on distinct reasoning paths (the teacher service verifies and dedupes). For a
classification task the gold answer is the example's label, and a kept rationale trains the student
on a second task — explain, then answer (`syllabus.prompts.rationale_prompt`, as in Distilling
step-by-step) — beside the plain label records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.critique_modes import normalize
from syllabus.prompts import rationale_prompt
from syllabus.tasks import TaskSpec

# Candidate categories that are plain labelled examples (questions for rationales and RFT).
EXAMPLE_CATEGORIES = frozenset({"seed", "expand", "targeted"})


def questions(seeds: Sequence[dict], candidates: Sequence[dict], limit: int) -> list[dict]:
    """Up to `limit` questions {"id", "input", "label"}: the seeds first, then kept examples (not
    records that are already rationales or critiques)."""
    out: dict[str, dict] = {}
    for r in [*seeds, *candidates]:
        if len(out) >= limit:
            break
        if r.get("category", "expand") not in EXAMPLE_CATEGORIES and "category" in r:
            continue
        out.setdefault(r["id"], {"id": r["id"], "input": r["input"], "label": r["label"]})
    return list(out.values())


@dataclass
class Outcome:
    records: list[dict] = field(default_factory=list)
    # written, wrong, failed, duplicate_paths, kept
    counts: dict[str, int] = field(default_factory=dict)


def _record(task: TaskSpec, mode: str, q: dict, rid: str, response: str, prov: dict) -> dict:
    return {
        "id": rid,
        "input": q["input"],
        "label": q["label"],
        "prompt": rationale_prompt(task.instructions, task.labels, q["input"]),
        "response": response,
        "parent_id": q["id"],
        "category": mode,
        "provenance": prov,
    }


def training_records(task: TaskSpec, mode: str, qs: Sequence[dict], written: Sequence[dict], stats: dict) -> Outcome:
    """The kept rationales (RFT samples) as candidate records, and the counts of what was dropped."""
    by_id = {q["id"]: q for q in qs}
    out = Outcome()
    if mode == "rationales":
        wrong = failed = 0
        for rec in written:
            q = by_id.get(rec.get("question_id"))
            if q is None or rec.get("status") != "ok":
                failed += 1
                continue
            if normalize(rec["answer"]) != normalize(q["label"]):
                wrong += 1  # Fine-tune-CoT: only rationales that reach the gold answer train
                continue
            out.records.append(_record(task, mode, q, rec["id"], rec["rationale"], rec.get("provenance") or {}))
        out.counts = {"written": len(written), "wrong": wrong, "failed": failed, "duplicate_paths": 0, "kept": len(out.records)}
        return out
    for rec in written:  # RFT: the teacher kept only verified samples on new reasoning paths
        q = by_id.get(rec.get("question_id"))
        if q is not None and normalize(rec.get("answer", "")) == normalize(q["label"]):
            out.records.append(_record(task, mode, q, rec["id"], rec["response"], rec.get("provenance") or {}))
    out.counts = {
        "written": int(stats.get("sampled", 0)),
        "wrong": int(stats.get("incorrect", 0)),
        "failed": int(stats.get("unparsable", 0)),
        "duplicate_paths": int(stats.get("duplicate_paths", 0)),
        "kept": len(out.records),
    }
    return out
