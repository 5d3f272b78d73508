"""Rationale and RFT records as training candidates (pure logic; the step is
`TeacherActivities.reason_examples`).

Fine-tune-CoT (itsnamgyu/reasoning-teacher) writes rationales per question and style and keeps only
those whose final answer is right; RFT (OFA-Sys/gsm8k-ScRel) samples k per question and keeps the
verified ones on distinct reasoning paths (the teacher service verifies and dedupes). For a
classification task the gold answer is the example's label, and a kept rationale trains the student
on a second task — explain, then answer (`syllabus.prompts.rationale_prompt`, as in Distilling
step-by-step) — beside the plain label records. For the answer kinds the rationale is the answer the
student learns (its own prompt asks for the reasoning), checked by the kind's match (numeric: the
final numbers equal). A generated question has no gold answer: its rationales vote (self-consistency),
the majority answer, given by at least two of them, becomes its answer, and the others are wrong;
without such a majority all its rationales are dropped as `no_consensus`. Open-ended answers are not
checked here (the judge grades them at evaluation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from syllabus.tasks import TaskSpec

# Candidate categories that are plain labelled examples (questions for rationales and RFT).
EXAMPLE_CATEGORIES = frozenset({"seed", "expand", "targeted"})
# Candidate categories the reasoning steps write (a rationale or RFT sample: a solution).
SOLUTION_CATEGORIES = frozenset({"rationales", "rft"})


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
        "prompt": task.rationale_prompt_for(q["input"]),
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
        wrong = failed = no_consensus = 0
        ok = [rec for rec in written if rec.get("status") == "ok" and rec.get("question_id") in by_id]
        failed = len(written) - len(ok)
        gold = {q["id"]: q["label"] for q in qs if q["label"]}
        for qid, answer in majority_answers(task, [r for r in ok if r["question_id"] not in gold]).items():
            gold[qid] = answer
        for rec in ok:
            q = by_id[rec["question_id"]]
            if q["id"] not in gold:
                no_consensus += 1
                continue
            if not task.kind_spec.check(rec["answer"], gold[q["id"]]):
                wrong += 1  # Fine-tune-CoT: only rationales that reach the (gold or majority) answer train
                continue
            answered = {**q, "label": gold[q["id"]]}
            out.records.append(_record(task, mode, answered, rec["id"], rec["rationale"], rec.get("provenance") or {}))
        out.counts = {"written": len(written), "wrong": wrong, "failed": failed, "duplicate_paths": 0,
                      "no_consensus": no_consensus, "kept": len(out.records)}  # fmt: skip
        return out
    for rec in written:  # RFT: the teacher kept only verified samples on new reasoning paths
        q = by_id.get(rec.get("question_id"))
        if q is not None and task.kind_spec.check(rec.get("answer", ""), q["label"]):
            out.records.append(_record(task, mode, q, rec["id"], rec["response"], rec.get("provenance") or {}))
    out.counts = {
        "written": int(stats.get("sampled", 0)),
        "wrong": int(stats.get("incorrect", 0)),
        "failed": int(stats.get("unparsable", 0)),
        "duplicate_paths": int(stats.get("duplicate_paths", 0)),
        "no_consensus": 0,
        "kept": len(out.records),
    }
    return out


def majority_answers(task: TaskSpec, rationales: list[dict]) -> dict[str, str]:
    """Self-consistency for questions without a gold answer: question id -> the answer at least two
    of its rationales share and more share than any other (ties: none)."""
    if task.kind_spec.judged:
        return {r["question_id"]: r["answer"] for r in rationales}
    by_question: dict[str, list[dict]] = {}
    for r in rationales:
        by_question.setdefault(r["question_id"], []).append(r)
    out = {}
    for qid, recs in by_question.items():
        votes = Counter(k for r in recs if (k := task.kind_spec.answer_key(r["answer"])) is not None)
        ranked = votes.most_common(2)
        if ranked and ranked[0][1] >= 2 and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
            out[qid] = next(r["answer"] for r in recs if task.kind_spec.answer_key(r["answer"]) == ranked[0][0])
    return out
