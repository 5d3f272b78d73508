"""Job events and request validation, without a model."""

from __future__ import annotations

import asyncio

import pytest

from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.trainer.v1 import trainer_pb2
from trainer_svc.jobs import DEFAULT_MAX_SEQ_LEN, InvalidRequest, Job, plan_from_request

pytestmark = pytest.mark.unit

S = trainer_pb2.TrainingState


def running(step: int) -> trainer_pb2.WatchTrainingResponse:
    return trainer_pb2.WatchTrainingResponse(state=S.TRAINING_STATE_RUNNING, step=step, total_steps=9)


async def test_a_late_watcher_gets_the_latest_state_then_what_follows() -> None:
    job = Job("k")
    job.publish(trainer_pb2.WatchTrainingResponse(state=S.TRAINING_STATE_PENDING))
    job.publish(running(1))
    job.publish(running(2))
    late = job.follow()
    assert (await anext(late)).step == 2
    early_quitter = asyncio.ensure_future(anext(job.follow(), None))
    await asyncio.sleep(0)
    nxt = asyncio.ensure_future(anext(late))
    await asyncio.sleep(0)
    early_quitter.cancel()  # one watcher leaving must not disturb the others
    job.publish(running(3))
    assert (await nxt).step == 3
    job.publish(trainer_pb2.WatchTrainingResponse(state=S.TRAINING_STATE_SUCCEEDED))
    job.publish(running(4))  # ignored: nothing follows the end
    assert [e.state async for e in late] == [S.TRAINING_STATE_SUCCEEDED]
    assert [e.state async for e in job.follow()] == [S.TRAINING_STATE_SUCCEEDED]


def valid_request(**training: object) -> trainer_pb2.StartTrainingRequest:
    return trainer_pb2.StartTrainingRequest(
        job_key="k",
        model=common_pb2.ModelRef(base="bundled:smollm2-135m-instruct"),
        dataset=common_pb2.ArtifactRef(uri="file:///a/b.jsonl", sha256="00"),
        lora=trainer_pb2.LoraSpec(rank=8, alpha=16, target_modules=["q_proj"]),
        training=trainer_pb2.TrainingSpec(epochs=1, learning_rate=1e-3, batch_size=8, **training),
        output_key="jobs/j/round-1/train-abc.tar",
    )


def test_unset_fields_get_their_documented_defaults() -> None:
    plan = plan_from_request(valid_request())
    assert plan.config.max_seq_len == DEFAULT_MAX_SEQ_LEN
    assert plan.config.warmup_ratio == 0 and plan.config.lora_dropout == 0
    assert plan.init_adapter is None
    assert plan_from_request(valid_request(max_seq_len=64)).config.max_seq_len == 64


@pytest.mark.parametrize(
    ("training", "field"),
    [({"warmup_ratio": 1.0}, "training.warmup_ratio"), ({"max_seq_len": -1}, "training.max_seq_len")],
)
def test_out_of_range_training_fields_are_rejected(training: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_from_request(valid_request(**training))
    assert err.value.field == field
