"""Duplicate detection and completion parsing on hand-made strings."""

from __future__ import annotations

import pytest

from teacher_svc.dedupe import NEAR_DUPLICATE_THRESHOLD, DuplicateIndex, normalize
from teacher_svc.generation import parse_completion

pytestmark = pytest.mark.unit


def test_normalize_ignores_case_punctuation_and_spacing() -> None:
    assert normalize("  I LOST my card!!  Help?") == "i lost my card help"
    assert normalize("top-up   failed.") == "top up failed"


def test_exact_duplicate_after_normalisation() -> None:
    index = DuplicateIndex()
    index.add("Where is my new card?", "seed-1")
    match = index.find("where is my NEW card")
    assert match is not None and match.kind == "exact" and match.of == "seed-1"


def test_near_duplicate_at_threshold() -> None:
    index = DuplicateIndex()
    index.add("I have been waiting over a week for my card to arrive", "seed-1")
    # One word changed out of ten: Jaccard 9/11 = 0.82 >= 0.8.
    near = index.find("I have been waiting over a week for my card to come")
    assert near is not None and near.kind == "near" and near.similarity >= NEAR_DUPLICATE_THRESHOLD
    assert index.find("My card still has not come, can you check the delivery status?") is None


def test_index_matches_best_of_several_texts() -> None:
    index = DuplicateIndex()
    index.add("How do I reset my passcode", "a")
    index.add("I forgot my passcode and cannot log in to the app", "b")
    match = index.find("i forgot my passcode and cannot log in to my app")
    assert match is not None and match.of == "b"
    assert len(index) == 2


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ('My card has not arrived yet, where is it?"', "My card has not arrived yet, where is it?"),
        ('My card has not arrived yet."\n\nNew message: "another one"', "My card has not arrived yet."),
        (
            "\n\nHere's the new message:\n- Message: I lost my wallet with my card in it",
            "I lost my wallet with my card in it",
        ),
        ('1. "Why did my top-up fail again?"', "Why did my top-up fail again?"),
        ("“What is today's exchange rate for euros?”", "What is today's exchange rate for euros?"),
        ("Customer message 4: Can I reset my passcode", "Can I reset my passcode"),
    ],
)
def test_parse_completion_strips_junk(completion: str, expected: str) -> None:
    assert parse_completion(completion) == expected


@pytest.mark.parametrize("completion", ["", "\n\n", '"', "Hi", "!!! ??? ...", "x" * 500, "Here it is:\n"])
def test_parse_completion_rejects_unusable(completion: str) -> None:
    assert parse_completion(completion) is None
