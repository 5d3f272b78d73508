"""What every activity module shares: the artifact store, the metadata module, task specs, the typed
service clients with one error mapping, background heartbeats, and `published_or_call`, the
"output exists? else call the service" step every service-calling activity takes.

Idempotency: an activity's output key is derived from the job, round, step, the sha256 of its input
artifacts and its parameters (`orchestrator.keys.output_key`); before calling a service it looks
for that key in the artifact store and, if the output is already published, uses it without a call.
SQL rows are always (re)derived from the output artifact and written insert-or-ignore
(`orchestrator.metadata`), so a retry after a crash between "artifact written" and "rows written"
completes the rows and a retry after both duplicates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator.metadata import Metadata
from syllabus.artifacts import ArtifactNotFound, ArtifactRef, ArtifactStore, ChecksumMismatch, InvalidKey, open_store
from syllabus.auth import client_ca, service_token
from syllabus.config import Config
from syllabus.records import loads_jsonl
from syllabus.tasks import TaskSpec, TaskSpecError, parse_task
from syllabus_sdk.common.v1 import progress_pb2, progress_pb2_grpc
from syllabus_sdk.services import ServiceError, StudentClient, TeacherClient, TrainerClient

T = TypeVar("T")
C = TypeVar("C", TeacherClient, StudentClient, TrainerClient)

# Status codes that no retry can fix: the request, an input or the model is wrong.
NON_RETRYABLE_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "DATA_LOSS"})
# Interval of background heartbeats while a call runs (the SDK throttles them further).
HEARTBEAT_EVERY_S = 5.0


class Heartbeater:
    """Heartbeats in the background while a long call runs, carrying the latest progress details
    and the service's own progress, but only while the service advances.

    Each beat first asks the service how long ago its work last advanced (`probe`, the
    `ProgressService` of `syllabus.progress`; a stopped or unreachable service does not answer).
    When nothing advanced for `stall_after` seconds since the call began, the beats stop and the
    call is cancelled with a retryable SERVICE_STALLED: a hung service is found in minutes, not at
    the call's deadline hours later. Without a probe it beats unconditionally."""

    def __init__(self, probe: Callable[[], Awaitable[Any]] | None = None, stall_after: float = 300.0) -> None:
        self.details: dict[str, Any] | None = None
        self.probe = probe
        self.stall_after = stall_after
        self.advanced_at = time.monotonic()  # idle time before this call began is not this call's stall
        self.service: dict[str, Any] = {}
        self.stalled: str | None = None

    def update(self, details: dict[str, Any]) -> None:
        self.details = details
        self.advanced_at = time.monotonic()  # a progress event is the service advancing
        activity.heartbeat(self._payload())

    def _payload(self) -> dict[str, Any] | None:
        if self.details is None and not self.service:
            return None
        return {**self.service, **(self.details or {})}

    async def check(self, timeout: float) -> bool:
        """Probe the service; False once it has not advanced for `stall_after` seconds."""
        if self.probe is not None:
            try:
                snap = await asyncio.wait_for(self.probe(), timeout)
            except (TimeoutError, grpc.aio.AioRpcError) as e:
                if isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self.probe = None  # an older service: beat as before
                    return True
            else:
                self.advanced_at = max(self.advanced_at, time.monotonic() - snap.seconds_since_advance)
                self.service = {"service_ticks": int(snap.ticks), "service_busy": int(snap.busy_calls)}
        idle = time.monotonic() - self.advanced_at
        if idle > self.stall_after:
            self.stalled = f"the service made no progress for {idle:.0f} s (service_stall_timeout_s {self.stall_after:g})"
            return False
        return True

    async def loop(self, every: float, owner: asyncio.Task) -> None:
        while True:
            await asyncio.sleep(every)
            if not await self.check(timeout=max(1.0, every)):
                owner.cancel()  # the call ends; `heartbeating` turns this into SERVICE_STALLED
                return
            payload = self._payload()
            activity.heartbeat(*([payload] if payload is not None else []))


@contextlib.asynccontextmanager
async def heartbeating(
    every: float = HEARTBEAT_EVERY_S, probe: Callable[[], Awaitable[Any]] | None = None, stall_after: float = 300.0
) -> AsyncIterator[Heartbeater]:
    timeout = activity.info().heartbeat_timeout
    if timeout:  # beat well inside the timeout the workflow chose
        every = min(every, timeout.total_seconds() / 3)
    hb = Heartbeater(probe, stall_after)
    owner = asyncio.current_task()
    assert owner is not None
    task = asyncio.create_task(hb.loop(every, owner))
    try:
        yield hb
    except asyncio.CancelledError:
        if hb.stalled is None:
            raise  # the activity itself was cancelled
        owner.uncancel()
        raise ApplicationError(hb.stalled, type="SERVICE_STALLED") from None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def service_failure(err: ServiceError) -> ApplicationError:
    """The one mapping of a failed service call to an activity error: the status code is the type,
    and only codes a retry cannot fix are non-retryable."""
    code = err.code.name
    return ApplicationError(str(err), type=code, non_retryable=code in NON_RETRYABLE_CODES)


def no_output(what: str) -> ApplicationError:
    return ApplicationError(f"{what} returned no output", type="DATA_LOSS")


def finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class ActivityBase:
    """Resources of the orchestrator's activities (store and SQL engine created lazily)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metadata = Metadata(config.resolved_database_url())
        self._store: ArtifactStore | None = None
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskSpec] = {}

    @property
    def store(self) -> ArtifactStore:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.config.resolved_artifact_url(), self.config)
            return self._store

    def close(self) -> None:
        """Dispose the SQL engine (the worker calls this on shutdown)."""
        self.metadata.close()

    async def _db(self, write: Callable[..., T], *args: Any) -> T:
        """Run a metadata write off the event loop."""
        return await asyncio.to_thread(write, *args)

    async def _record_artifacts(self, job_id: str, round_: int, refs: dict[str, ArtifactRef | None]) -> None:
        await self._db(self.metadata.record_artifacts, job_id, round_, refs)

    async def _record_evaluation(self, inp: Any, rows: list[dict], predictions: ArtifactRef) -> tuple[float, int, int]:
        """(accuracy, correct, total) of graded `rows` (each with "correct"), written as the Evaluation
        row of `inp`'s job, round, stage and adapter, `predictions` the artifact they were read from."""
        correct = sum(1 for r in rows if r.get("correct"))
        total = len(rows)
        accuracy = correct / total if total else 0.0
        evaluation = {
            "job_id": inp.job_id,
            "round": inp.round,
            "stage": inp.stage,
            "accuracy": accuracy,
            "correct": correct,
            "total": total,
            "adapter_uri": inp.adapter.uri if inp.adapter is not None else "",
            "predictions_uri": predictions.uri,
        }
        await self._db(self.metadata.record_evaluation, evaluation)
        return accuracy, correct, total

    # -- artifacts -------------------------------------------------------------------------------

    def _read(self, ref: ArtifactRef) -> bytes:
        try:
            return self.store.get_bytes(ref)
        except ArtifactNotFound as e:
            raise ApplicationError(str(e), type="NOT_FOUND", non_retryable=True) from e
        except ChecksumMismatch as e:
            raise ApplicationError(str(e), type="DATA_LOSS", non_retryable=True) from e
        except InvalidKey as e:
            raise ApplicationError(str(e), type="INVALID_ARGUMENT", non_retryable=True) from e

    def _read_jsonl(self, ref: ArtifactRef) -> list[dict]:
        return loads_jsonl(self._read(ref))

    def _publish_once(self, key: str, data: bytes) -> ArtifactRef:
        """Publish derived data at key unless the same bytes are already there."""
        existing = self.store.stat(key)
        if existing is not None:
            if existing.sha256 != hashlib.sha256(data).hexdigest():
                raise ApplicationError(
                    f"artifact {key} exists with different content; refusing to overwrite it",
                    type="CONFLICT",
                    non_retryable=True,
                )
            return existing
        return self.store.put_bytes(key, data)

    def _task(self, ref: ArtifactRef) -> TaskSpec:
        """The task spec behind ref (parsed once per sha256)."""
        task = self._tasks.get(ref.sha256)
        if task is None:
            try:
                task = parse_task(self._read(ref).decode(), source=ref.uri)
            except TaskSpecError as e:
                raise ApplicationError(str(e), type="INVALID_ARGUMENT", non_retryable=True) from e
            self._tasks[ref.sha256] = task
        return task

    # -- services --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _client(self, kind: type[C], address: str) -> AsyncIterator[tuple[C, Heartbeater]]:
        """A typed client on a fresh channel, heartbeating while it is used and the service advances
        (`Heartbeater`); a `ServiceError` leaves as an `ApplicationError` (`service_failure`)."""
        ca = client_ca(self.config)
        async with kind(address, token=service_token(self.config), root_certificates=ca) as client:
            progress = progress_pb2_grpc.ProgressServiceStub(client.channel)
            probe = functools.partial(progress.GetProgress, progress_pb2.GetProgressRequest())
            async with heartbeating(probe=probe, stall_after=self.config.service_stall_timeout_s) as hb:
                try:
                    yield client, hb
                except ServiceError as e:
                    raise service_failure(e) from None

    async def _teacher(self, call: Callable[[TeacherClient], Awaitable[T]]) -> T:
        async with self._client(TeacherClient, self.config.teacher_address) as (client, _):
            return await call(client)

    async def _student(self, call: Callable[[StudentClient], Awaitable[T]]) -> T:
        async with self._client(StudentClient, self.config.student_address) as (client, _):
            return await call(client)

    async def published_or_call(
        self, key: str, call: Callable[[], Awaitable[ArtifactRef | None]], what: str
    ) -> ArtifactRef:
        """The output already published at `key` (a retry: no call), else the one `call` publishes
        there (DATA_LOSS if the service answers without it)."""
        existing = self.store.stat(key)
        if existing is not None:
            return existing
        out = await call()
        if out is None:
            raise no_output(what)
        return out
