"""A service's own progress, so a caller can tell a slow service from a hung one.

Every forward pass of a model loaded by `syllabus.models.load_model` (a generation step, a scoring
batch, a training step) and every reply from a teacher endpoint ticks the process's `PROGRESS`.
The `ProgressService` RPC every teacher, student and trainer serves answers how long ago the last
tick was and how many calls are at work. An activity polls it while its call runs and heartbeats
only while the service advances (`orchestrator.activities.base.heartbeating`): a service whose
model thread hangs, or whose process is stopped, stops the heartbeats and the step is retried in
minutes instead of waiting hours for the call's deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from syllabus_sdk.common.v1 import progress_pb2, progress_pb2_grpc


class ServiceProgress:
    """Thread-safe: ticked from model threads, read from the event loop."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()
        self._ticks = 0
        self._busy = 0
        self._calls = 0

    def tick(self) -> None:
        with self._lock:
            self._last = self._clock()
            self._ticks += 1

    @contextmanager
    def busy(self) -> Iterator[None]:
        """A call (or training job) at work: entering and leaving it count as advances."""
        with self._lock:
            self._busy += 1
            self._calls += 1
        self.tick()
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
            self.tick()

    def snapshot(self) -> progress_pb2.GetProgressResponse:
        with self._lock:
            return progress_pb2.GetProgressResponse(
                seconds_since_advance=max(0.0, self._clock() - self._last), ticks=self._ticks, busy_calls=self._busy,
                calls=self._calls,
            )

    def watch(self, model: Any) -> Any:
        """Tick on every forward pass of `model` (a torch module); returns the model."""
        model.register_forward_hook(lambda *_: self.tick())
        return model


#: The process's progress: one service per process.
PROGRESS = ServiceProgress()


class ProgressServicer(progress_pb2_grpc.ProgressServiceServicer):
    def __init__(self, progress: ServiceProgress = PROGRESS) -> None:
        self.progress = progress

    async def GetProgress(self, request, context):
        return self.progress.snapshot()


SERVICE_NAME = progress_pb2.DESCRIPTOR.services_by_name["ProgressService"].full_name
