"""TrainerService over a real gRPC server on port 0 with the tiny model."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from syllabus.artifacts import LocalArtifactStore
from syllabus.config import Config
from syllabus.pb import ref_to_pb
from syllabus.records import dumps_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from trainer_svc.server import create_server, jobs_for

pytestmark = pytest.mark.integration

S = trainer_pb2.TrainingState
RECORDS = [
    {"id": str(i), "prompt": f"Classify: message number {i} about my card", "response": label}
    for i, label in enumerate(["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"] * 2)
]


@pytest.fixture
async def service(tmp_path: Path, service_token, service_channel):
    """(stub, jobs) of a started TrainerService whose artifact store is under tmp_path."""
    config = Config(home=tmp_path / "home", service_token=service_token, artifact_url=(tmp_path / "artifacts").as_uri())
    jobs = jobs_for(config)
    served = await create_server(config, jobs=jobs)
    await served.set_serving(True)
    async with service_channel(served.port) as channel:
        yield trainer_pb2_grpc.TrainerServiceStub(channel), jobs
    await served.stop(0)
    await jobs.close()


def request(tiny_model_dir: Path, store: LocalArtifactStore, **overrides) -> trainer_pb2.StartTrainingRequest:
    dataset = store.put_bytes("data/train.jsonl", dumps_jsonl(RECORDS))
    req = trainer_pb2.StartTrainingRequest(
        job_key=f"job-{uuid.uuid4().hex[:8]}",
        model=common_pb2.ModelRef(base=str(tiny_model_dir)),
        dataset=ref_to_pb(dataset),
        lora=trainer_pb2.LoraSpec(rank=4, alpha=8, target_modules=["q_proj", "v_proj"]),
        training=trainer_pb2.TrainingSpec(
            epochs=2, learning_rate=1e-2, batch_size=4, warmup_ratio=0.25, seed=1
        ),
        output_key=f"jobs/t/adapters/{uuid.uuid4().hex[:8]}.tar",
    )
    for name, value in overrides.items():
        if isinstance(value, dict):  # a sub-message: replace the named fields
            sub = getattr(req, name)
            for field in value:
                sub.ClearField(field)
            json_format.ParseDict(value, sub)
        else:
            setattr(req, name, value)
    return req


async def watch(stub, training_id: str) -> list[trainer_pb2.WatchTrainingResponse]:
    return [
        e
        async for e in stub.WatchTraining(
            trainer_pb2.WatchTrainingRequest(training_id=training_id), timeout=120
        )
    ]


async def run_and_watch_all(stub, jobs, req) -> tuple[trainer_pb2.StartTrainingResponse, list]:
    """Start a job and watch it from its first event: a watcher who joins late starts at the latest
    state, so the queue is held until the watch has its first event."""
    async with jobs._run_lock:
        started = await stub.StartTraining(req)
        call = stub.WatchTraining(
            trainer_pb2.WatchTrainingRequest(training_id=started.training_id), timeout=120
        )
        events = [await call.read()]
    while (event := await call.read()) != grpc.aio.EOF:
        events.append(event)
    return started, events


async def test_train_and_watch(service, tiny_model_dir: Path) -> None:
    stub, jobs = service
    store = jobs.store
    req = request(tiny_model_dir, store)
    started, events = await run_and_watch_all(stub, jobs, req)
    assert started.training_id and not started.existing

    running = [e for e in events if e.state == S.TRAINING_STATE_RUNNING]
    assert [e.step for e in running] == list(range(1, 5))  # 2 epochs x 2 batches of 4
    assert {e.total_steps for e in running} == {4}
    assert all(e.loss > 0 for e in running)
    assert running[0].learning_rate == 0 and all(e.learning_rate > 0 for e in running[1:])  # warm-up from 0
    final = events[-1]
    assert final.state == S.TRAINING_STATE_SUCCEEDED, final.message
    assert [e.state for e in events] == [S.TRAINING_STATE_PENDING] + [S.TRAINING_STATE_RUNNING] * 4 + [
        final.state
    ]
    assert final.mean_loss == pytest.approx(sum(e.loss for e in running) / 4, rel=1e-5)
    published = store.stat(req.output_key)
    assert published is not None and final.adapter.uri == published.uri
    assert (
        final.adapter.sha256
        == published.sha256
        == hashlib.sha256(Path(published.uri.removeprefix("file://")).read_bytes()).hexdigest()
    )
    assert final.adapter.size_bytes == published.size_bytes

    # A watcher who comes after the end gets the latest state, and the stream ends.
    assert await watch(stub, started.training_id) == [final]


async def test_same_job_key_returns_the_same_job(service, tiny_model_dir: Path) -> None:
    stub, jobs = service
    store = jobs.store
    req = request(tiny_model_dir, store)
    first = await stub.StartTraining(req)
    second = await stub.StartTraining(req)
    assert second.training_id == first.training_id
    assert second.existing and not first.existing
    events = await watch(stub, first.training_id)
    assert events[-1].state == S.TRAINING_STATE_SUCCEEDED
    assert sum(e.step == 1 for e in events) <= 1  # trained once
    third = await stub.StartTraining(req)
    assert (third.training_id, third.existing) == (first.training_id, True)


async def test_existing_output_succeeds_without_training(service, tiny_model_dir: Path) -> None:
    stub, jobs = service
    store = jobs.store
    req = request(tiny_model_dir, store)
    # What a finished run leaves: its metrics first, then the adapter.
    store.put_bytes(req.output_key + ".metrics.json", json.dumps({"steps": 4, "mean_loss": 2.5, "losses": [3, 2.5, 2.5, 2]}).encode())
    earlier = store.put_bytes(req.output_key, b"an adapter from an earlier attempt")
    started = await stub.StartTraining(req)
    events = await watch(stub, started.training_id)
    assert [e.state for e in events] == [S.TRAINING_STATE_SUCCEEDED]
    assert events[0].adapter == ref_to_pb(earlier)
    # the true record of that run, not a made-up "0 steps, loss 0"
    assert (events[0].step, events[0].mean_loss, list(events[0].losses)) == (4, 2.5, [3, 2.5, 2.5, 2])


async def test_failed_job_reports_and_can_be_retried(service, tiny_model_dir: Path) -> None:
    stub, jobs = service
    store = jobs.store
    req = request(tiny_model_dir, store, lora={"target_modules": ["no_such_proj"]})
    started = await stub.StartTraining(req)
    events = await watch(stub, started.training_id)
    assert events[-1].state == S.TRAINING_STATE_FAILED
    assert "no_such_proj" in events[-1].message
    retried = await stub.StartTraining(req)
    assert retried.training_id != started.training_id and not retried.existing
    assert (await watch(stub, retried.training_id))[-1].state == S.TRAINING_STATE_FAILED


async def test_continue_from_an_adapter(service, tiny_model_dir: Path) -> None:
    stub, jobs = service
    store = jobs.store
    first = request(tiny_model_dir, store)
    _, first_events = await run_and_watch_all(stub, jobs, first)
    done = first_events[-1]
    assert done.state == S.TRAINING_STATE_SUCCEEDED
    second = request(tiny_model_dir, store, training={"epochs": 1})
    second.model.adapter.CopyFrom(done.adapter)
    _, events = await run_and_watch_all(stub, jobs, second)
    assert events[-1].state == S.TRAINING_STATE_SUCCEEDED, events[-1].message
    assert events[-1].adapter.sha256 != done.adapter.sha256
    # Same seed, so step 1 of both jobs sees the same batch: the first job saw it with a fresh
    # (zero) update, the second with the trained adapter, so its loss starts lower.
    step1 = [next(e.loss for e in evs if e.step == 1) for evs in (first_events, events)]
    assert step1[1] < step1[0] - 0.05


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"job_key": ""}, "job_key"),
        ({"lora": {"rank": 0}}, "lora.rank"),
        ({"lora": {"target_modules": []}}, "lora.target_modules"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"learning_rate": -1e-4}}, "training.learning_rate"),
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"output_key": "../escape.tar"}, "output_key"),
        ({"output_key": ""}, "output_key"),
        ({"model": {"base": ""}}, "model.base"),
        ({"model": {"adapter": {"uri": "file:///a.tar", "sha256": "../../escape"}}}, "model.adapter.sha256"),
    ],
)
async def test_malformed_requests_name_the_field(
    service, tiny_model_dir: Path, overrides: dict, field: str
) -> None:
    stub, jobs = service
    store = jobs.store
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartTraining(request(tiny_model_dir, store, **overrides))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


async def test_input_problems_map_to_status_codes(service, tiny_model_dir: Path) -> None:
    stub, jobs = service
    store = jobs.store

    async def code_of(req) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartTraining(req)
        return err.value.code(), err.value.details()

    no_dataset = request(tiny_model_dir, store)
    no_dataset.ClearField("dataset")
    assert (await code_of(no_dataset))[0] == grpc.StatusCode.INVALID_ARGUMENT

    bad_records = request(tiny_model_dir, store)
    bad_records.dataset.CopyFrom(ref_to_pb(store.put_bytes("data/bad.jsonl", b'{"prompt": "p"}\n')))
    code, details = await code_of(bad_records)
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("dataset:") and "response" in details
    )

    missing = request(tiny_model_dir, store)
    missing.dataset.uri = store.uri_for("data/nothing-here.jsonl")
    assert (await code_of(missing))[0] == grpc.StatusCode.NOT_FOUND

    corrupt = request(tiny_model_dir, store)
    corrupt.dataset.sha256 = "0" * 64
    assert (await code_of(corrupt))[0] == grpc.StatusCode.DATA_LOSS

    missing_adapter = request(tiny_model_dir, store)
    missing_adapter.model.adapter.CopyFrom(
        common_pb2.ArtifactRef(uri=store.uri_for("adapters/none.tar"), sha256="ab" * 32)
    )
    assert (await code_of(missing_adapter))[0] == grpc.StatusCode.NOT_FOUND

    unknown_model = request(tiny_model_dir, store, model={"base": "bundled:no-such-model"})
    code, details = await code_of(unknown_model)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no-such-model" in details

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await watch(stub, "no-such-training")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_cancel_that_arrives_during_start_training_cancels_the_job_it_started(
    tiny_model_dir: Path, tmp_path: Path, service_token: str, service_channel, monkeypatch
) -> None:
    """The activity is cancelled while StartTraining is in flight, after the trainer has started the job
    but before its answer arrives (a slow network): the client waits for the job's id and cancels it,
    so the trainer neither trains for nobody nor publishes an adapter. Before, the call was simply
    dropped and the job ran to the end, since its id was never known."""
    import asyncio

    from syllabus_sdk.services import TrainerClient

    config = Config(home=tmp_path / "home", service_token=service_token, artifact_url=(tmp_path / "artifacts").as_uri())
    jobs = jobs_for(config)
    start = jobs.start

    async def answer_slowly(plan):
        started = await start(plan)
        await asyncio.sleep(1.5)  # the job runs; its StartTraining answer is still on its way
        return started

    monkeypatch.setattr(jobs, "start", answer_slowly)
    served = await create_server(config, jobs=jobs)
    await served.set_serving(True)
    store = LocalArtifactStore(tmp_path / "artifacts")
    req = request(tiny_model_dir, store, training={"epochs": 30, "batch_size": 2})
    try:
        async with service_channel(served.port) as channel:
            task = asyncio.create_task(TrainerClient(channel=channel).train_to_completion(req))
            await asyncio.sleep(0.5)  # StartTraining is in flight
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        job = jobs._by_key[req.job_key]
        for _ in range(300):
            if job.state in (S.TRAINING_STATE_CANCELLED, S.TRAINING_STATE_SUCCEEDED):
                break
            await asyncio.sleep(0.1)
        assert job.state == S.TRAINING_STATE_CANCELLED
        assert store.stat(req.output_key) is None
    finally:
        await served.stop(0)
        await jobs.close()


async def test_a_run_nobody_watches_stops_keeping_its_checkpoint_and_the_retry_resumes_it(
    tmp_path: Path, service_token, service_channel, tiny_model_dir: Path
) -> None:
    """The worker following a run died (its watch ended): after `trainer_orphan_timeout_s` the run stops
    at its next step, publishes nothing and keeps its checkpoint, so a retry that Temporal starts on
    another replica never trains the same key beside it; the retry, here on this replica, resumes."""
    import asyncio

    config = Config(home=tmp_path / "home", service_token=service_token, artifact_url=(tmp_path / "artifacts").as_uri(),
                    trainer_orphan_timeout_s=0.5, trainer_checkpoint_every=2)  # fmt: skip
    jobs = jobs_for(config)
    served = await create_server(config, jobs=jobs)
    await served.set_serving(True)
    try:
        async with service_channel(served.port) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            req = request(tiny_model_dir, jobs.store, training={"epochs": 400, "learning_rate": 1e-3, "batch_size": 4, "seed": 1})
            started = await stub.StartTraining(req)
            call = stub.WatchTraining(trainer_pb2.WatchTrainingRequest(training_id=started.training_id), timeout=120)
            while (event := await call.read()).step < 4:
                assert event.state in (S.TRAINING_STATE_PENDING, S.TRAINING_STATE_RUNNING)
            call.cancel()  # the worker is gone
            job = jobs.get(started.training_id)
            await asyncio.wait_for(asyncio.shield(job.task), 60)
            assert job.abandoned and job.state == S.TRAINING_STATE_FAILED
            assert "nobody watched it" in job.events[-1].message or "stopped at stage" in job.events[-1].message
            total = max(e.total_steps for e in job.events)
            assert max(e.step for e in job.events) < total, "it ran to the end instead of stopping"
            assert jobs.store.stat(req.output_key) is None  # published nothing
            assert jobs.store.stat(req.output_key + ".ckpt") is not None  # the retry's starting point

            again = await stub.StartTraining(req)
            assert not again.existing and again.training_id != started.training_id
            events = await watch(stub, again.training_id)
            assert events[-1].state == S.TRAINING_STATE_SUCCEEDED and events[-1].step == total
            first_step = min(e.step for e in events if e.state == S.TRAINING_STATE_RUNNING)
            assert first_step > 2, f"the retry started over at step {first_step} instead of resuming"
    finally:
        await served.stop(0)
        await jobs.close()
