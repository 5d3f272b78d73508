"""ListJobs by task name and status: the gateway starts each job's workflow with the search attributes
and finds jobs through Temporal's visibility store, scoped to the caller's tenant (no worker: the
workflows stay running). Without the attributes registered, jobs still start and filtering says why not."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import uuid
from pathlib import Path

import grpc
import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from orchestrator import search
from orchestrator.gateway import create_server
from syllabus import auth
from syllabus.config import Config
from syllabus.tasks import dump_task, load_task
from syllabus_sdk.jobs.v1 import jobs_pb2, jobs_pb2_grpc

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TEMPORAL = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
TOKENS = {"admin-token": "*", "a-token": "tenant-a", "b-token": "tenant-b"}


def _task(name: str) -> str:
    task = yaml.safe_load(dump_task(load_task(ROOT / "examples/banking77/task.yaml")))
    return yaml.safe_dump({**task, "name": name})


async def _gateway(env: WorkflowEnvironment, home: Path):
    (home / "tokens.json").write_text(json.dumps(TOKENS))
    config = Config(home=home, task_queue=f"tq-{uuid.uuid4()}", tokens_file=str(home / "tokens.json"))
    served = await create_server(config, "127.0.0.1:0", client=env.client)
    await served.set_serving(True)
    channels = {t: auth.channel(f"127.0.0.1:{served.port}", t) for t in TOKENS}
    return served, {t: jobs_pb2_grpc.JobServiceStub(c) for t, c in channels.items()}, channels


async def _ids(stub, **request) -> list[str]:
    return [j.job_id for j in (await stub.ListJobs(jobs_pb2.ListJobsRequest(**request))).jobs]


async def _eventually(stub, expected: list[str], **request) -> None:
    """Visibility is updated just after a start: wait for it (at most 10 s)."""
    for _ in range(50):
        if await _ids(stub, **request) == expected:
            return
        await asyncio.sleep(0.2)
    assert await _ids(stub, **request) == expected


async def test_jobs_are_listed_by_task_and_status_within_the_tenant(tmp_path: Path) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=TEMPORAL, dev_server_log_level="error", search_attributes=search.KEYS
    )
    served, stubs, channels = await _gateway(env, tmp_path)
    try:
        alpha, beta = f"alpha-{uuid.uuid4().hex[:6]}", f"beta-{uuid.uuid4().hex[:6]}"
        a1 = (await stubs["a-token"].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task(alpha)))).job.job_id
        b1 = (await stubs["b-token"].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task(alpha)))).job.job_id
        b2 = (await stubs["b-token"].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task(beta)))).job.job_id

        attrs = (await env.client.get_workflow_handle(a1).describe()).typed_search_attributes
        assert [attrs.get(k) for k in search.KEYS] == [alpha, "tenant-a", 0, "running"]
        await _eventually(stubs["a-token"], [a1], task_name=alpha)
        await _eventually(stubs["b-token"], [b1], task_name=alpha)
        await _eventually(stubs["admin-token"], [b1, a1], task_name=alpha)  # newest first
        await _eventually(stubs["b-token"], [b2, b1], status=jobs_pb2.JOB_STATUS_RUNNING)
        await _eventually(stubs["b-token"], [b2], task_name=beta, status=jobs_pb2.JOB_STATUS_RUNNING)
        assert await _ids(stubs["b-token"], status=jobs_pb2.JOB_STATUS_COMPLETED) == []
        assert await _ids(stubs["a-token"], task_name=beta) == []  # another tenant's task is as absent as none

        # Terminated: Temporal's own status (the workflow cannot mark itself); the attribute still says running.
        await env.client.get_workflow_handle(b2).terminate("test")
        await _eventually(stubs["b-token"], [b2], status=jobs_pb2.JOB_STATUS_TERMINATED)
        await _eventually(stubs["b-token"], [b1], status=jobs_pb2.JOB_STATUS_RUNNING)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _ids(stubs["a-token"], task_name="x' OR SyllabusTenant = 'tenant-b")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("task_name:")
    finally:
        for c in channels.values():
            await c.close()
        await served.stop(0)
        await env.shutdown()


async def test_without_the_attributes_jobs_start_and_filters_fail_precondition(tmp_path: Path) -> None:
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=TEMPORAL, dev_server_log_level="error")
    served, stubs, channels = await _gateway(env, tmp_path)
    try:
        job = (await stubs["a-token"].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task("plain")))).job
        assert job.status == jobs_pb2.JOB_STATUS_RUNNING
        assert await _ids(stubs["a-token"]) == [job.job_id]  # the unfiltered list reads SQL
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _ids(stubs["a-token"], task_name="plain")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "temporal operator search-attribute create --namespace default --name SyllabusTask" in info.value.details()
    finally:
        for c in channels.values():
            await c.close()
        await served.stop(0)
        await env.shutdown()
