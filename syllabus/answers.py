"""Reading a final answer, the rules the task spec (numeric answers), the loop (checking rationales
and revisions) and the student (numeric match, ARTE's probes) share."""

from __future__ import annotations

import re
import unicodedata

_ANSWER_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*(?:is)?\s*[:=]\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_STATED = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


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
    raw = nums[-1].replace(",", "")
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
