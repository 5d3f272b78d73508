"""Model-based critique modes. (The rule-based judge mode is `teacher_svc.critique`.)

- `cft_critique` — Critique Fine-Tuning (TIGER-AI-Lab): input "Question: {q}\\n\\nSolution: {a}", the
  teacher writes a critique ending "Conclusion: right" or "Conclusion: wrong". The record's
  prompt/response are that input and the critique, ready for plain SFT of the student on critiques.
- `rubric_revise` — CITING: one rubric per question type (written once, shared by the type's
  questions), then the student's answer is revised against it. The record's prompt is (instruction,
  rubric, the student's own answer) and its response the revision, as CITING trains the student.
- `reflect` — Reflection-Tuning: the teacher says why an instruction/answer pair is weak on named
  criteria and writes `[New Instruction]...[End]` and `[Better Answer]...[End]`.

Parsing tolerates malformed output per record (`teacher_svc.retry`): a reply that does not parse is
regenerated once, and if it still does not parse the record is marked `"status": "failed"` with the
error and the raw text; the batch never fails because of one reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from syllabus.records import content_id
from teacher_svc.backend import Backend, ChatPrompt, Sampling
from teacher_svc.generation import provenance, template_hash
from teacher_svc.retry import Parsed, ParseError, generate_parsed

CFT_METHOD, RUBRIC_METHOD, REVISION_METHOD, REFLECTION_METHOD = "cft_critique", "rubric", "rubric_revision", "reflection"

CFT_INPUT = "Question: {question}\n\nSolution: {solution}"
CFT_TEMPLATE = CFT_INPUT + """

Critique the solution: check each step, point out any error, then end with exactly one line "Conclusion: right" or "Conclusion: wrong"."""
CFT_TEMPLATE_HASH = template_hash(CFT_TEMPLATE)

RUBRIC_TEMPLATE = """Write a grading rubric for answers to questions of the type "{qtype}".
Example question of this type: {example}

List 3 to 5 numbered criteria, one per line, e.g. "1. The answer names ..."."""
RUBRIC_TEMPLATE_HASH = template_hash(RUBRIC_TEMPLATE)

REVISION_INPUT = "Instruction: {question}\n\nRubric:\n{rubric}\n\nAnswer: {answer}"
REVISION_TEMPLATE = REVISION_INPUT + """

Revise the answer so that it meets every criterion of the rubric. Write "Revised answer:" followed by the revised answer."""
REVISION_PREFILL = "Revised answer:"
REVISION_TEMPLATE_HASH = template_hash(REVISION_TEMPLATE, REVISION_PREFILL)

REFLECTION_TEMPLATE = """Instruction: {instruction}
Answer: {answer}

Explain briefly why the instruction could be weak (complexity, detail, knowledge needed, ambiguity, reasoning) and why the answer could be weak (helpfulness, relevance, accuracy, detail). Then write an improved instruction and a better answer in exactly this format:
[New Instruction] <instruction> [End]
[Better Answer] <answer> [End]"""
REFLECTION_TEMPLATE_HASH = template_hash(REFLECTION_TEMPLATE)

# The verdict is a line of its own ("**Conclusion: right**" too): a reply that only echoes the
# instruction ('... end with exactly one line "Conclusion: right" or "Conclusion: wrong"') has none.
_CONCLUSION = re.compile(
    r"^[\s>*_#-]*conclusion\s*[:\-]\s*\**\s*(right|wrong|correct|incorrect)\b", re.IGNORECASE | re.MULTILINE
)
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+)$")
_TAGGED = {
    name: re.compile(rf"\[{tag}\]\s*(.+?)\s*\[End\]", re.IGNORECASE | re.DOTALL)
    for name, tag in (("instruction", r"New\s+Instruction"), ("answer", r"Better\s+Answer"))
}


def parse_cft(raw: str) -> tuple[str, str]:
    """(critique text up to and including the conclusion, "right"|"wrong"); the last conclusion wins."""
    matches = list(_CONCLUSION.finditer(raw))
    if not matches:
        raise ParseError('no "Conclusion: right/wrong" line')
    last = matches[-1]
    critique = raw[: last.end()].strip()
    if len(critique) <= len(last.group(0)):
        raise ParseError("a conclusion without any critique")
    verdict = "right" if last.group(1).lower() in ("right", "correct") else "wrong"
    return critique, verdict


def parse_rubric(raw: str) -> list[str]:
    """The numbered (or bulleted) criteria; at least one is needed."""
    criteria = [m.group(1).strip() for line in raw.splitlines() if (m := _NUMBERED.match(line))]
    criteria = [c for c in criteria if len(c) >= 3]
    if not criteria:
        raise ParseError("no numbered criteria")
    return criteria[:8]


def parse_revision(raw: str) -> str:
    text = raw.strip()
    if text.lower().startswith(REVISION_PREFILL.lower()):  # a server that ignored the prefill repeats it
        text = text[len(REVISION_PREFILL) :].strip()
    if not text or not any(c.isalnum() for c in text):
        raise ParseError("empty revision")
    return text


def parse_reflection(raw: str) -> tuple[str, str]:
    """(new instruction, better answer) from the `[New Instruction]`/`[Better Answer]` ... `[End]` blocks."""
    found = {}
    for name, pattern in _TAGGED.items():
        m = pattern.search(raw)
        if not m or not m.group(1).strip():
            raise ParseError(f"no [{'New Instruction' if name == 'instruction' else 'Better Answer'}]...[End] block")
        found[name] = m.group(1).strip()
    return found["instruction"], found["answer"]


def _base(rec: dict, out: Parsed, prov: dict) -> dict:
    base = {"id": rec["id"], "provenance": prov, "attempts": out.attempts}
    if out.ok:
        return base | {"status": "ok"}
    return base | {"status": "failed", "error": out.error, "raw": out.raw}


def _check(examples: Sequence[dict], *fields: str) -> None:
    for i, rec in enumerate(examples):
        for f in ("id", *fields):
            if not isinstance(rec.get(f), str) or not rec[f].strip():
                raise ValueError(f'examples[{i}] needs a non-empty string "{f}"')


def cft_critique(
    backend: Backend, examples: Sequence[dict], sampling: Sampling, batch_size: int = 16, retries: int = 1
) -> list[dict]:
    """One record per example ({"id", "question", "solution"}): critique, verdict, prompt, response."""
    _check(examples, "question", "solution")
    prompts = [ChatPrompt(CFT_TEMPLATE.format(question=e["question"], solution=e["solution"])) for e in examples]
    outs = generate_parsed(backend, prompts, parse_cft, sampling, batch_size, retries=retries)
    prov = provenance(backend, sampling, 0, CFT_METHOD, CFT_TEMPLATE_HASH)
    records = []
    for e, out in zip(examples, outs, strict=True):
        rec = _base(e, out, prov)
        if out.ok:
            critique, verdict = out.value
            rec |= {
                "critique": critique,
                "verdict": verdict,
                "prompt": CFT_INPUT.format(question=e["question"], solution=e["solution"]),
                "response": critique,
            }
        records.append(rec)
    return records


def rubric_revise(
    backend: Backend, examples: Sequence[dict], sampling: Sampling, batch_size: int = 16, retries: int = 1
) -> tuple[list[dict], list[dict]]:
    """(rubrics, revisions). Examples: {"id", "question", "answer", "type"} (type defaults to "general").

    One rubric per type; an example whose type has no rubric (its rubric never parsed) is failed.
    """
    _check(examples, "question", "answer")
    types: dict[str, dict] = {}
    for e in examples:
        types.setdefault(e.get("type") or "general", e)
    type_names = list(types)
    rubric_prompts = [ChatPrompt(RUBRIC_TEMPLATE.format(qtype=t, example=types[t]["question"])) for t in type_names]
    rubric_outs = generate_parsed(backend, rubric_prompts, parse_rubric, sampling, batch_size, retries=retries)
    rubric_prov = provenance(backend, sampling, 0, RUBRIC_METHOD, RUBRIC_TEMPLATE_HASH)
    rubrics: dict[str, str] = {}
    rubric_records = []
    for t, out in zip(type_names, rubric_outs, strict=True):
        rec = _base({"id": content_id(t, "rubric")}, out, rubric_prov) | {"type": t}
        if out.ok:
            rubrics[t] = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(out.value))
            rec["rubric"] = rubrics[t]
        rubric_records.append(rec)

    revisable = [e for e in examples if (e.get("type") or "general") in rubrics]
    inputs = [
        REVISION_INPUT.format(question=e["question"], rubric=rubrics[e.get("type") or "general"], answer=e["answer"])
        for e in revisable
    ]
    prompts = [ChatPrompt(REVISION_TEMPLATE.format(question=e["question"], rubric=rubrics[e.get("type") or "general"],
                                                   answer=e["answer"]), REVISION_PREFILL + " ") for e in revisable]
    outs = dict(zip((e["id"] for e in revisable),
                    zip(inputs, generate_parsed(backend, prompts, parse_revision, sampling, batch_size, retries=retries),
                        strict=True), strict=True))
    prov = provenance(backend, sampling, 0, REVISION_METHOD, REVISION_TEMPLATE_HASH)
    revisions = []
    for e in examples:
        qtype = e.get("type") or "general"
        if e["id"] not in outs:
            revisions.append({"id": e["id"], "type": qtype, "status": "failed", "error": f"no rubric for type {qtype!r}",
                              "raw": "", "attempts": 0, "provenance": prov})
            continue
        prompt_text, out = outs[e["id"]]
        rec = _base(e, out, prov) | {"type": qtype, "rubric": rubrics[qtype], "answer": e["answer"]}
        if out.ok:
            rec |= {"revision": out.value, "prompt": prompt_text, "response": out.value}
        revisions.append(rec)
    return rubric_records, revisions


def reflect(
    backend: Backend, examples: Sequence[dict], sampling: Sampling, batch_size: int = 16, retries: int = 1
) -> list[dict]:
    """One record per example ({"id", "instruction", "answer"}): new instruction and better answer."""
    _check(examples, "instruction", "answer")
    prompts = [ChatPrompt(REFLECTION_TEMPLATE.format(instruction=e["instruction"], answer=e["answer"])) for e in examples]
    outs = generate_parsed(backend, prompts, parse_reflection, sampling, batch_size, retries=retries)
    prov = provenance(backend, sampling, 0, REFLECTION_METHOD, REFLECTION_TEMPLATE_HASH)
    records = []
    for e, out in zip(examples, outs, strict=True):
        rec = _base(e, out, prov) | {"instruction": e["instruction"], "answer": e["answer"]}
        if out.ok:
            new_instruction, better_answer = out.value
            rec |= {
                "reflection": out.raw,
                "new_instruction": new_instruction,
                "better_answer": better_answer,
                "prompt": new_instruction,
                "response": better_answer,
            }
        records.append(rec)
    return records
