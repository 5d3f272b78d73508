"""bench.scale submits the same task to both arms: the demo task cut to one round, with a baseline arm."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.scale import TASK, busy_share, cpu_times, scale_task

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


def test_the_busy_share_counts_everything_but_idle_and_iowait_between_two_snapshots() -> None:
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    before = cpu_times("cpu  100 0 50 800 50 0 0 0 30 0\ncpu0 1 2 3 4\n")
    after = cpu_times("cpu  250 0 100 900 50 0 0 0 90 0\n")
    assert before == (150, 1000) and after == (350, 1300)
    assert busy_share(before, after) == pytest.approx(200 / 300)  # guest is inside user: not counted twice
    assert busy_share(after, after) == 0.0
    busy, total = cpu_times()  # this machine's own /proc/stat parses
    assert 0 <= busy <= total
