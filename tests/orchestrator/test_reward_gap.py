"""The per-record reward gap `select.reweight` sends to Diversify and Conquer's cluster reweighting."""

from __future__ import annotations

import pytest

from orchestrator.scores import reward_gap
from syllabus.tasks import TaskSpec

pytestmark = pytest.mark.unit


def test_success_gap_is_the_gold_reward_minus_the_students_share_of_right_answers() -> None:
    # 3 of 4 checkpoints answer right: gold 1 - 0.75
    assert reward_gap({"success_rate": 0.75, "loss_base": 2.0}, "success_gap") == pytest.approx(0.25)
    assert reward_gap({"success_rate": 0.0}, "success_gap") == 1.0
    assert reward_gap({"success_rate": 0.75, "loss_base": 2.0}, "loss_base") == 2.0
    assert reward_gap({"loss_base": float("nan")}, "loss_base") is None
    assert reward_gap({}, "success_gap") is None
    with pytest.raises(ValueError, match="unknown reward gap"):
        reward_gap({}, "vibes")


def test_a_diversity_task_with_its_gap_scored_validates() -> None:
    task = TaskSpec.model_validate({
        "name": "t", "kind": "classification", "instructions": "Classify.", "labels": ["a", "b"],
        "seeds": [{"input": "one", "label": "a"}, {"input": "two", "label": "b"}], "eval": [{"input": "x", "label": "a"}],
        "score": {"metrics": ["learnability", "difficulty"]},
        "select": {"policy": "diversity", "reweight": "success_gap", "reweight_temperature": 0.5},
    })  # fmt: skip
    assert task.select.reweight == "success_gap" and task.select.reweight_temperature == 0.5
