"""Teacher test fixtures: the Banking77 task of the shipped example, and a tiny-model backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from syllabus.records import loads_jsonl

BANKING77 = Path(__file__).resolve().parents[2] / "examples" / "banking77"


@dataclass(frozen=True)
class Task:
    instructions: str
    labels: list[str]
    seeds: list[dict]


@pytest.fixture(scope="session")
def banking77() -> Task:
    return Task(
        instructions="Classify the bank customer's message into one of the intents. Answer with the intent only.",
        labels=[
            "card_arrival",
            "lost_or_stolen_card",
            "exchange_rate",
            "top_up_failed",
            "passcode_forgotten",
        ],
        seeds=loads_jsonl((BANKING77 / "data" / "seeds.jsonl").read_bytes()),
    )


@pytest.fixture
async def teacher(tmp_path: Path, service_token, service_channel):
    """(stub, store): a TeacherService from `create_server` on port 0 over a real grpc.aio channel, and its artifact store."""
    from syllabus.artifacts import LocalArtifactStore
    from syllabus.config import Config
    from syllabus_sdk.teacher.v1 import teacher_pb2_grpc
    from teacher_svc.server import create_server

    config = Config(home=tmp_path, service_token=service_token)
    served = await create_server(config)
    await served.set_serving(True)
    store = LocalArtifactStore(tmp_path / "artifacts")
    async with service_channel(served.port) as channel:
        yield teacher_pb2_grpc.TeacherServiceStub(channel), store
    await served.stop(0)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    from teacher_svc.backend import TransformersBackend

    return TransformersBackend.load(str(tiny_model_dir))
