"""How the loop reads the teacher's model-based critiques (pure logic).

`critique.mode` past the rule filter (ALGORITHMS.md, "Critique and repair"). A classification task
critiques its generated examples (the label is the solution); an answer kind (exact_answer,
numeric, open_ended) critiques its solutions, the rationales and RFT samples that reached the
verified answer, in the `critique-solutions` step after the reasoning steps.

- judge: the teacher critiques "Question: <question> / Solution: <label or rationale>" and ends
  with its verdict right/wrong (the CFT prompt, used as a verdict, JSON by structured output); kept when right.
- cft: as judge, and every parsed critique is also a training record (Critique Fine-Tuning: the
  student learns to write the critique), category "cft", with the cft objective's fields
  (question, solution, critique) for a recipe stage `objective: cft`.
- rubric: CITING (arXiv 2310.02527) — one rubric per question type (a label, or the task's
  instructions for an answer kind); the *student* answers each question (its greedy answer with the
  current adapter, `StudentService.Evaluate`, passed in by the activity: services never call each
  other); the teacher revises the student's answer against the rubric. Every accepted revision is a
  training record as CITING trains the student, (instruction, rubric, the student's own answer) ->
  revision, category "citing". Classification: the example takes the one label the revision names
  (relabelled when it differs), and is dropped when it names none or several. An answer kind: the
  revision replaces the rationale when its last answer line ("Answer: 5", "The answer is 5.", read
  as a rationale's) gives the verified answer (open_ended has no verifier), else the original
  rationale stays (`rubric_unverified`) and the unverified revision does not train.
- reflection (classification only): Reflection-Tuning — a better instruction and answer; the
  example becomes the reflected one (new input, the label the better answer names), keeping the
  original under "reflection" so the Selective Reflection-Tuning rule (`select.policy: reflection`)
  can choose between versions. An answer kind refuses it: nothing would verify the new question's answer.

A reply that never parsed ("status": "failed") drops its example with reason "unparsable"; its raw
text stays in the critiques artifact. Nothing here fails a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from syllabus.answers import normalize, stated_answer
from syllabus.records import content_id
from syllabus.tasks import TaskSpec
from syllabus_sdk.teacher.v1 import teacher_pb2

# Provenance methods of records a critique writes (new samples in the lineage).
RELABEL, REFLECTION, CFT, CITING = "rubric_revision", "reflection", "cft_critique", "citing"
REPAIR_METHODS = frozenset({RELABEL, REFLECTION, CFT, CITING})
REASON_CHARS = 300  # a verdict's reason quotes at most this much of the teacher's reply


def named_label(text: str, labels: Sequence[str]) -> str | None:
    """The one label `text` names (normalised, whole words), or None when it names none or several."""
    padded = f" {normalize(text)} "
    named = [label for label in labels if f" {normalize(label)} " in padded]
    return named[0] if len(named) == 1 else None


def reason_code(reason: str) -> str:
    """"copies_seed: same text as ..." -> "copies_seed"."""
    return reason.split(":", 1)[0].strip() or "unknown"


def _quote(text: str) -> str:
    return " ".join(str(text).split())[:REASON_CHARS]


def critiques_solutions(task: TaskSpec) -> bool:
    """Whether the task's critique reads solutions (rationales) rather than labelled examples."""
    return task.kind_spec.reasons


def question_solution(task: TaskSpec, r: dict) -> tuple[str, str]:
    """What the teacher critiques: a classification example's prompt and label, or an answer kind's
    question and its rationale."""
    if critiques_solutions(task):
        return r["input"], r["response"]
    return task.prompt_for(r["input"]), r["label"]


def request_examples(
    task: TaskSpec, mode: str, records: Sequence[dict], student_answers: Mapping[str, str] | None = None
) -> tuple[int, list[dict]]:
    """(CritiqueMode, the examples in that mode's input format) for the rule-kept `records` (the
    verified solutions, for an answer kind). rubric (CITING) revises the student's answers:
    `student_answers` maps each record's id to the student's greedy answer to its prompt."""
    pairs = [question_solution(task, r) for r in records]
    if mode in ("judge", "cft"):
        return teacher_pb2.CRITIQUE_MODE_CFT, [
            {"id": r["id"], "question": q, "solution": a} for r, (q, a) in zip(records, pairs, strict=True)
        ]
    if mode == "rubric":
        missing = [r["id"] for r in records if student_answers is None or r["id"] not in student_answers]
        if missing:
            raise ValueError(f"CITING revises the student's answers: none for {missing[:3]}")
        one_type = task.instructions if critiques_solutions(task) else None  # else the label is the type
        return teacher_pb2.CRITIQUE_MODE_RUBRIC_REVISION, [
            {"id": r["id"], "question": q, "answer": student_answers[r["id"]], "type": one_type or r["label"]}
            for r, (q, _) in zip(records, pairs, strict=True)
        ]
    if mode == "reflection":
        return teacher_pb2.CRITIQUE_MODE_REFLECTION, [{"id": r["id"], "instruction": r["input"], "answer": r["label"]} for r in records]
    raise ValueError(f"no model critique for mode {mode!r}")


@dataclass
class Outcome:
    kept: list[dict] = field(default_factory=list)  # examples kept (as given, relabelled or reflected)
    extra: list[dict] = field(default_factory=list)  # training records the critique wrote (cft)
    verdicts: list[dict] = field(default_factory=list)  # {"id", "keep", "reason"} per rule-kept example


def _example(task: TaskSpec, parent: dict, text: str, label: str, method: str, prov: dict, **more) -> dict:
    return {
        "id": content_id(text, label),
        "input": text,
        "label": label,
        "prompt": task.prompt_for(text),
        "response": label,
        "parent_id": parent["id"],
        "provenance": {**(prov or {}), "method": method},
        **more,
    }


def parse_counts(replies: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Per model step (the method of a reply's provenance): replies, parsed, retried, unparsable. A
    revision never asked for (attempts 0: its type's rubric did not parse) is no reply: the rubric's
    own record counts that failure."""
    counts: dict[str, dict[str, int]] = {}
    for c in replies:
        if c.get("attempts", 1) == 0:
            continue
        step = (c.get("provenance") or {}).get("method", "critique")
        n = counts.setdefault(step, {"replies": 0, "parsed": 0, "retried": 0, "unparsable": 0})
        n["replies"] += 1
        ok = c.get("status") == "ok"
        n["parsed"] += ok
        n["retried"] += ok and c.get("attempts", 1) > 1
        n["unparsable"] += not ok
    return dict(sorted(counts.items()))


def interpret(task: TaskSpec, mode: str, records: Sequence[dict], critiques: Sequence[dict]) -> Outcome:
    """The kept examples, extra training records and verdicts of a model-based critique."""
    by_id = {c["id"]: c for c in critiques}
    out = Outcome()
    for r in records:
        c = by_id.get(r["id"])
        if c is None or c.get("status") != "ok":
            error = "no reply" if c is None else f"{c.get('error', '')} | raw: {c.get('raw', '')}"
            out.verdicts.append({"id": r["id"], "keep": False, "reason": f"unparsable: {_quote(error)}"})
            continue
        prov = c.get("provenance") or {}
        if mode in ("judge", "cft"):
            right = c.get("verdict") == "right"
            reason = f"judge_{'right' if right else 'wrong'}: {_quote(c['critique'])}"
            out.verdicts.append({"id": r["id"], "keep": right, "reason": reason})
            if right:
                out.kept.append(r)
            if mode == "cft":
                question, solution = question_solution(task, r)
                out.extra.append({
                    "id": content_id("cft", c["prompt"], c["response"]), "input": r["input"], "label": r["label"],
                    "prompt": c["prompt"], "response": c["response"], "parent_id": r["id"], "category": "cft",
                    # the fields of the trainer's cft objective (a recipe stage with objective: cft)
                    "question": question, "solution": solution, "critique": c["critique"],
                    "provenance": {**prov, "method": CFT},
                })  # fmt: skip
        elif mode == "rubric" and critiques_solutions(task):
            _revised_solution(task, r, c, prov, out)
        elif mode == "rubric":
            label = named_label(c.get("revision", ""), task.labels)
            if label is None:
                out.verdicts.append({"id": r["id"], "keep": False, "reason": f"revision_names_no_label: {_quote(c.get('revision', ''))}"})
                continue
            if label == r["label"]:
                out.verdicts.append({"id": r["id"], "keep": True, "reason": "rubric_confirmed"})
                out.kept.append(r)
            else:
                out.verdicts.append({"id": r["id"], "keep": True, "reason": f"rubric_relabelled: {r['label']} -> {label}"})
                out.kept.append(_example(task, r, r["input"], label, RELABEL, prov, rubric=c.get("rubric", "")))
            out.extra.append(citing_record(r, c, label, prov))
        else:  # reflection
            text = " ".join(str(c.get("new_instruction", "")).split())
            label = named_label(c.get("better_answer", ""), task.labels)
            if label is None or not 3 <= len(text.split()) <= 120:
                why = "reflection_names_no_label" if label is None else "reflection_bad_instruction"
                out.verdicts.append({"id": r["id"], "keep": False, "reason": f"{why}: {_quote(c.get('better_answer', ''))}"})
                continue
            out.verdicts.append({"id": r["id"], "keep": True, "reason": f"reflected: {_quote(text)}"})
            original = {"input": r["input"], "label": r["label"]}
            out.kept.append(_example(task, r, text, label, REFLECTION, prov, reflection=original))
    return out


def _revised_solution(task: TaskSpec, r: dict, c: dict, prov: dict, out: Outcome) -> None:
    """CITING on an answer kind's solution: the revision trains in place of the rationale when it
    still reaches the verified answer; otherwise the verified original stays."""
    revision = str(c.get("revision", "")).strip()
    stated = stated_answer(revision)  # read as the teacher reads a rationale: its last answer line
    verified = task.kind_spec.judged or (stated is not None and task.kind_spec.check(stated[1], r["label"]))
    if not verified:
        out.verdicts.append({"id": r["id"], "keep": True, "reason": f"rubric_unverified: {_quote(revision)}"})
        out.kept.append(r)
        return
    out.verdicts.append({"id": r["id"], "keep": True, "reason": "rubric_revised"})
    out.extra.append(citing_record(r, c, r["label"], prov))
    out.kept.append({
        **r, "id": content_id(r["prompt"], revision), "response": revision, "parent_id": r["id"],
        "rubric": c.get("rubric", ""), "provenance": {**prov, "method": RELABEL},
    })  # fmt: skip


def citing_record(r: dict, c: dict, label: str, prov: dict) -> dict:
    """CITING's training record of an accepted revision: (instruction, rubric, the student's own
    answer) -> the teacher's revision, the prompt being the one the teacher revised from."""
    return {
        "id": content_id("citing", c["prompt"], c["revision"]), "input": r["input"], "label": label,
        "prompt": c["prompt"], "response": c["revision"], "parent_id": r["id"], "category": "citing",
        "student_answer": c.get("answer", ""), "rubric": c.get("rubric", ""), "provenance": {**prov, "method": CITING},
    }  # fmt: skip
