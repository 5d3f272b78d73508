"""The CLI's progress display shows the step's and the job's ETA from WatchJob (a fake watch stream)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from orchestrator.cli import duration, follow
from syllabus_sdk.jobs.v1 import jobs_pb2

pytestmark = pytest.mark.unit


class FakeClient:
    def __init__(self, jobs: list[jobs_pb2.Job]) -> None:
        self.jobs = jobs

    def watch_job(self, job_id: str):
        yield from self.jobs


def test_duration() -> None:
    assert [duration(s) for s in (0, 42.4, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


def test_follow_shows_the_step_and_job_eta() -> None:
    running = jobs_pb2.Job(job_id="j", status=jobs_pb2.JOB_STATUS_RUNNING, rounds_total=2, current_round=1,
                           current_step="train", step_detail="step 3/12 loss 1.200", step_eta_s=95, job_eta_s=400)  # fmt: skip
    unknown = jobs_pb2.Job(job_id="j", status=jobs_pb2.JOB_STATUS_RUNNING, rounds_total=2, current_round=1, current_step="evaluate",
                           steps=[jobs_pb2.StepTiming(name="train", round=1, seconds=30)])  # fmt: skip
    done = jobs_pb2.Job(job_id="j", status=jobs_pb2.JOB_STATUS_COMPLETED, rounds_total=2, current_round=2,
                        steps=[jobs_pb2.StepTiming(name="train", round=1, seconds=30)])  # fmt: skip
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False, record=True)
    assert follow(FakeClient([running, unknown, done]), "j", console) is done
    lines = [line for line in console.export_text().splitlines() if line.strip()]
    (job,) = [line for line in lines if line.split()[0] == "job"]
    (train,) = [line for line in lines if "round 1 train" in line]
    assert "done" in job and "ETA" not in job  # the job line ends without an ETA
    assert "30.0s" in train and "ETA" not in train  # a finished step shows its wall time instead


def test_follow_prints_etas_while_running() -> None:
    running = jobs_pb2.Job(job_id="j", status=jobs_pb2.JOB_STATUS_RUNNING, rounds_total=2, current_round=1,
                           current_step="train", step_detail="step 3/12 loss 1.200", step_eta_s=95, job_eta_s=400)  # fmt: skip
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False, record=True)
    follow(FakeClient([running]), "j", console)  # the stream ends while the job still runs
    text = console.export_text()
    assert "step 3/12 loss 1.200  ETA 1m35s" in text
    assert "round 1/2, ETA 6m40s" in text
