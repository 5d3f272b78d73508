"""Reading a final numeric answer, the one rule the task spec (numeric answers), the loop (checking
rationales) and the student's evaluation (numeric match) share."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


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
