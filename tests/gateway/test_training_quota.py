"""The per-tenant training-token quota (issue 25, item 3): once a tenant's training runs of the last 24 h
reached `tenant_training_tokens_per_day`, its submissions are RESOURCE_EXHAUSTED at the gateway and a
running job's next training run fails non-retryably before it reaches the trainer; other tenants, the
admin and runs older than a day are not counted."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from orchestrator.activities.trainer import TrainerActivities
from orchestrator.activity_io import TrainInput
from orchestrator.gateway import create_server
from orchestrator.metadata import Metadata
from syllabus import auth, db
from syllabus.artifacts import ArtifactRef
from syllabus.config import Config
from syllabus.migrate import upgrade
from syllabus_sdk.jobs.v1 import jobs_pb2, jobs_pb2_grpc

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ADMIN = "quota-admin-token"


@pytest.fixture(scope="module")
async def temporal():
    path = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=path, dev_server_log_level="error")
    yield env
    await env.shutdown()


def _run(meta: Metadata, job_id: str, tenant: str, tokens: int, age: timedelta = timedelta(0)) -> None:
    """A finished job of `tenant` whose one training run trained `tokens`, recorded `age` ago."""
    meta.claim_job({"id": job_id, "tenant": tenant, "task_name": "t", "task_yaml": "", "rounds_total": 1, "status": "completed"})
    with meta.sessions().begin() as s:
        s.add(db.TrainingRun(job_id=job_id, round=1, stage="sft", dataset_uri="", adapter_uri="", samples=1, steps=1,
                             mean_loss=1.0, tokens=tokens, created_at=datetime.now(UTC) - age))  # fmt: skip


async def test_a_tenant_past_its_training_tokens_is_refused_at_submission(temporal, tmp_path: Path) -> None:
    from syllabus.tasks import dump_task, load_task

    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({ADMIN: "*", "token-a": "team-a", "token-b": "team-b"}))
    config = Config(home=tmp_path, task_queue=f"tq-{uuid.uuid4()}", tokens_file=str(tokens), tenant_training_tokens_per_day=1000)
    served = await create_server(config, "127.0.0.1:0", client=temporal.client)
    await served.set_serving(True)
    meta = Metadata(config.resolved_database_url())
    channels = {who: auth.channel(f"127.0.0.1:{served.port}", tok) for who, tok in (("admin", ADMIN), ("a", "token-a"), ("b", "token-b"))}
    stubs = {who: jobs_pb2_grpc.JobServiceStub(c) for who, c in channels.items()}
    task = dump_task(load_task(ROOT / "examples/banking77/task.yaml"))
    submit = lambda who, job_id: stubs[who].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id=job_id))
    try:
        _run(meta, "a-old", "team-a", 10**9, age=timedelta(days=2))  # outside the window
        _run(meta, "a-today", "team-a", 600)
        assert (await submit("a", "a-1")).job.job_id == "a-1"  # 600 < 1000
        _run(meta, "a-later", "team-a", 400)  # 1000: the quota is reached
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await submit("a", "a-2")
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'team-a' trained 1000 tokens in the last 24 h, its quota is 1000" in info.value.details()
        assert "leaves the window at" in info.value.details()
        await submit("b", "b-1")  # another tenant
        await submit("admin", "adm-1")  # the admin has no quota
        _run(meta, "adm-big", db.ADMIN_JOBS_TENANT, 10**9)
        await submit("admin", "adm-2")
    finally:
        meta.close()
        for c in channels.values():
            await c.close()
        await served.stop(0)


def test_a_running_jobs_next_training_run_fails_before_reaching_the_trainer(tmp_path: Path) -> None:
    # No trainer listens at this address: a call would fail UNAVAILABLE (retryable), not as below.
    config = Config(home=tmp_path, tenant_training_tokens_per_day=1000, trainer_address="127.0.0.1:9")
    meta = Metadata(config.resolved_database_url())
    upgrade(meta.sessions().kw["bind"])
    _run(meta, "a-today", "team-a", 1500)
    meta.claim_job({"id": "a-running", "tenant": "team-a", "task_name": "t", "task_yaml": "", "rounds_total": 1, "status": "running"})
    ref = ArtifactRef(uri="file:///nowhere", sha256="0" * 64, size_bytes=0)
    inp = TrainInput(job_id="a-running", task_ref=ref, round=2, stage="sft", dataset=ref)
    acts = TrainerActivities(config)
    try:
        with pytest.raises(ApplicationError) as err:
            asyncio.run(ActivityEnvironment().run(acts.train_adapter, inp))
        assert err.value.type == "RESOURCE_EXHAUSTED" and err.value.non_retryable
        assert "'team-a' trained 1500 tokens" in str(err.value)
    finally:
        acts.close()
        meta.close()
