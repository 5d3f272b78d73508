"""The SDK's typed service clients against real servers on port 0: the error mapping of every RPC,
the bearer token, and `TrainerClient.train_to_completion` (success, re-attach, cancel both ways)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest

from syllabus.config import Config
from syllabus.pb import ref_to_pb
from syllabus.records import dumps_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.services import (
    ServiceError,
    StudentClient,
    TeacherClient,
    TrainerClient,
    TrainingCancelled,
)
from syllabus_sdk.student.v1 import student_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2
from syllabus_sdk.trainer.v1 import trainer_pb2

pytestmark = pytest.mark.integration

S = trainer_pb2.TrainingState
RECORDS = [
    {"id": str(i), "prompt": f"Classify: message number {i} about my card", "response": label}
    for i, label in enumerate(["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"] * 2)
]


def _config(tmp_path: Path, service_token: str) -> Config:
    return Config(home=tmp_path / "home", service_token=service_token, artifact_url=(tmp_path / "artifacts").as_uri())


@pytest.fixture
async def trainer(tmp_path: Path, service_token: str):
    """(address, jobs) of a started TrainerService."""
    from trainer_svc.server import create_server, jobs_for

    config = _config(tmp_path, service_token)
    jobs = jobs_for(config)
    served = await create_server(config, jobs=jobs)
    await served.set_serving(True)
    yield f"127.0.0.1:{served.port}", jobs
    await served.stop(0)
    await jobs.close()


def _request(tiny_model_dir: Path, jobs, epochs: int = 2) -> trainer_pb2.StartTrainingRequest:
    dataset = jobs.store.put_bytes(f"data/{uuid.uuid4().hex[:8]}.jsonl", dumps_jsonl(RECORDS))
    key = f"jobs/t/adapters/{uuid.uuid4().hex[:8]}.tar"
    return trainer_pb2.StartTrainingRequest(
        job_key=key,
        model=common_pb2.ModelRef(base=str(tiny_model_dir)),
        dataset=ref_to_pb(dataset),
        lora=trainer_pb2.LoraSpec(rank=4, alpha=8, target_modules=["q_proj", "v_proj"]),
        training=trainer_pb2.TrainingSpec(epochs=epochs, learning_rate=1e-2, batch_size=4, seed=1),
        output_key=key,
    )


async def test_train_to_completion_follows_the_run_and_reattaches(trainer, tiny_model_dir, service_token) -> None:
    address, jobs = trainer
    req = _request(tiny_model_dir, jobs)
    events, started = [], []
    async with TrainerClient(address, token=service_token) as client:
        final = await client.train_to_completion(req, on_event=events.append, on_started=started.append)
        assert final.state == S.TRAINING_STATE_SUCCEEDED and events[-1] == final
        assert len(started) == 1 and started[0]
        assert [e.step for e in events if e.state == S.TRAINING_STATE_RUNNING] == [1, 2, 3, 4]
        published = jobs.store.stat(req.output_key)
        assert published is not None and final.adapter.sha256 == published.sha256

        # The same job_key again: the trainer answers with the finished run, no second training.
        again = await client.train_to_completion(req)
        assert again.state == S.TRAINING_STATE_SUCCEEDED and again.adapter.sha256 == published.sha256


async def test_cancelling_the_awaiting_task_cancels_the_training_job(trainer, tiny_model_dir, service_token) -> None:
    address, jobs = trainer
    req = _request(tiny_model_dir, jobs, epochs=200)
    running = asyncio.Event()
    started: list[str] = []

    def on_event(event: trainer_pb2.WatchTrainingResponse) -> None:
        if event.state == S.TRAINING_STATE_RUNNING:
            running.set()

    async with TrainerClient(address, token=service_token) as client:
        task = asyncio.create_task(client.train_to_completion(req, on_event=on_event, on_started=started.append))
        await asyncio.wait_for(running.wait(), 120)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        watch = client.watch_training(trainer_pb2.WatchTrainingRequest(training_id=started[0]))
        states = [e.state async for e in watch]
    assert states[-1] == S.TRAINING_STATE_CANCELLED
    assert jobs.store.stat(req.output_key) is None  # a cancelled run publishes nothing


async def test_a_cancelled_training_job_raises_training_cancelled(trainer, tiny_model_dir, service_token) -> None:
    address, jobs = trainer
    req = _request(tiny_model_dir, jobs, epochs=200)
    started: asyncio.Queue[str] = asyncio.Queue()
    async with TrainerClient(address, token=service_token) as client:
        task = asyncio.create_task(client.train_to_completion(req, on_started=started.put_nowait))
        training_id = await asyncio.wait_for(started.get(), 60)
        await client.cancel_training(trainer_pb2.CancelTrainingRequest(training_id=training_id))
        with pytest.raises(TrainingCancelled) as err:
            await asyncio.wait_for(task, 120)
    assert err.value.training_id == training_id


async def test_trainer_errors_map_to_service_error(trainer, service_token) -> None:
    address, _ = trainer
    async with TrainerClient(address, token=service_token) as client:
        with pytest.raises(ServiceError) as err:
            await client.start_training(trainer_pb2.StartTrainingRequest())
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.method == "TrainerService.StartTraining"
        with pytest.raises(ServiceError) as err:
            await client.train_to_completion(trainer_pb2.StartTrainingRequest())
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ServiceError) as err:
            _ = [e async for e in client.watch_training(trainer_pb2.WatchTrainingRequest(training_id="nope"))]
        assert err.value.code == grpc.StatusCode.NOT_FOUND and err.value.method == "TrainerService.WatchTraining"
    async with TrainerClient(address, token="not-the-service-token") as client:
        with pytest.raises(ServiceError) as err:
            await client.cancel_training(trainer_pb2.CancelTrainingRequest(training_id="x"))
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_teacher_and_student_clients_map_every_rpc_error(tmp_path: Path, service_token: str) -> None:
    from student_svc.server import create_server as create_student
    from teacher_svc.server import create_server as create_teacher

    config = _config(tmp_path, service_token)
    teacher, student = await create_teacher(config), await create_student(config)
    for served in (teacher, student):
        await served.set_serving(True)
    try:
        async with TeacherClient(f"127.0.0.1:{teacher.port}", token=service_token) as t:
            for name, call, req in [
                ("Generate", t.generate, teacher_pb2.GenerateRequest()),
                ("Critique", t.critique, teacher_pb2.CritiqueRequest()),
                ("AnalyzeErrors", t.analyze_errors, teacher_pb2.AnalyzeErrorsRequest()),
                ("Tailor", t.tailor, teacher_pb2.TailorRequest()),
            ]:
                with pytest.raises(ServiceError) as err:
                    await call(req)
                assert (err.value.code, err.value.method) == (grpc.StatusCode.INVALID_ARGUMENT, f"TeacherService.{name}")
        async with StudentClient(f"127.0.0.1:{student.port}", token=service_token) as s:
            for name, call, req in [
                ("Score", s.score, student_pb2.ScoreRequest()),
                ("Evaluate", s.evaluate, student_pb2.EvaluateRequest()),
                ("Select", s.select, student_pb2.SelectRequest()),
            ]:
                with pytest.raises(ServiceError) as err:
                    await call(req)
                assert (err.value.code, err.value.method) == (grpc.StatusCode.INVALID_ARGUMENT, f"StudentService.{name}")
            with pytest.raises(ServiceError) as err:
                _ = [m async for m in s.score_stream(student_pb2.ScoreRequest())]
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await teacher.stop(0)
        await student.stop(0)
