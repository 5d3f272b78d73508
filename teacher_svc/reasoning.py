"""Rationales and rejection sampling for tasks with checkable answers.

- `write_rationales` — several rationales per question, one group per reasoning style
  (Fine-tune-CoT: D samples per question; ARTE: drafts in styles such as step-by-step, ELI5, symbolic).
  Every rationale must end with "Answer: <answer>"; a reply without one is retried, then recorded as
  failed with its raw text (`teacher_svc.retry`).
- `rejection_sample` — RFT (Yuan et al. 2023): `k` samples per question, keep those whose final answer
  the verifier accepts, and drop a correct sample whose *reasoning path* repeats an earlier kept one.
  The path is the list of equations in the rationale (as gsm8k-ScRel does) when it has any, else the
  normalised text.

Verifiers (`verify`): classification and exact-answer compare normalised text; numeric compares
numbers with a relative tolerance of 1e-6 (commas and a trailing unit are ignored).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from syllabus import kinds
from syllabus.answers import stated_answer
from syllabus.records import content_id
from teacher_svc.backend import Backend, ChatPrompt, Sampling
from teacher_svc.dedupe import normalize
from teacher_svc.generation import provenance, template_hash
from teacher_svc.retry import ParseError, generate_parsed

RATIONALE_METHOD = "rationales"
RFT_METHOD = "rejection_sampling"

# Reasoning styles (ARTE's draft rationales): each is one line added to the rationale prompt.
STYLES = {
    "step_by_step": "Think step by step, one short step per line.",
    "eli5": "Explain it simply, as you would to a ten-year-old.",
    "symbolic": "Write the reasoning as short equations or symbolic steps.",
    "concise": "Give the key reason in one or two sentences.",
}

RATIONALE_TEMPLATE = """{instructions}

Question: {question}

{style} Then finish with a line "Answer: <answer>"."""
RATIONALE_STOP = ("\n\n\n",)
RATIONALE_TEMPLATE_HASH = template_hash(RATIONALE_TEMPLATE, STYLES, RATIONALE_STOP)

_NUM = r"\d+(?:\.\d+)?"
_EQUATION = re.compile(rf"{_NUM}(?:\s*[-+*/x×÷]\s*{_NUM})+\s*=\s*{_NUM}")


@dataclass(frozen=True)
class Question:
    """A question; `answer` is the gold answer when the task has checkable answers."""

    id: str
    text: str
    answer: str | None = None


@dataclass(frozen=True)
class Rationale:
    """A parsed rationale: the reasoning text and the final answer it ends with."""

    text: str
    answer: str


def parse_rationale(raw: str) -> Rationale:
    """The rationale and its final answer (the last "Answer: ..." line); ParseError if there is none."""
    if (stated := stated_answer(raw)) is None:
        raise ParseError('no final "Answer: <answer>" line')
    return Rationale(*stated)


def verify(verifier: str, predicted: str, gold: str) -> bool:
    """Whether `predicted` is the gold answer by `verifier` (classification, exact, numeric):
    the one checker of `syllabus.answers`, the one evaluation grades with (a numeric answer is its
    final number: "Answer: 12 - 4 = 8" answers 8)."""
    return kinds.by_verifier(verifier).check(predicted, gold)


def reasoning_path(text: str) -> str:
    """What makes two correct rationales the same solution: their equations, else their normalised text."""
    equations = [re.sub(r"\s+", "", e).replace("×", "*").replace("x", "*") for e in _EQUATION.findall(text)]
    return "|".join(equations) if equations else normalize(text)


def rationale_prompts(instructions: str, questions: Sequence[Question], styles: Sequence[str]) -> list[ChatPrompt]:
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ValueError(f"unknown reasoning style(s) {unknown}; known: {sorted(STYLES)}")
    return [
        ChatPrompt(RATIONALE_TEMPLATE.format(instructions=instructions.strip(), question=q.text, style=STYLES[s]))
        for q in questions
        for s in styles
    ]


@dataclass(frozen=True)
class RationaleResult:
    """Rationale records (parsed or failed) and the tokens spent."""

    records: list[dict]
    failed: int
    tokens_generated: int


def write_rationales(
    backend: Backend,
    instructions: str,
    questions: Sequence[Question],
    styles: Sequence[str],
    sampling: Sampling,
    per_style: int = 1,
    batch_size: int = 16,
    round_: int = 0,
    retries: int = 1,
) -> RationaleResult:
    """`per_style` rationales per question and style (each a separate draw: seed + draw index).

    Records: {"id", "question_id", "question", "style", "rationale", "answer", "status", "provenance"}
    with status "ok", or "failed" plus "error" and "raw" when the reply never parsed.
    """
    prompts = rationale_prompts(instructions, questions, styles)
    prov = provenance(backend, sampling, round_, RATIONALE_METHOD, RATIONALE_TEMPLATE_HASH)
    records, failed, tokens = [], 0, 0
    for draw in range(per_style):
        outs = generate_parsed(
            backend, prompts, parse_rationale, replace(sampling, seed=sampling.seed + draw), batch_size,
            stop=RATIONALE_STOP, retries=retries,
        )
        for j, out in enumerate(outs):
            q, style = questions[j // len(styles)], styles[j % len(styles)]
            tokens += out.tokens
            rec = {"question_id": q.id, "question": q.text, "style": style, "draw": draw, "provenance": prov}
            if out.ok:
                rec |= {"rationale": out.value.text, "answer": out.value.answer, "status": "ok"}
                rec["id"] = content_id(q.text, out.value.text)
            else:
                failed += 1
                rec |= {"status": "failed", "error": out.error, "raw": out.raw, "attempts": out.attempts}
                rec["id"] = content_id(q.text, f"failed:{style}:{draw}")
            records.append(rec)
    return RationaleResult(records, failed, tokens)


@dataclass(frozen=True)
class RejectionResult:
    """Kept rationales and where the other samples went; the counts add up to questions x k."""

    records: list[dict]
    sampled: int
    incorrect: int
    unparsable: int
    duplicate_paths: int
    tokens_generated: int


def rejection_sample(
    backend: Backend,
    instructions: str,
    questions: Sequence[Question],
    kind: str,
    k: int,
    sampling: Sampling,
    style: str = "step_by_step",
    batch_size: int = 16,
    round_: int = 0,
) -> RejectionResult:
    """RFT: `k` sampled rationales per question, kept when correct and on a new reasoning path.

    Kept records are training examples: {"id", "question_id", "input", "prompt", "response"
    (rationale ending in the answer), "answer", "reasoning_path", "parent_id", "provenance"}.
    """
    if any(q.answer is None for q in questions):
        raise ValueError("rejection sampling needs a gold answer for every question")
    if sampling.temperature == 0 and k > 1:
        raise ValueError("k > 1 samples need temperature > 0 (greedy gives one answer)")
    prompts = rationale_prompts(instructions, questions, [style])
    outs = backend.generate(prompts, replace(sampling, n=k), batch_size, stop=RATIONALE_STOP)
    prov = provenance(backend, replace(sampling, n=k), round_, RFT_METHOD, RATIONALE_TEMPLATE_HASH)
    records, incorrect, unparsable, dupes, tokens = [], 0, 0, 0, 0
    for q, prompt, samples in zip(questions, prompts, outs, strict=True):
        paths: set[str] = set()
        for c in samples:
            tokens += c.tokens
            try:
                r = parse_rationale(c.text)
            except ParseError:
                unparsable += 1
                continue
            if not verify(kind, r.answer, q.answer):
                incorrect += 1
                continue
            path = reasoning_path(r.text)
            if path in paths:
                dupes += 1
                continue
            paths.add(path)
            records.append(
                {
                    "id": content_id(q.text, r.text),
                    "question_id": q.id,
                    "input": q.text,
                    "prompt": prompt.user,
                    "response": r.text,
                    "answer": r.answer,
                    "reasoning_path": path,
                    "parent_id": q.id,
                    "provenance": prov,
                }
            )
    return RejectionResult(records, len(questions) * k, incorrect, unparsable, dupes, tokens)
