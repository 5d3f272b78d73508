"""Structured output: one JSON schema per teacher step whose reply is parsed.

A step sends its schema with each prompt (`ChatPrompt.schema`, the schema as JSON text) and every
backend enforces it while decoding, so a reply is valid JSON of that shape by construction:
- transformers: a grammar-constrained logits processor (xgrammar, the engine vLLM uses; its CPU
  bitmask kernel), `TransformersBackend`;
- vLLM: its structured outputs (guided JSON), `VLLMBackend`;
- OpenAI-compatible endpoints: `response_format: {"type": "json_schema", ...}`; an endpoint that
  refuses it is sent the prompt alone, and the reply is parsed as here with bounded retries
  (`teacher_svc.retry`).

`parse_reply` reads a reply against its schema (the subset of JSON Schema these schemas use: objects
with required properties, strings with length bounds, enums, arrays of strings), raising ParseError
with what is wrong: a reply can still be cut off by `max_new_tokens` mid-string, which a constrained
decoder cannot prevent, and an endpoint without `response_format` can write anything.

String bounds are in characters and keep every reply within its step's token budget (a token is
about 4 characters in English; the budgets are the `max_new_tokens` the steps ask for).
"""

from __future__ import annotations

import json
from typing import Any

from teacher_svc.retry import ParseError

CRITIQUE_MAX_CHARS = 400
ANSWER_MAX_CHARS = 600


def _string(min_length: int = 1, max_length: int = ANSWER_MAX_CHARS) -> dict:
    return {"type": "string", "minLength": min_length, "maxLength": max_length}


def _object(**properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


# CFT (and the judge that reads its conclusion): the critique first, then the verdict it leads to,
# as Critique Fine-Tuning's critiques end in their conclusion.
CFT = _object(critique=_string(8, CRITIQUE_MAX_CHARS), verdict={"enum": ["right", "wrong"]})
# CITING's rubric: 1 to 5 criteria, each a short sentence.
RUBRIC = _object(criteria={"type": "array", "items": _string(3, 160), "minItems": 1, "maxItems": 5})
RUBRIC_REVISION = _object(revised_answer=_string(1, ANSWER_MAX_CHARS))
# Reflection-Tuning: why the pair is weak (on the paper's criteria), then the new pair.
REFLECTION = _object(weaknesses=_string(8, CRITIQUE_MAX_CHARS), new_instruction=_string(8, 400),
                     better_answer=_string(1, ANSWER_MAX_CHARS))  # fmt: skip

# Error analysis (answer kinds): the skill a wrong answer misses, in a few words.
SKILL = _object(skill=_string(3, 80))

SCHEMAS: dict[str, dict] = {"cft": CFT, "rubric": RUBRIC, "rubric_revision": RUBRIC_REVISION, "reflection": REFLECTION,
                            "skill": SKILL}  # fmt: skip


def fit(schema: dict, max_new_tokens: int) -> dict:
    """`schema` with its strings' maxLength cut so a whole reply fits in `max_new_tokens`: the fixed
    JSON around the strings at about 2 characters a token, the strings at 2 characters a token (a
    small model's text runs 2-4), shared by every string the reply can hold. A reply cut off
    mid-string cannot parse, so a budget the schema overruns would drop replies a constrained decoder
    otherwise never gets wrong."""
    fitted = json.loads(json.dumps(schema))
    fields: list[tuple[dict, int]] = []  # the copy's string nodes, with how often a reply holds each
    skeleton = _skeleton(fitted, fields)
    chars = max(8, (max_new_tokens - len(json.dumps(skeleton, separators=(",", ":"))) // 2) * 2)
    # Water-filling: every string an equal share, except that one whose own cap is below its share
    # keeps its cap and leaves the rest to the others (a short answer field beside a long rationale).
    remaining = chars
    while fields:
        share = remaining // (sum(times for _, times in fields) or 1)
        small = [(node, times) for node, times in fields if node.get("maxLength", chars) <= share]
        if not small:
            for node, _ in fields:
                node["maxLength"] = max(node.get("minLength", 1), share)
            break
        for node, times in small:
            remaining -= node["maxLength"] * times
        fields = [f for f in fields if all(f[0] is not s[0] for s in small)]
    return fitted


def _skeleton(schema: dict, strings: list, times: int = 1) -> Any:
    """The reply with every string empty and every array full: its fixed JSON. Appends each string
    node of `schema` to `strings` with the number of times a reply holds it."""
    if "enum" in schema:
        return max(schema["enum"], key=lambda v: len(json.dumps(v)))
    if schema.get("type") == "object":
        return {k: _skeleton(sub, strings, times) for k, sub in schema["properties"].items()}
    if schema.get("type") == "array":
        k = schema.get("maxItems", 1)
        return [_skeleton(schema["items"], strings, times * k)] * k
    strings.append((schema, times))
    return ""


def schema_text(schema: dict) -> str:
    """The JSON text of a schema: what a ChatPrompt carries (hashable, one grammar per text). Keys keep
    their order: a constrained decoder writes properties in schema order (a critique before its verdict)."""
    return json.dumps(schema, separators=(",", ":"))


def parse_reply(raw: str, schema: dict) -> dict:
    """The reply as a dict of `schema`'s shape; ParseError says what is wrong."""
    text = raw.strip()
    if text.startswith("```"):  # an unconstrained endpoint's fenced block
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(f"not JSON ({e.msg} at char {e.pos})") from None
    _check(value, schema, "reply")
    return value


def _check(value: Any, schema: dict, where: str) -> None:
    if "enum" in schema:
        if value not in schema["enum"]:
            raise ParseError(f"{where}: {value!r} is not one of {schema['enum']}")
        return
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise ParseError(f"{where}: not an object")
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            raise ParseError(f"{where}: missing {missing}")
        for key, sub in schema["properties"].items():
            if key in value:
                _check(value[key], sub, f"{where}.{key}")
    elif kind == "array":
        if not isinstance(value, list):
            raise ParseError(f"{where}: not an array")
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            raise ParseError(f"{where}: {len(value)} items")
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]")
    elif kind == "string":
        if not isinstance(value, str):
            raise ParseError(f"{where}: not a string")
        # Exactly the schema's bounds, which the decoder enforces: what the text says is the step's to judge.
        if len(value) < schema.get("minLength", 0):
            raise ParseError(f"{where}: shorter than {schema['minLength']} characters")
        if len(value) > schema.get("maxLength", len(value)):
            raise ParseError(f"{where}: longer than {schema['maxLength']} characters")
