"""bench.outcome's own logic (the task it measures, a report's summary) and bench.record's rules for
an outcome result; the runs themselves go through `syllabus run` (tests/e2e) and are recorded in
bench/RESULTS.md."""

from __future__ import annotations

import pytest

from bench import outcome, record

pytestmark = pytest.mark.unit


def test_prepare_puts_in_the_arms_and_repeats_and_swaps_in_validation_for_tuning() -> None:
    task = outcome.prepare(outcome.TASKS["banking77"], "validation", 3, {"score.metrics": ["learnability", "agreement"], "select.min_agreement": 0.0, "rounds": 1})
    assert task.baselines.arms == ["seeds_only", "all_kept", "random"] and task.baselines.repeats == 3
    assert [e.input for e in task.eval] == [e.input for e in task.validation] and len(task.eval) == 100
    assert task.select.min_agreement == 0.0 and task.rounds == 1
    reported = outcome.prepare(outcome.TASKS["banking77"], "eval", 3, {})
    assert len(reported.eval) == 100 and {e.input for e in reported.eval}.isdisjoint({e.input for e in reported.validation})
    assert len(reported.labels) == 10


def test_a_bad_override_is_one_line_not_a_traceback() -> None:
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        outcome.parse_set(["select.metric"])
    with pytest.raises(ValueError, match="not a section"):
        outcome.prepare(outcome.TASKS["banking77"], "eval", 3, {"rounds.x": 1})
    with pytest.raises(ValueError, match="agreement, which is not in score.metrics"):
        outcome.prepare(outcome.TASKS["banking77"], "eval", 3, {"select.min_agreement": 0.0})
    assert outcome.parse_set(["score.metrics=[learnability, agreement]"]) == {"score.metrics": ["learnability", "agreement"]}


def report(loop: list[float], arms: dict[str, list[tuple[float, float]]]) -> dict:
    """A `syllabus run --json` report: the loop's accuracy per round; per arm (mean, ci_low) per round."""
    return {
        "baseline_accuracy": 0.1, "final_accuracy": loop[-1],
        "rounds": [{"round": r + 1, "accuracy": a, "trained": 50, "selected": 10, "kept": 20, "selection_dropped": {}}
                   for r, a in enumerate(loop)],
        "baselines": [{"arm": arm, "verdict": f"{arm}: ...", "rounds": [
            {"round": r + 1, "accuracy": m, "accuracies": [m], "trained": 40, "lift": loop[r] - m, "ci_low": lo, "ci_high": 0.2}
            for r, (m, lo) in enumerate(rows)]} for arm, rows in arms.items()],
    }  # fmt: skip


def test_summary_reads_the_final_rounds_lower_bounds_and_the_seeds_only_floor() -> None:
    s = outcome.summarize(report([0.5, 0.6], {"seeds_only": [(0.4, 0.01), (0.62, -0.1)], "random": [(0.5, -0.05), (0.5, 0.02)]}))
    assert s["wins"] == {"seeds_only": False, "random": True}
    assert s["never_below_seeds_only"] is False  # round 2: 0.60 < 0.62
    assert s["rounds"][1]["arms"]["random"]["lift"] == pytest.approx(0.1)


def outcome_result(repeats: int) -> dict:
    s = outcome.summarize(report([0.6], {"random": [(0.5, 0.02)]}))
    return {"tasks": [{"task": "banking77-outcome", "split": "eval", "repeats": repeats, **s}]}


def test_record_refuses_an_outcome_with_fewer_than_three_repeats_and_writes_its_lifts() -> None:
    assert "fewer than 3" in record.refusal(outcome_result(2), record.MAX_SPREAD)
    assert record.refusal(outcome_result(3), record.MAX_SPREAD) is None
    (line,) = record.figures(outcome_result(3))
    assert "loop 60.0%" in line and "vs random 50.0%: +10.0% [+2.0%, +20.0%]" in line
