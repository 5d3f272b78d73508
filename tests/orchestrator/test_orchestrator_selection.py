"""Selection arithmetic and output keys: pure, deterministic logic."""

from __future__ import annotations

import pytest

from orchestrator.keys import output_key
from syllabus.artifacts import ArtifactRef
from syllabus.selection import top_count, top_fraction

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("kept", "fraction", "expected"),
    [
        (0, 0.5, 0),  # nothing kept, nothing selected
        (1, 0.1, 1),  # at least one when anything was kept
        (3, 0.1, 1),
        (10, 0.5, 5),
        (9, 0.5, 5),  # ceil
        (10, 0.3, 3),  # 10 * 0.3 == 3.0000000000000004 in floating point: still 3
        (7, 1.0, 7),
        (100, 0.06, 6),
        (4, 0.0, 0),  # a zero fraction selects nothing
    ],
)
def test_top_count(kept: int, fraction: float, expected: int) -> None:
    assert top_count(kept, fraction) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_top_count_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        top_count(4, fraction)


def test_student_select_ratio_rounds_as_the_loop_does() -> None:
    from student_svc import selection as student_selection

    rows = [{"id": f"r{i}", "s": float(i)} for i in range(10)]
    # One rounding for both: 10 * 0.3 selects 3 in the loop and in the student's Select RPC.
    assert student_selection.top_ratio(rows, "s", 0.3) == top_fraction(rows, "s", 0.3) == ["r9", "r8", "r7"]


def test_select_top_ranks_by_learnability_and_breaks_ties_by_id() -> None:
    scores = [
        {"id": "d", "learnability": 0.1},
        {"id": "c", "learnability": 0.9},
        {"id": "b", "learnability": 0.5},
        {"id": "a", "learnability": 0.5},
        {"id": "e", "learnability": -0.2},
    ]
    assert top_fraction(scores, "learnability", 0.6) == ["c", "a", "b"]
    # The input order does not matter.
    assert top_fraction(list(reversed(scores)), "learnability", 0.6) == ["c", "a", "b"]
    assert top_fraction(scores, "learnability", 1.0) == ["c", "a", "b", "d", "e"]


def test_select_top_ranks_missing_and_nan_scores_last() -> None:
    scores = [{"id": "x", "learnability": float("nan")}, {"id": "y"}, {"id": "z", "learnability": -5.0}]
    assert top_fraction(scores, "learnability", 0.3) == ["z"]
    assert top_fraction(scores, "learnability", 1.0) == ["z", "x", "y"]


def test_select_top_of_nothing_is_empty() -> None:
    assert top_fraction([], "learnability", 0.5) == []


def _ref(sha: str) -> ArtifactRef:
    return ArtifactRef(uri=f"file:///a/{sha}", sha256=sha, size_bytes=1)


def test_output_keys_are_deterministic_and_track_inputs_and_params() -> None:
    base = output_key("job-1", 2, "generate", [_ref("aa")], {"seed": 2, "model": "m"}, "jsonl")
    assert base == output_key("job-1", 2, "generate", [_ref("aa")], {"model": "m", "seed": 2}, "jsonl")
    assert base.startswith("jobs/job-1/round-2/generate-") and base.endswith(".jsonl")
    # The URI does not matter, the content (sha256) does.
    assert base == output_key(
        "job-1", 2, "generate", [ArtifactRef("s3://b/x", "aa", 9)], {"seed": 2, "model": "m"}, "jsonl"
    )
    changed = {
        output_key("job-1", 2, "generate", [_ref("bb")], {"seed": 2, "model": "m"}, "jsonl"),
        output_key("job-1", 2, "generate", [_ref("aa")], {"seed": 3, "model": "m"}, "jsonl"),
        output_key("job-1", 2, "generate", [_ref("aa"), None], {"seed": 2, "model": "m"}, "jsonl"),
        output_key("job-1", 3, "generate", [_ref("aa")], {"seed": 2, "model": "m"}, "jsonl"),
        output_key("job-2", 2, "generate", [_ref("aa")], {"seed": 2, "model": "m"}, "jsonl"),
    }
    assert base not in changed and len(changed) == 5
    assert output_key("j", 1, "critique", [_ref("aa")], {}) == output_key(
        "j", 1, "critique", [_ref("aa")], {}
    )
    assert "." not in output_key("j", 1, "critique", [_ref("aa")], {}).rsplit("/", 1)[1]
