"""A cancelled RPC keeps its service's model lock until the model's thread ends (issue 25, item 4):
the next request must not share the model with a thread still swapping adapters or changing the
tokenizer. The services' own lock paths are driven with a blocking `fn`, not a model."""

from __future__ import annotations

import asyncio
import threading

import pytest

from syllabus.serving import in_model_thread

pytestmark = pytest.mark.unit


async def _cancel_while_running(call, release: threading.Event, started: threading.Event, lock: asyncio.Lock) -> list[str]:
    """Start `call()`, cancel it while its thread runs, then queue a second holder of `lock`; the
    order in which the thread ends and the second holder runs."""
    order: list[str] = []
    first = asyncio.create_task(call())
    while not started.is_set():
        await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.05)

    async def second() -> None:
        async with lock:
            order.append("second holds the lock")

    nxt = asyncio.create_task(second())
    await asyncio.sleep(0.2)
    assert lock.locked() and not nxt.done()  # the cancelled call still holds it: its thread runs
    order.append("thread ends")
    release.set()
    await nxt
    with pytest.raises(asyncio.CancelledError):
        await first
    return order


def _blocking(started: threading.Event, release: threading.Event):
    def fn(*_args):
        started.set()
        assert release.wait(10)
        return "done"

    return fn


def test_in_model_thread_returns_the_result_and_keeps_a_cancelled_caller_until_the_thread_ends() -> None:
    async def main() -> list[str]:
        assert await in_model_thread(lambda x: x + 1, 1) == 2
        lock, started, release = asyncio.Lock(), threading.Event(), threading.Event()
        fn = _blocking(started, release)

        async def call() -> str:
            async with lock:
                return await in_model_thread(fn)

        return await _cancel_while_running(call, release, started, lock)

    assert asyncio.run(main()) == ["thread ends", "second holds the lock"]


def test_the_teacher_holds_its_model_lock_through_a_cancelled_request(monkeypatch, tmp_path) -> None:
    from syllabus.artifacts import LocalArtifactStore
    from syllabus_sdk.common.v1 import common_pb2
    from teacher_svc import service

    async def main() -> list[str]:
        servicer = service.TeacherServicer(LocalArtifactStore(tmp_path))

        async def backend_for(_model):
            return object()

        monkeypatch.setattr(servicer, "_backend_for", backend_for)
        started, release = threading.Event(), threading.Event()
        fn = _blocking(started, release)
        model = common_pb2.ModelRef(base="bundled:smollm2-135m-instruct")
        return await _cancel_while_running(lambda: servicer._run_model(model, fn), release, started, servicer._model_lock)

    assert asyncio.run(main()) == ["thread ends", "second holds the lock"]


def test_the_student_holds_its_model_lock_through_a_cancelled_request(tmp_path) -> None:
    from student_svc import service
    from syllabus.artifacts import LocalArtifactStore

    class Context:
        async def abort(self, code, details):
            raise AssertionError(f"{code}: {details}")

    async def main() -> list[str]:
        servicer = service.StudentServicer(LocalArtifactStore(tmp_path), models=None, adapter_cache=tmp_path / "adapters")
        started, release = threading.Event(), threading.Event()
        work = _blocking(started, release)
        call = lambda: servicer._serve(Context(), lambda request: request, "job", work)
        return await _cancel_while_running(call, release, started, servicer._lock)

    assert asyncio.run(main()) == ["thread ends", "second holds the lock"]
