"""A task kind is one object (syllabus.kinds): its prompts, seed responses and answer checker, and no
code outside it that branches on a kind's name."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from syllabus import kinds
from syllabus.answers import EXACT, LABEL, NUMERIC
from syllabus.pb import kind_from_pb, task_kind
from syllabus.tasks import Kind
from syllabus_sdk.common.v1 import common_pb2

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_each_kind_has_one_match_and_open_ended_is_judged() -> None:
    assert [kinds.get(k).match for k in ("classification", "exact_answer", "numeric")] == [LABEL, EXACT, NUMERIC]
    assert kinds.OPEN_ENDED.judged and kinds.OPEN_ENDED.check("anything", "else")
    assert [k.name for k in kinds.KINDS.values() if k.has_labels] == ["classification"]
    assert set(get_args(Kind)) == set(kinds.NAMES)  # the task schema offers exactly these
    with pytest.raises(ValueError, match="unknown task kind 'essay'"):
        kinds.get("essay")


def test_kinds_travel_as_their_proto_enum() -> None:
    for name, kind in kinds.KINDS.items():
        assert kind_from_pb(task_kind(name)) is kind
    assert task_kind("numeric") == common_pb2.TASK_KIND_NUMERIC
    assert kind_from_pb(common_pb2.TASK_KIND_UNSPECIFIED) is None
    assert kind_from_pb(99) is None


def test_prompts_and_seed_responses_per_kind() -> None:
    labels = ["card_arrival", "lost_or_stolen_card"]
    assert kinds.CLASSIFICATION.prompt(" Classify. ", labels, " Where is it? ") == (
        "Classify.\nIntents: card_arrival, lost_or_stolen_card\nMessage: Where is it?\nIntent:"
    )
    assert kinds.CLASSIFICATION.rationale_prompt("Classify.", labels, "Where?").endswith(
        'Explain your reasoning, then give the intent on a last line "Answer: <intent>".'
    )
    assert kinds.NUMERIC.prompt("Solve.", [], "2 + 2?") == (
        'Solve.\nProblem: 2 + 2?\nSolve it step by step, then give the final number on a last line "Answer: <number>".'
    )
    assert kinds.NUMERIC.rationale_prompt("Solve.", [], "2 + 2?") == kinds.NUMERIC.prompt("Solve.", [], "2 + 2?")
    assert kinds.EXACT_ANSWER.prompt("Name it.", [], "Capital of France?") == (
        "Name it.\nQuestion: Capital of France?\nAnswer with the answer only."
    )
    assert kinds.OPEN_ENDED.prompt("Explain.", [], "Why {braces} stay?") == "Explain.\n\nWhy {braces} stay?"
    assert kinds.NUMERIC.seed_response("4", "2 + 2 = 4") == "2 + 2 = 4\nAnswer: 4"
    assert kinds.NUMERIC.seed_response("4") == "Answer: 4"
    assert kinds.EXACT_ANSWER.seed_response("Paris", "ignored") == "Paris"
    assert kinds.CLASSIFICATION.teacher_instructions("Classify.", labels) == (
        "Classify.\nAnswer with one of these intents: card_arrival, lost_or_stolen_card."
    )
    assert kinds.NUMERIC.teacher_instructions("Solve.", []) == "Solve."


@pytest.mark.parametrize(("kind", "prediction", "gold", "right"), [
    (kinds.NUMERIC, "Answer: 1,000", "1000", True),
    (kinds.NUMERIC, "Half of it.\nAnswer: 1/2", "0.5", True),
    (kinds.NUMERIC, "It costs $5.00", "5", True),
    (kinds.NUMERIC, "3 + 4 = 7, then 7 - 2 = 5.\nAnswer: 5.", "5", True),
    (kinds.NUMERIC, "Answer: 12 - 4 = 8", "12", False),  # the first number is not the answer
    (kinds.EXACT_ANSWER, "Paris.", "paris", True),
    (kinds.EXACT_ANSWER, "Paris, France", "Paris", False),
    (kinds.CLASSIFICATION, "card_arrival, since it has not come", "card_arrival", True),
    (kinds.CLASSIFICATION, "card arrivals", "card_arrival", False),
])  # fmt: skip
def test_one_checker_per_kind_on_the_hard_cases(kind: kinds.TaskKind, prediction: str, gold: str, right: bool) -> None:
    assert kind.check(prediction, gold) is right
    assert kinds.by_verifier(kind.verifier) is kind  # RFT's verifier is the same checker


def test_a_gold_answer_the_kind_cannot_check_is_named() -> None:
    assert kinds.NUMERIC.gold_error("about twelve") == "'about twelve' is not a number (numeric task)"
    assert kinds.NUMERIC.gold_error("12") is None and kinds.EXACT_ANSWER.gold_error("about twelve") is None
    with pytest.raises(ValueError, match="verifier must be one of"):
        kinds.by_verifier("fuzzy")


def _kind_name_comparisons(path: Path) -> list[str]:
    """`x.kind == "numeric"`, `kind != TASK_KIND_...`, `kind in (...)`: a comparison of something
    named kind with a kind's name or TaskKind value."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set(kinds.NAMES) | set(common_pb2.TaskKind.keys())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        parts = [node.left, *node.comparators]
        named_kind = any(
            isinstance(p, ast.Attribute | ast.Name) and (getattr(p, "attr", None) or getattr(p, "id", None)) == "kind"
            for p in parts
        )
        mentions = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        mentions |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
        if named_kind and mentions & names:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_code_outside_syllabus_kinds_branches_on_a_kind_name() -> None:
    packages = ("syllabus", "teacher_svc", "student_svc", "trainer_svc", "orchestrator")
    found = [hit for pkg in packages for path in sorted((ROOT / pkg).rglob("*.py"))
             if path.name != "kinds.py" and not path.name.endswith("_pb2.py") for hit in _kind_name_comparisons(path)]  # fmt: skip
    assert found == []
