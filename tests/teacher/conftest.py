"""Teacher test fixtures: the Banking77 task of the shipped example, and a tiny-model backend."""

from __future__ import annotations

import contextlib
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
def serve_teacher(tmp_path: Path, service_token, service_channel):
    """`async with serve_teacher(**config) as (stub, store)`: a TeacherService from `create_server` on
    port 0 (a Config with `config` added) over a real grpc.aio channel, and its artifact store."""
    from syllabus.artifacts import LocalArtifactStore
    from syllabus.config import Config
    from syllabus_sdk.teacher.v1 import teacher_pb2_grpc
    from teacher_svc.server import create_server

    @contextlib.asynccontextmanager
    async def serve(**config):
        served = await create_server(Config(home=tmp_path, service_token=service_token, **config))
        await served.set_serving(True)
        try:
            async with service_channel(served.port) as channel:
                yield teacher_pb2_grpc.TeacherServiceStub(channel), LocalArtifactStore(tmp_path / "artifacts")
        finally:
            await served.stop(0)

    return serve


@pytest.fixture
async def teacher(serve_teacher):
    """(stub, store): `serve_teacher` with the default config."""
    async with serve_teacher() as served:
        yield served


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    from teacher_svc.backend import TransformersBackend

    return TransformersBackend.load(str(tiny_model_dir))
