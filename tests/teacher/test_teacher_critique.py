"""Judge-mode critique rules on a hand-made set."""

from __future__ import annotations

import pytest

from syllabus.records import content_id
from teacher_svc.critique import judge
from teacher_svc.generation import Seed

pytestmark = pytest.mark.unit

LABELS = ["card_arrival", "exchange_rate"]
SEEDS = [
    Seed("s1", "I am still waiting on my card?", "card_arrival"),
    Seed("s2", "What exchange rate do you use for dollars?", "exchange_rate"),
]


def ex(text: str, label: str, id_: str | None = None) -> dict:
    return {"id": id_ or content_id(text, label), "input": text, "label": label}


def test_judge_keeps_and_drops_with_reasons() -> None:
    examples = [
        ex("My new card has not shown up after ten days.", "card_arrival", "a"),
        ex("How much is a euro in pounds today?", "weather", "b"),
        ex("i am still waiting on my card", "card_arrival", "c"),
        ex("What exchange rate do you use for US dollars?", "exchange_rate", "d"),
        ex("My new card has NOT shown up after ten days!", "card_arrival", "e"),
        ex("Hi", "card_arrival", "f"),
        ex("   ", "card_arrival", "g"),
        ex("x " * 300, "card_arrival", "h"),
        ex("Is the rate better if I exchange on a weekday?", "exchange_rate", "i"),
    ]
    verdicts = judge(examples, LABELS, SEEDS)
    assert [v.id for v in verdicts] == list("abcdefghi")
    assert [v.keep for v in verdicts] == [True, False, False, False, False, False, False, False, True]
    reasons = [v.reason for v in verdicts]
    assert reasons[0] == "ok" and reasons[8] == "ok"
    assert reasons[1] == "label_not_in_task: 'weather'"
    assert reasons[2].startswith("copies_seed: same text as s1")
    assert reasons[3].startswith("copies_seed: near-duplicate of s2")
    assert reasons[4].startswith("duplicate: same text as a")
    assert reasons[5:8] == ["too_short", "empty", "too_long"]
    assert verdicts[0].record() == {"id": "a", "keep": True, "reason": "ok"}


def test_dropped_examples_do_not_shadow_later_ones() -> None:
    # A dropped example (wrong label) must not make a later, valid copy of it a "duplicate".
    verdicts = judge(
        [ex("Where is the card you sent me?", "other"), ex("Where is the card you sent me?", "card_arrival")],
        LABELS,
        SEEDS,
    )
    assert [v.keep for v in verdicts] == [False, True]


def test_missing_fields_are_dropped_not_crashed_on() -> None:
    verdicts = judge([{"label": "card_arrival"}, {"input": "Where is my card, it is late?"}], LABELS, SEEDS)
    assert [v.reason for v in verdicts] == ["empty", "label_not_in_task: ''"]
    assert all(v.id for v in verdicts)


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ('{"critique": "The label fits the message.", "verdict": "right"}', "right"),
        ('```json\n{"critique": "Step 2 is wrong.", "verdict": "wrong"}\n```', "wrong"),  # an unconstrained endpoint
        ('{"critique": "Looks fine.", "verdict": "correct"}', None),  # not one of the verdicts
        ('{"critique": "ok", "verdict": "right"}', None),  # no critique to speak of
        ('{"critique": "The label fits the message.", "verdict": "ri', None),  # cut off by max_new_tokens
        ('Conclusion: right', None),
    ],
)
def test_a_cft_reply_is_a_critique_and_a_verdict_in_json(reply: str, verdict: str | None) -> None:
    from teacher_svc.critics import parse_cft
    from teacher_svc.retry import ParseError

    if verdict is None:
        with pytest.raises(ParseError):
            parse_cft(reply)
    else:
        assert parse_cft(reply)[1] == verdict
