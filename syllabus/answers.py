"""Reading and checking a final answer: the one answer checker per task kind, shared by the teacher's
RFT verifier, the loop (rationales, revisions, consensus), the student (evaluation, ARTE's probes)
and the task spec (numeric answers), so that what RFT keeps is what evaluation grades right.

Which match a task kind checks with is the kind's (`syllabus.kinds.TaskKind.match`): classification
-> "label", exact_answer -> "exact", numeric -> "numeric"; open_ended answers are graded by the judge."""

from __future__ import annotations

import re
import unicodedata

_ANSWER_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*(?:is)?\s*[:=]\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_STATED = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)
# A sign only where it cannot be a subtraction ("12-4" reads 12 and 4); thousands separators only in
# groups of three ("1,000" is 1000, "5,6" is 5 and 6); an optional decimal part or fraction.
_NUMBER = re.compile(r"(?:(?<![\w.])[-+−])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")

EXACT, NUMERIC, LABEL = "exact", "numeric", "label"
MATCHES = (EXACT, NUMERIC, LABEL)
NUMERIC_TOLERANCE = 1e-6
"""Two numbers are one answer when they differ by at most this, relative to max(1, |gold|)."""


def normalize(text: str) -> str:
    """Lowercase, punctuation and symbols (including "_") to spaces, whitespace collapsed: how labels
    and exact answers compare."""
    chars = (" " if unicodedata.category(c)[0] in "PS" else c for c in text.lower())
    return " ".join("".join(chars).split())


def extract_number(text: str) -> float | None:
    """The final answer's number: after "####" if present (GSM8K), else the last number in the
    text (commas as thousands separators, optional sign/decimals/fraction)."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    nums = _NUMBER.findall(text)
    if not nums:
        return None
    raw = nums[-1].replace(",", "").replace("−", "-")
    try:
        if "/" in raw:
            a, b = raw.split("/")
            return float(a) / float(b) if float(b) else None
        return float(raw)
    except ValueError:
        return None


def final_answer(generation: str) -> str:
    """What a generation answers: the text after its last "Answer:" line when it reasons first, else
    the whole generation. Matching a whole rationale against a label or number would almost never hit."""
    matches = _ANSWER_LINE.findall(generation)
    return matches[-1].strip() if matches else generation


def stated_answer(text: str) -> tuple[str, str] | None:
    """(the text up to its answer line, the answer) of a rationale: its last line that says
    "answer [is] [:=] X" ("Answer: 5", "The answer is 5."), lines stripped; None when no line does.
    How the teacher reads its rationales, and the loop a rubric revision of one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if m := _STATED.search(lines[i]):
            answer = m.group(1).strip().strip(".*`\"'").strip()
            if answer:
                return "\n".join(lines[: i + 1]), answer
    return None


def answer_number(text: str) -> float | None:
    """The number a reply answers: the last number of its final answer (after its last "Answer:" line
    when it has one, else of the whole text), so a number met in the reasoning never counts."""
    return extract_number(final_answer(text))


def answers_match(prediction: str, gold: str, match: str = EXACT, tol: float = NUMERIC_TOLERANCE) -> bool:
    """The answer checker. exact: the normalised final answers are equal; numeric: their numbers
    (`answer_number`) differ by at most `tol` x max(1, |gold|); label: the normalised final answer is
    the label or starts with it ("card arrival, since ...")."""
    if match == NUMERIC:
        p, g = answer_number(prediction), answer_number(gold)
        return p is not None and g is not None and abs(p - g) <= tol * max(1.0, abs(g))
    if match == EXACT:
        return normalize(final_answer(prediction)) == normalize(final_answer(gold))
    if match == LABEL:
        p, g = normalize(final_answer(prediction)), normalize(gold)
        return bool(g) and (p == g or p.startswith(g + " "))
    raise ValueError(f"match must be one of {MATCHES}, got {match!r}")


def answer_key(match: str, answer: str) -> object:
    """What two answers must share to be the same answer (majority votes): the number, rounded as the
    tolerance allows, or the normalised text; None for an answer with no number (numeric)."""
    if match == NUMERIC:
        x = answer_number(answer)
        return None if x is None else round(x, 6)
    return normalize(final_answer(answer))
