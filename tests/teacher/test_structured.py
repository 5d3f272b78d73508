"""Structured output: a step's JSON schema is enforced while decoding (xgrammar on transformers), so
even the tiny random-init model, whose free text is gibberish, writes replies of the schema's shape;
`parse_reply` reads them and names what is wrong with one that is not."""

from __future__ import annotations

import json

import pytest

from teacher_svc import structured
from teacher_svc.backend import ChatPrompt, Sampling
from teacher_svc.retry import ParseError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("schema", ["cft", "rubric", "reflection"])
def test_the_tiny_model_writes_only_schema_valid_json_when_constrained(tiny_backend, schema: str) -> None:
    shape = structured.fit(structured.SCHEMAS[schema], 64)
    prompts = [ChatPrompt(f"Question {i}: write it.", schema=structured.schema_text(shape)) for i in range(3)]
    # More tokens than the longest reply the fitted schema allows has characters, so none is cut off.
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=320, n=2, seed=1)
    outs = tiny_backend.generate(prompts, sampling, batch_size=3)
    replies = [c.text for cs in outs for c in cs]
    assert len(replies) == 6
    for text in replies:
        value = structured.parse_reply(text, shape)
        assert list(value) == shape["required"]  # in schema order: the reasons before what they lead to
    # Unconstrained, the same model writes no JSON at all.
    free = tiny_backend.generate([ChatPrompt(p.user) for p in prompts], sampling, batch_size=3)
    with pytest.raises(ParseError):
        structured.parse_reply(free[0][0].text, shape)


def test_one_call_takes_one_schema_and_no_prefill_or_stop(tiny_backend) -> None:
    a, b = structured.schema_text(structured.CFT), structured.schema_text(structured.RUBRIC)
    sampling = Sampling(temperature=0.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="share one schema"):
        tiny_backend.generate([ChatPrompt("x", schema=a), ChatPrompt("y", schema=b)], sampling, 2)
    with pytest.raises(ValueError, match="no prefill and no stop"):
        tiny_backend.generate([ChatPrompt("x", "Answer:", schema=a)], sampling, 1)
    with pytest.raises(ValueError, match="no prefill and no stop"):
        tiny_backend.generate([ChatPrompt("x", schema=a)], sampling, 1, stop=("\n",))


@pytest.mark.parametrize(("reply", "error"), [
    ('{"critique": "fine", "verdict": "right"}', "shorter than 8 characters"),
    ('{"critique": "A good solution.", "verdict": "maybe"}', "is not one of"),
    ('{"critique": "A good solution."}', r"missing \['verdict'\]"),
    ('["right"]', "not an object"),
    ('{"critique": "A good solution.", "verdict": "ri', "not JSON"),
    ('{"critique": ' + json.dumps("x" * 500) + ', "verdict": "right"}', "longer than"),
])  # fmt: skip
def test_a_reply_off_the_schema_says_what_is_wrong(reply: str, error: str) -> None:
    with pytest.raises(ParseError, match=error):
        structured.parse_reply(reply, structured.CFT)


def test_a_schema_fitted_to_a_budget_bounds_its_strings() -> None:
    def bounds(schema: dict) -> list[int]:
        strings: list = []
        structured._skeleton(schema, strings)
        return [node["maxLength"] for node, _ in strings]

    # cft: the fixed JSON at ~2 characters a token; the rest at 2 characters a token, capped by the schema.
    fixed = len('{"critique":"","verdict":"wrong"}')
    assert bounds(structured.fit(structured.CFT, 96)) == [(96 - fixed // 2) * 2]
    assert bounds(structured.fit(structured.CFT, 4096)) == [structured.CRITIQUE_MAX_CHARS]
    # Strings share the budget: the rubric's five criteria, reflection's three fields.
    assert len(set(bounds(structured.fit(structured.REFLECTION, 128)))) == 1
    assert bounds(structured.fit(structured.RUBRIC, 128))[0] * 5 <= 2 * 128
    assert structured.CFT["properties"]["critique"]["maxLength"] == structured.CRITIQUE_MAX_CHARS  # the original is untouched


def test_arrays_are_bounded_and_typed() -> None:
    assert structured.parse_reply('{"criteria": ["Names the sum", "Shows work"]}', structured.RUBRIC)
    with pytest.raises(ParseError, match="items"):
        structured.parse_reply('{"criteria": []}', structured.RUBRIC)
    with pytest.raises(ParseError, match=r"criteria\[1\]"):
        structured.parse_reply('{"criteria": ["Names the sum", 3]}', structured.RUBRIC)
