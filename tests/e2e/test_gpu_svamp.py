"""The numeric SVAMP example with the vLLM teacher (needs a CUDA GPU and the `gpu` extra; not run by
default: `pytest -m gpu tests/e2e/test_gpu_svamp.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from syllabus.tasks import dump_task, load_task

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]


def test_the_svamp_example_runs_with_the_vllm_teacher(run_task) -> None:
    pytest.importorskip("vllm", reason="the gpu extra is not installed")
    import yaml

    task = yaml.safe_load(dump_task(load_task(ROOT / "examples/svamp/task.yaml")))
    task["teacher"] = {"model": "vllm:bundled:smollm2-135m-instruct"}
    task["eval"] = task["eval"][:40]  # the student still runs on the CPU side of the stack
    report = run_task(task)
    (one,) = report["rounds"]
    assert one["reasoning"]["rationales"]["written"] > 0 and one["reasoning"]["rft"]["written"] > 0
    assert report["final_accuracy"] is not None and 0.0 <= report["final_accuracy"] <= 1.0
