"""Tailor (ARTE, arXiv 2406.19227): align the teacher to what helps *this* student learn.

1. Drafts: the teacher writes draft questions and, for each, rationales in several reasoning styles
   (`teacher_svc.reasoning.write_rationales`).
2. Student preference: `s_r` = the student's accuracy on a small preference set Dpref when the draft
   (question, rationale, answer) is its one-shot demonstration; `s_q` = mean of `s_r` over the
   question's rationales. The student computes them (StudentService.Score, METRIC_ARTE_PREFERENCE);
   Tailor reads them from the `scores` artifact.
3. Pairs (`build_pairs`): question level — top vs bottom quartile of questions by `s_q` within a
   group (the draft's "group": the loop's is the question's label, since each expansion prompt shows
   other seeds and yields one question; default its generation prompt), the pair posed under the
   chosen question's generation prompt; rationale level — per question, argmax vs argmin `s_r` (skipped on ties). The
   rationale pair's prompt is the style-neutral rationale prompt, so the aligned teacher learns which
   kind of rationale to write when simply asked.
4. DPO on the teacher (a LoRA; the reference is the teacher with the adapter disabled) over the mixed
   pairs, and regeneration with the aligned teacher at temperature 0: both are orchestrator steps
   (`orchestrator.tailoring.TailorTeacherWorkflow`), not this service's — services never call each other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from teacher_svc.backend import ChatPrompt
from teacher_svc.reasoning import RATIONALE_STOP, Question

NEUTRAL_RATIONALE_TEMPLATE = """{instructions}

Question: {question}

Explain the answer, then finish with a line "Answer: <answer>"."""
NEUTRAL_STOP = RATIONALE_STOP


def neutral_rationale_prompt(instructions: str, question: str) -> ChatPrompt:
    return ChatPrompt(NEUTRAL_RATIONALE_TEMPLATE.format(instructions=instructions.strip(), question=question))


@dataclass(frozen=True)
class Draft:
    """A draft question with its generation prompt and scored rationales."""

    question: Question
    prompt: str  # the user message that generated the question
    completion: str  # the teacher's reply that produced it (what DPO prefers or not)
    rationales: Sequence[str]
    scores: Sequence[float]  # s_r per rationale
    # Questions ranked against each other for question-level pairs; "" = those of the same prompt.
    group: str = ""

    @property
    def s_q(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0


@dataclass(frozen=True)
class Pairs:
    """DPO records {"prompt", "chosen", "rejected", "level", "margin"} and their counts by level."""

    records: list[dict]
    question_level: int
    rationale_level: int


def build_pairs(drafts: Sequence[Draft], instructions: str) -> Pairs:
    """Question-level (quartiles by s_q within a group) and rationale-level (argmax/argmin s_r) pairs."""
    records: list[dict] = []
    by_group: dict[str, list[Draft]] = defaultdict(list)
    for d in drafts:
        if d.prompt and d.completion:  # question-level pairs need the generation prompt and reply
            by_group[d.group or d.prompt].append(d)
    q_pairs = 0
    for group in by_group.values():
        ranked = sorted(group, key=lambda d: -d.s_q)
        quarter = max(1, len(ranked) // 4)
        if len(ranked) < 2:
            continue
        top, bottom = ranked[:quarter], ranked[::-1][:quarter]
        for hi, lo in zip(top, bottom, strict=True):
            if hi.s_q <= lo.s_q or hi is lo:
                continue
            records.append(
                {
                    "prompt": hi.prompt,
                    "chosen": hi.completion,
                    "rejected": lo.completion,
                    "level": "question",
                    "margin": round(hi.s_q - lo.s_q, 6),
                    "question_id": hi.question.id,
                }
            )
            q_pairs += 1
    r_pairs = 0
    for d in drafts:
        if len(d.rationales) < 2:
            continue
        best = max(range(len(d.scores)), key=lambda i: d.scores[i])
        worst = min(range(len(d.scores)), key=lambda i: d.scores[i])
        if d.scores[best] <= d.scores[worst]:
            continue  # the student cannot tell them apart: no preference to learn
        records.append(
            {
                "prompt": neutral_rationale_prompt(instructions, d.question.text).user,
                "chosen": d.rationales[best],
                "rejected": d.rationales[worst],
                "level": "rationale",
                "margin": round(d.scores[best] - d.scores[worst], 6),
                "question_id": d.question.id,
            }
        )
        r_pairs += 1
    return Pairs(records, q_pairs, r_pairs)


def drafts_from_records(drafts: Sequence[Mapping], scores: Sequence[Mapping]) -> list[Draft]:
    """Drafts from Tailor's inputs: one record per rationale ("id", "question_id", "question",
    "rationale", "answer", optional "prompt", "completion" and "group") and the student's score rows ("id",
    "arte_s_r"). Rationales without a score are left out; a question needs at least one scored."""
    s_r = {}
    for i, row in enumerate(scores):
        if "id" not in row or not isinstance(row.get("arte_s_r"), int | float):
            raise ValueError(f'scores[{i}] needs "id" and a numeric "arte_s_r"')
        s_r[str(row["id"])] = float(row["arte_s_r"])
    grouped: dict[str, list[Mapping]] = {}
    for i, rec in enumerate(drafts):
        for f in ("id", "question", "rationale"):
            if not isinstance(rec.get(f), str) or not rec[f].strip():
                raise ValueError(f'drafts[{i}] needs a non-empty string "{f}"')
        if rec["id"] in s_r:
            grouped.setdefault(str(rec.get("question_id") or rec["question"]), []).append(rec)
    if not grouped:
        raise ValueError("no draft has a score (scores ids must be draft ids)")
    out = []
    for qid, recs in grouped.items():
        first = recs[0]
        answer = first.get("answer")
        out.append(
            Draft(
                Question(qid, first["question"], None if answer is None else str(answer)),
                str(first.get("prompt") or ""),
                str(first.get("completion") or ""),
                [r["rationale"] for r in recs],
                [s_r[r["id"]] for r in recs],
                str(first.get("group") or ""),
            )
        )
    return out
