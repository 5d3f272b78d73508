"""bench.scale submits the same task to both arms: the demo task cut to one round, with a baseline arm."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.scale import TASK, scale_task

pytestmark = pytest.mark.unit


def test_the_scale_task_is_one_round_with_a_baseline_arm_and_keeps_a_tasks_own_arms(tmp_path: Path) -> None:
    raw = yaml.safe_load(scale_task(TASK))
    assert raw["rounds"] == 1 and raw["baselines"]["arms"] == ["random"]
    assert raw["seeds"] and raw["eval"]  # inlined: the stacks read no file of this checkout
    own = yaml.safe_load(TASK.read_text())
    own["baselines"] = {"arms": ["seeds_only"], "repeats": 1}
    for name in ("seeds", "eval"):
        own[name] = str(TASK.parent / own[name])
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(own))
    assert yaml.safe_load(scale_task(path))["baselines"]["arms"] == ["seeds_only"]
