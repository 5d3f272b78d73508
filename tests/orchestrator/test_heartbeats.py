"""The activities' heartbeats follow the service's own progress (issue 25, item 10): they beat while
the service advances and, once it has not advanced for `stall_after` seconds of the call, stop and
end the call as a retryable SERVICE_STALLED, so a hung service is found in minutes. The probe here
stands in for the service's `ProgressService`; `tests/faults` stops a real service."""

from __future__ import annotations

import asyncio
import time

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from orchestrator.activities.base import heartbeating
from syllabus.progress import ServiceProgress
from syllabus_sdk.common.v1 import progress_pb2

pytestmark = pytest.mark.unit


def _probe(seconds_since_advance, ticks=7):
    async def probe():
        return progress_pb2.GetProgressResponse(seconds_since_advance=seconds_since_advance(), ticks=ticks, busy_calls=1)

    return probe


async def _call(seconds: float, probe, stall_after: float):
    async with heartbeating(every=0.05, probe=probe, stall_after=stall_after):
        await asyncio.sleep(seconds)
    return "done"


def test_an_advancing_service_keeps_beating_past_the_stall_timeout() -> None:
    env = ActivityEnvironment()
    beats: list = []
    env.on_heartbeat = lambda *details: beats.append(details)
    assert asyncio.run(env.run(_call, 1.0, _probe(lambda: 0.01), 0.3)) == "done"
    assert len(beats) >= 5
    assert beats[-1] == ({"service_ticks": 7, "service_busy": 1},)  # the service's own progress


def test_a_service_that_does_not_answer_ends_the_call_as_service_stalled() -> None:
    async def silent():
        await asyncio.sleep(3600)  # a stopped process: the probe never returns

    env = ActivityEnvironment()
    beats: list = []
    env.on_heartbeat = lambda *details: beats.append(time.monotonic())
    started = time.monotonic()
    with pytest.raises(ApplicationError) as err:
        asyncio.run(env.run(_call, 60.0, silent, 0.4))
    elapsed = time.monotonic() - started
    assert err.value.type == "SERVICE_STALLED" and not err.value.non_retryable
    assert "no progress" in str(err.value)
    assert 0.4 <= elapsed < 5, elapsed
    assert all(t - started < 0.4 + 0.3 for t in beats), "it beat after the service had stalled"


def test_idle_time_before_the_call_began_is_not_a_stall() -> None:
    """A service idle for an hour before this call is not stalled at once; it is once the call has
    waited `stall_after` without an advance."""
    env = ActivityEnvironment()
    started = time.monotonic()
    with pytest.raises(ApplicationError) as err:
        asyncio.run(env.run(_call, 60.0, _probe(lambda: 3600.0), 0.5))
    assert err.value.type == "SERVICE_STALLED"
    assert time.monotonic() - started >= 0.5


def test_a_progress_event_counts_as_an_advance() -> None:
    """The trainer's watch events: a call whose events keep coming is not stalled even if the probe is silent."""

    async def silent():
        await asyncio.sleep(3600)

    async def call():
        async with heartbeating(every=0.05, probe=silent, stall_after=0.3) as hb:
            for step in range(12):
                hb.update({"step": step, "total": 12})
                await asyncio.sleep(0.1)
        return "done"

    assert asyncio.run(ActivityEnvironment().run(call)) == "done"


def test_cancelling_the_activity_is_not_reported_as_a_stall() -> None:
    env = ActivityEnvironment()

    async def main():
        task = asyncio.create_task(env.run(_call, 60.0, _probe(lambda: 0.0), 10.0))
        await asyncio.sleep(0.2)
        env.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_service_progress_ticks_on_forward_passes_and_counts_busy_calls(tiny_model_dir) -> None:
    import torch

    from syllabus.models import load_model

    progress = ServiceProgress()
    model, _ = load_model(str(tiny_model_dir))
    progress.watch(model)
    before = progress.snapshot().ticks
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
        model(torch.tensor([[4, 5]]))
    assert progress.snapshot().ticks == before + 2
    with progress.busy():
        assert progress.snapshot().busy_calls == 1
    snap = progress.snapshot()
    assert snap.busy_calls == 0 and snap.calls == 1 and snap.seconds_since_advance < 1.0
