"""Model-based critique modes. (The rule-based judge mode is `teacher_svc.critique`.)

- `cft_critique` — Critique Fine-Tuning (TIGER-AI-Lab): input "Question: {q}\\n\\nSolution: {a}", the
  teacher writes a critique and its verdict, right or wrong, as JSON (`teacher_svc.structured.CFT`,
  enforced while decoding). The record's prompt/response are that input and the critique ending in
  "Conclusion: right|wrong", as CFT trains it, ready for plain SFT of the student on critiques.
- `rubric_revise` — CITING: one rubric per question type (written once, shared by the type's
  questions), then the student's answer is revised against it. The record's prompt is (instruction,
  rubric, the student's own answer) and its response the revision, as CITING trains the student.
- `reflect` — Reflection-Tuning: the teacher says why an instruction/answer pair is weak on named
  criteria and writes a new instruction and a better answer.

Every reply is JSON of the step's schema (`teacher_svc.structured`), enforced while decoding on every
backend that can (an endpoint without `response_format` is parsed the same way), its strings bounded
to fit the reply's token budget (`structured.fit`). Parsing tolerates malformed output per record (`teacher_svc.retry`): a reply that does not parse is
regenerated once, and if it still does not parse the record is marked `"status": "failed"` with the
error and the raw text; the batch never fails because of one reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from syllabus.records import content_id
from teacher_svc import structured
from teacher_svc.backend import Backend, ChatPrompt, Sampling
from teacher_svc.generation import provenance, template_hash
from teacher_svc.retry import Parsed, generate_parsed

CFT_METHOD, RUBRIC_METHOD, REVISION_METHOD, REFLECTION_METHOD = "cft_critique", "rubric", "rubric_revision", "reflection"

CFT_INPUT = "Question: {question}\n\nSolution: {solution}"
CFT_TEMPLATE = CFT_INPUT + """

Critique the solution: check each step and point out any error. Then say whether the solution is right or wrong.
Reply in JSON with "critique", your critique, and "verdict", "right" or "wrong"."""
CFT_TEMPLATE_HASH = template_hash(CFT_TEMPLATE, structured.schema_text(structured.CFT))

RUBRIC_TEMPLATE = """Write a grading rubric for answers to questions of the type "{qtype}".
Example question of this type: {example}

Give 3 to 5 criteria, each one short sentence such as "The answer names ...".
Reply in JSON with "criteria", the list of criteria."""
RUBRIC_TEMPLATE_HASH = template_hash(RUBRIC_TEMPLATE, structured.schema_text(structured.RUBRIC))

REVISION_INPUT = "Instruction: {question}\n\nRubric:\n{rubric}\n\nAnswer: {answer}"
REVISION_TEMPLATE = REVISION_INPUT + """

Revise the answer so that it meets every criterion of the rubric.
Reply in JSON with "revised_answer", the revised answer."""
REVISION_TEMPLATE_HASH = template_hash(REVISION_TEMPLATE, structured.schema_text(structured.RUBRIC_REVISION))

REFLECTION_TEMPLATE = """Instruction: {instruction}
Answer: {answer}

Explain briefly why the instruction could be weak (complexity, detail, knowledge needed, ambiguity, reasoning) and why the answer could be weak (helpfulness, relevance, accuracy, detail). Then write an improved instruction and a better answer.
Reply in JSON with "weaknesses", why they are weak, "new_instruction" and "better_answer"."""
REFLECTION_TEMPLATE_HASH = template_hash(REFLECTION_TEMPLATE, structured.schema_text(structured.REFLECTION))

def parse_cft(raw: str, schema: dict = structured.CFT) -> tuple[str, str]:
    """(critique, "right"|"wrong") of a JSON reply (`structured.CFT`, or its fitted copy)."""
    reply = structured.parse_reply(raw, schema)
    return reply["critique"].strip(), reply["verdict"]


def cft_response(critique: str, verdict: str) -> str:
    """What CFT trains the student to write: the critique, then its conclusion."""
    return f"{critique}\nConclusion: {verdict}"


def parse_rubric(raw: str, schema: dict = structured.RUBRIC) -> list[str]:
    """The rubric's criteria (`structured.RUBRIC`: 1 to 5)."""
    return [c.strip() for c in structured.parse_reply(raw, schema)["criteria"]]


def parse_revision(raw: str, schema: dict = structured.RUBRIC_REVISION) -> str:
    return structured.parse_reply(raw, schema)["revised_answer"].strip()


def parse_reflection(raw: str, schema: dict = structured.REFLECTION) -> tuple[str, str]:
    """(new instruction, better answer) of a JSON reply (`structured.REFLECTION`)."""
    reply = structured.parse_reply(raw, schema)
    return reply["new_instruction"].strip(), reply["better_answer"].strip()


def _fitted(schema: dict, sampling: Sampling) -> tuple[str, dict]:
    """(the schema text prompts carry, the schema replies are read with), fitted to the reply budget."""
    fitted = structured.fit(schema, sampling.max_new_tokens)
    return structured.schema_text(fitted), fitted


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
    text, schema = _fitted(structured.CFT, sampling)
    prompts = [ChatPrompt(CFT_TEMPLATE.format(question=e["question"], solution=e["solution"]), schema=text) for e in examples]
    outs = generate_parsed(backend, prompts, partial(parse_cft, schema=schema), sampling, batch_size, retries=retries)
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
                "response": cft_response(critique, verdict),
            }
        records.append(rec)
    return records


def rubric_revise(
    backend: Backend, examples: Sequence[dict], sampling: Sampling, batch_size: int = 16, retries: int = 1
) -> tuple[list[dict], list[dict]]:
    """(rubrics, revisions). Examples: {"id", "question", "answer", "type"} (type defaults to "general"),
    "answer" the student's own answer (CITING revises what the student wrote), which may be empty:
    a student that writes nothing still gets a revision to learn from.

    One rubric per type; an example whose type has no rubric (its rubric never parsed) is failed.
    """
    _check(examples, "question")
    for i, e in enumerate(examples):
        if not isinstance(e.get("answer"), str):
            # ValueError, as `_check`'s: the service answers it with INVALID_ARGUMENT
            raise ValueError(f'examples[{i}] needs a string "answer" (the student\'s answer)')  # noqa: TRY004
    types: dict[str, dict] = {}
    for e in examples:
        types.setdefault(e.get("type") or "general", e)
    type_names = list(types)
    text, schema = _fitted(structured.RUBRIC, sampling)
    rubric_prompts = [ChatPrompt(RUBRIC_TEMPLATE.format(qtype=t, example=types[t]["question"]), schema=text) for t in type_names]
    rubric_outs = generate_parsed(backend, rubric_prompts, partial(parse_rubric, schema=schema), sampling, batch_size,
                                  retries=retries)
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
    text, schema = _fitted(structured.RUBRIC_REVISION, sampling)
    parse = partial(parse_revision, schema=schema)
    prompts = [ChatPrompt(REVISION_TEMPLATE.format(question=e["question"], rubric=rubrics[e.get("type") or "general"],
                                                   answer=e["answer"]), schema=text) for e in revisable]
    outs = dict(zip((e["id"] for e in revisable),
                    zip(inputs, generate_parsed(backend, prompts, parse, sampling, batch_size, retries=retries),
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
    text, schema = _fitted(structured.REFLECTION, sampling)
    prompts = [ChatPrompt(REFLECTION_TEMPLATE.format(instruction=e["instruction"], answer=e["answer"]), schema=text)
               for e in examples]
    outs = generate_parsed(backend, prompts, partial(parse_reflection, schema=schema), sampling, batch_size, retries=retries)
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
