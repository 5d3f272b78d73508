"""Seed expansion with the real bundled teacher (SmolLM2-135M-Instruct), end to end over gRPC, and
the `python -m teacher_svc` entry point."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from syllabus.artifacts import LocalArtifactStore
from syllabus.config import Config
from syllabus.models import DEFAULT_MODEL
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus.serving import wait_healthy
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from teacher_svc.critique import judge
from teacher_svc.generation import parse_seeds
from teacher_svc.server import create_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def test_bundled_teacher_expands_banking77_seeds(tmp_path: Path, banking77, service_token, service_channel) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    labels = ["card_arrival", "lost_or_stolen_card"]
    seeds_ref = store.put_bytes("inputs/seeds.jsonl", dumps_jsonl(banking77.seeds))
    served = await create_server(Config(home=tmp_path, service_token=service_token))
    await served.set_serving(True)
    try:
        async with service_channel(served.port) as channel:
            resp = await teacher_pb2_grpc.TeacherServiceStub(channel).Generate(
                teacher_pb2.GenerateRequest(
                    model=common_pb2.ModelRef(base=DEFAULT_MODEL),
                    kind=common_pb2.TASK_KIND_CLASSIFICATION,
                    instructions=banking77.instructions,
                    labels=labels,
                    seeds=ref_to_pb(seeds_ref),
                    per_label=2,
                    sampling=common_pb2.SamplingParams(
                        temperature=0.9, top_p=0.95, max_new_tokens=24, n=2, seed=0
                    ),
                    output_key="jobs/t/bundled/generate.jsonl",
                )
            )
    finally:
        await served.stop(0)
    assert resp.generated + resp.duplicates_removed + resp.unparsable == 8
    assert resp.generated >= 2, resp
    records = loads_jsonl(store.get_bytes(ref_from_pb(resp.examples)))
    assert {r["label"] for r in records} <= set(labels)
    assert records[0]["provenance"]["model"] == DEFAULT_MODEL
    assert len(records[0]["provenance"]["revision"]) == 12
    # Nothing Generate wrote copies a seed or another example: the judge keeps all of it.
    verdicts = judge(records, labels, parse_seeds(banking77.seeds))
    assert [v.reason for v in verdicts] == ["ok"] * len(records)


async def test_main_serves_after_preload(tmp_path: Path, tiny_model_dir: Path, service_token) -> None:
    env = {**os.environ, "SYLLABUS_HOME": str(tmp_path), "SYLLABUS_SERVICE_TOKEN": service_token}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "teacher_svc",
        "--address",
        "127.0.0.1:0",
        "--preload",
        str(tiny_model_dir),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
        port = re.search(r"port=(\d+)", line)
        assert line.startswith("SERVING syllabus.teacher.v1.TeacherService") and port, line
        await wait_healthy(
            f"127.0.0.1:{port.group(1)}", timeout=10, service="syllabus.teacher.v1.TeacherService"
        )
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
