"""Tailor (ARTE, arXiv 2406.19227): align the teacher to what helps *this* student learn.

1. Drafts: the teacher writes draft questions and, for each, rationales in several reasoning styles
   (`teacher_svc.reasoning.write_rationales`).
2. Student preference: `s_r` = the student's accuracy on a small preference set Dpref when the draft
   (question, rationale, answer) is its one-shot demonstration; `s_q` = mean of `s_r` over the
   question's rationales. A `PreferenceScorer` supplies the scores (the student service's job).
3. Pairs (`build_pairs`): question level — top vs bottom quartile of questions by `s_q` under the same
   generation prompt; rationale level — per question, argmax vs argmin `s_r` (skipped on ties). The
   rationale pair's prompt is the style-neutral rationale prompt, so the aligned teacher learns which
   kind of rationale to write when simply asked.
4. DPO on the teacher (a LoRA; the reference is the teacher with the adapter disabled) over the mixed
   pairs; the trainer does this (`objective: dpo`).
5. The aligned teacher regenerates at temperature 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from teacher_svc.backend import ChatPrompt
from teacher_svc.reasoning import RATIONALE_STOP, Question

NEUTRAL_RATIONALE_TEMPLATE = """{instructions}

Question: {question}

Explain the answer, then finish with a line "Answer: <answer>"."""
NEUTRAL_STOP = RATIONALE_STOP


def neutral_rationale_prompt(instructions: str, question: str) -> ChatPrompt:
    return ChatPrompt(NEUTRAL_RATIONALE_TEMPLATE.format(instructions=instructions.strip(), question=question))


class PreferenceScorer(Protocol):
    """The student's one-shot ICL preference: for each demo (question, rationale, answer), its accuracy
    on the preference set, in [0, 1]."""

    def scores(self, demos: Sequence[tuple[str, str, str]]) -> list[float]: ...


@dataclass(frozen=True)
class Draft:
    """A draft question with its generation prompt and scored rationales."""

    question: Question
    prompt: str  # the user message that generated the question
    completion: str  # the teacher's reply that produced it (what DPO prefers or not)
    rationales: Sequence[str]
    scores: Sequence[float]  # s_r per rationale

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
    """Question-level (quartiles within a generation prompt) and rationale-level (argmax/argmin) pairs."""
    records: list[dict] = []
    by_prompt: dict[str, list[Draft]] = defaultdict(list)
    for d in drafts:
        by_prompt[d.prompt].append(d)
    q_pairs = 0
    for prompt, group in by_prompt.items():
        ranked = sorted(group, key=lambda d: -d.s_q)
        quarter = max(1, len(ranked) // 4)
        if len(ranked) < 2:
            continue
        top, bottom = ranked[:quarter], ranked[::-1][:quarter]
        for hi, lo in zip(top, bottom, strict=True):
            if hi.s_q <= lo.s_q or hi is lo:
                continue
            records.append(
                {"prompt": prompt, "chosen": hi.completion, "rejected": lo.completion, "level": "question",
                 "margin": round(hi.s_q - lo.s_q, 6), "question_id": hi.question.id}
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
