"""AnalyzeErrors: what the student gets wrong on the eval/validation split, as named skills.

For classification the skills come straight from the predictions: every (gold label, predicted label)
pair the student confused is a skill "distinguish <gold> from <predicted>", ranked by how often it
happened, with the inputs it missed as examples. These feed `teacher_svc.targeted.generate_targeted`
in the next round.

For tasks with free-form answers (`analyze_answers`) the teacher reads each wrong answer next to the
gold one and names the missing skill in a few words (JSON `{"skill": ...}`, `structured.SKILL`,
enforced while decoding; a reply from an endpoint without structured output may instead say
"Skill: ..."); replies are parsed per record with a retry (`teacher_svc.retry`) and records whose
reply never parses are counted as failed, not fatal.
Skills with the same normalised name are merged.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from teacher_svc import structured
from teacher_svc.backend import Backend, ChatPrompt, Sampling
from teacher_svc.dedupe import normalize
from teacher_svc.retry import ParseError, generate_parsed

DEFAULT_EXAMPLES_PER_SKILL = 5

SKILL_TEMPLATE = """A student answered a question wrongly.

Question: {question}
Correct answer: {gold}
Student's answer: {predicted}

Which skill or piece of knowledge is the student missing? Name it in a few words.
Reply in JSON with "skill", the missing skill."""
_SKILL = re.compile(r"^\s*(?:skill\s*:)?\s*(.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class ErrorAnalysis:
    """Skill records, ranked by count, and totals."""

    skills: list[dict]
    evaluated: int
    wrong: int
    failed: int = 0


def analyze_confusions(
    predictions: Sequence[dict],
    eval_items: Sequence[dict],
    labels: Sequence[str] = (),
    examples_per_skill: int = DEFAULT_EXAMPLES_PER_SKILL,
    max_skills: int = 0,
) -> ErrorAnalysis:
    """Confused label pairs from predictions ({"id", "label", "prediction", "correct"}) joined with
    the eval items ({"id", "input"}) by id. `max_skills` 0 keeps all pairs.

    Skill records: {"skill", "label", "confused_with", "count", "examples", "example_ids"}.
    """
    inputs = {item["id"]: item.get("input", "") for item in eval_items if "id" in item}
    known = set(labels)
    pairs: Counter = Counter()
    examples: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    wrong = 0
    for i, p in enumerate(predictions):
        for f in ("id", "label", "prediction"):
            if not isinstance(p.get(f), str):
                raise ValueError(f'predictions[{i}] needs a string "{f}"')  # noqa: TRY004 (bad input data)
        if p["label"] == p["prediction"]:
            continue
        if known and p["label"] not in known:
            raise ValueError(f"predictions[{i}].label {p['label']!r} is not in labels")
        if p["id"] not in inputs:
            raise ValueError(f"predictions[{i}].id {p['id']!r} is not in the eval items")
        wrong += 1
        key = (p["label"], p["prediction"])
        pairs[key] += 1
        if len(examples[key]) < examples_per_skill:
            examples[key].append((p["id"], inputs[p["id"]]))
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    if max_skills:
        ranked = ranked[:max_skills]
    skills = [
        {
            "skill": f"distinguish {gold} from {pred}",
            "label": gold,
            "confused_with": pred,
            "count": count,
            "examples": [text for _, text in examples[(gold, pred)]],
            "example_ids": [rid for rid, _ in examples[(gold, pred)]],
        }
        for (gold, pred), count in ranked
    ]
    return ErrorAnalysis(skills, len(predictions), wrong)


def parse_skill(raw: str, schema: dict = structured.SKILL) -> str:
    """The skill a reply names: its JSON `skill`, or (an endpoint that ignored the schema) the text of
    its first "Skill: ..." line; ParseError when it names no short phrase."""
    if raw.lstrip().startswith("{"):
        raw = structured.parse_reply(raw, schema)["skill"]
    for line in raw.strip().splitlines():
        m = _SKILL.match(line)
        if m and (name := m.group(1).strip().strip(".\"'`*").strip()):
            if len(name) > 80 or not any(c.isalpha() for c in name):
                raise ParseError("skill name is not a short phrase")
            return name
    raise ParseError("no skill named")


def analyze_answers(
    backend: Backend,
    wrong_answers: Sequence[dict],
    sampling: Sampling,
    batch_size: int = 16,
    examples_per_skill: int = DEFAULT_EXAMPLES_PER_SKILL,
    retries: int = 1,
) -> ErrorAnalysis:
    """Teacher-named skills for wrong free-form answers ({"id", "question", "gold", "prediction"})."""
    fitted = structured.fit(structured.SKILL, sampling.max_new_tokens)
    schema = structured.schema_text(fitted)
    prompts = [
        ChatPrompt(SKILL_TEMPLATE.format(question=w["question"], gold=w["gold"], predicted=w["prediction"]), schema=schema)
        for w in wrong_answers
    ]
    outs = generate_parsed(backend, prompts, lambda raw: parse_skill(raw, fitted), sampling, batch_size, retries=retries)
    grouped: dict[str, list] = defaultdict(list)
    names: dict[str, str] = {}
    failed = 0
    for w, out in zip(wrong_answers, outs, strict=True):
        if not out.ok:
            failed += 1
            continue
        key = normalize(out.value)
        names.setdefault(key, out.value)
        grouped[key].append(w)
    skills = [
        {
            "skill": names[key],
            "count": len(ws),
            "examples": [w["question"] for w in ws[:examples_per_skill]],
            "example_ids": [w["id"] for w in ws[:examples_per_skill]],
        }
        for key, ws in sorted(grouped.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    return ErrorAnalysis(skills, len(wrong_answers), len(wrong_answers), failed)
