"""The one answer checker (syllabus.answers) on the hard cases: how a final answer is read, and how
each task kind's match compares it with the gold answer."""

from __future__ import annotations

import pytest

from syllabus.answers import EXACT, LABEL, NUMERIC, answer_key, answer_number, answers_match

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "number"), [
    ("1,000", 1000.0),
    ("It costs $1,234.50 in all", 1234.5),
    ("1/2", 0.5),
    ("$5.00", 5.0),
    ("Answer: 5.", 5.0),
    ("Answer: 12 - 4 = 8", 8.0),  # the final number, not the first
    ("She has 3 apples and gets 4 more, 3 + 4 = 7.\nAnswer: 7", 7.0),  # a number in the reasoning before the final one
    ("3 + 4 = 7\nAnswer: 7\nQuestion: what is 2 + 2?", 7.0),  # the answer line, not what follows it
    ("so 3 + 4 = 7\n#### 1,234", 1234.0),  # GSM8K's marker
    ("5,6 and 7", 7.0),  # a comma list is not a thousands separator
    ("12-4", 4.0),  # a subtraction, not -4
    ("x = -2", -2.0),
    ("The temperature fell to −3", -3.0),  # a Unicode minus
    ("no number here", None),
    ("1/0", None),
])  # fmt: skip
def test_the_number_a_reply_answers(text: str, number: float | None) -> None:
    assert answer_number(text) == number


def test_numeric_match_reads_final_numbers_within_the_tolerance() -> None:
    assert answers_match("Answer: 1,000", "1000", NUMERIC)
    assert answers_match("It is 42.", "#### 42", NUMERIC)
    assert answers_match("0.5", "1/2", NUMERIC)
    assert answers_match("1000000.5", "1000000", NUMERIC, tol=1e-6)  # relative to |gold|
    assert not answers_match("Answer: 12 - 4 = 8", "12", NUMERIC)
    assert not answers_match("no number", "42", NUMERIC)
    assert not answers_match("7.01", "7", NUMERIC)


def test_exact_and_label_matches_normalise_the_final_answer() -> None:
    assert answers_match(" The Answer. ", "the answer", EXACT)
    assert answers_match("Paris is it.\nAnswer: Paris.", "paris", EXACT)
    assert not answers_match("the answers", "the answer", EXACT)
    assert not answers_match("paris, france", "Paris", EXACT)
    assert answers_match("Card_Arrival.", "card arrival", LABEL)
    assert answers_match("card arrival, since it has not come", "card_arrival", LABEL)
    assert not answers_match("card arrivals", "card_arrival", LABEL)
    assert not answers_match("", "", LABEL)


def test_an_unknown_match_is_refused() -> None:
    with pytest.raises(ValueError, match="match must be one of"):
        answers_match("a", "a", "fuzzy")


def test_answer_keys_group_the_same_answer() -> None:
    assert answer_key(NUMERIC, "Answer: 1,000") == answer_key(NUMERIC, "1000.0") == 1000.0
    assert answer_key(NUMERIC, "none") is None
    assert answer_key(EXACT, "Answer: Paris.") == answer_key(EXACT, "paris") == "paris"
