"""Label agreement's margin and the task rules around it (the loop's use is in tests/e2e/test_agreement.py)."""

from __future__ import annotations

import math

import pytest

from orchestrator.scores import agreement_margin
from syllabus.tasks import TaskSpec, TaskSpecError, parse_task

pytestmark = pytest.mark.unit


def test_margin_is_the_intended_labels_log_prob_over_the_best_other() -> None:
    lps = {"a": -0.5, "b": -2.0, "c": -1.0}
    assert agreement_margin({"label": "a", "label_logprobs": lps}) == pytest.approx(0.5)
    assert agreement_margin({"label": "b", "label_logprobs": lps}) == pytest.approx(-1.5)
    assert agreement_margin({"label": "z", "label_logprobs": lps}) is None
    assert agreement_margin({"label": "a", "label_logprobs": {"a": -1.0}}) is None
    assert not math.isnan(agreement_margin({"label": "c", "label_logprobs": lps}))


CLASSIFY = """
name: t
kind: classification
instructions: Classify.
labels: [a, b]
seeds: [{input: x, label: a}, {input: y, label: b}]
eval: [{input: z, label: a}]
"""
NUMERIC = """
name: t
kind: numeric
instructions: Solve.
seeds: [{input: "1+1", label: "2"}]
eval: [{input: "2+2", label: "4"}]
"""


def test_agreement_is_a_classification_score_and_min_agreement_needs_it() -> None:
    task: TaskSpec = parse_task(CLASSIFY + "score: {metrics: [learnability, agreement]}\nselect: {min_agreement: 0}\n")
    assert task.select.ranked_metrics() == ["learnability", "agreement"]
    with pytest.raises(TaskSpecError, match="agreement, which is not in score.metrics"):
        parse_task(CLASSIFY + "select: {min_agreement: 0}\n")
    with pytest.raises(TaskSpecError, match="agreement scores a judge's label likelihood"):
        parse_task(NUMERIC + "score: {metrics: [agreement]}\n")
