"""JobService against a real Temporal dev server over a real gRPC socket (no worker needed: these
tests cover validation, lookup and server wiring; tests/e2e runs whole jobs)."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from temporalio.testing import WorkflowEnvironment

from orchestrator.gateway import create_server
from syllabus import auth
from syllabus.config import Config
from syllabus_sdk.jobs.v1 import jobs_pb2, jobs_pb2_grpc

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def temporal():
    path = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=path)
    yield env
    await env.shutdown()


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
async def gateway(temporal: WorkflowEnvironment, tmp_path: Path):
    tokens = tmp_path / "gateway-tokens.json"
    tokens.write_text(json.dumps({ADMIN_TOKEN: "*"}))
    config = Config(home=tmp_path, task_queue=f"tq-{uuid.uuid4()}", tokens_file=str(tokens))
    served = await create_server(config, "127.0.0.1:0", client=temporal.client)
    await served.set_serving(True)
    channel = auth.channel(f"127.0.0.1:{served.port}", ADMIN_TOKEN)
    yield jobs_pb2_grpc.JobServiceStub(channel), channel, temporal.client
    await channel.close()
    await served.stop(0)


async def test_malformed_task_is_invalid_argument_and_starts_nothing(gateway) -> None:
    stub, _, client = gateway
    before = (await client.count_workflows()).count
    from syllabus.tasks import dump_task, load_task

    bad = dump_task(load_task(ROOT / "examples/banking77/task.yaml")) + "unknown_key: 1\n"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown_key: unknown key" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml="name: x\nkind: classification\n"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await client.count_workflows()).count == before
    assert (await stub.ListJobs(jobs_pb2.ListJobsRequest())).jobs == []


async def test_bad_job_ids(gateway) -> None:
    stub, _, _ = gateway
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetJob(jobs_pb2.GetJobRequest(job_id="does-not-exist"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetJob(jobs_pb2.GetJobRequest(job_id=""))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    from syllabus.tasks import dump_task, load_task

    task = dump_task(load_task(ROOT / "examples/banking77/task.yaml"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id="../etc"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("job_id:")


async def test_submit_is_idempotent_on_job_id(gateway) -> None:
    from syllabus.tasks import dump_task, load_task

    stub, _, client = gateway
    task = dump_task(load_task(ROOT / "examples/banking77/task.yaml"))
    job_id = f"idem-{uuid.uuid4().hex[:6]}"
    first = (await stub.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id=job_id))).job
    second = (await stub.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id=job_id))).job
    assert first.job_id == second.job_id == job_id
    assert first.status == jobs_pb2.JOB_STATUS_RUNNING and first.task_name == "banking77-mini"
    assert len([w async for w in client.list_workflows(f"WorkflowId='{job_id}'")]) == 1
    assert [j.job_id for j in (await stub.ListJobs(jobs_pb2.ListJobsRequest())).jobs] == [job_id]
    cancelled = (await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id))).job
    assert cancelled.job_id == job_id  # no worker runs here, so the cancel request just records


async def test_health_and_reflection(gateway) -> None:
    _, channel, _ = gateway
    health = health_pb2_grpc.HealthStub(channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service="syllabus.jobs.v1.JobService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    names = []
    async for r in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
        names = [s.name for s in r.list_services_response.service]
    assert "syllabus.jobs.v1.JobService" in names
