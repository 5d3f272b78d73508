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


async def test_a_job_whose_workflow_is_gone_is_listed_from_its_row(gateway, tmp_path: Path) -> None:
    """Temporal's retention removes a finished workflow; its job row stays. ListJobs (all of the
    tenant's jobs) and GetJob answer from the row instead of failing NOT_FOUND for good."""
    from orchestrator.metadata import Metadata
    from syllabus.tasks import dump_task, load_task

    stub, _, _ = gateway
    task = dump_task(load_task(ROOT / "examples/banking77/task.yaml"))
    live = (await stub.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id=f"live-{uuid.uuid4().hex[:6]}"))).job
    metadata = Metadata(Config(home=tmp_path).resolved_database_url())
    for job_id, status in (("gone-done", "completed"), ("gone-running", "running")):
        assert metadata.claim_job({"id": job_id, "tenant": "admin", "task_name": "old-task", "task_yaml": task,
                                   "task_sha256": "", "rounds_total": 2, "artifacts_uri": "", "status": "running"}) is None  # fmt: skip
        if status != "running":
            metadata.finish_job(job_id, status, 0.25, 0.5)
    jobs = {j.job_id: j for j in (await stub.ListJobs(jobs_pb2.ListJobsRequest())).jobs}
    assert set(jobs) == {live.job_id, "gone-done", "gone-running"}
    assert jobs[live.job_id].status == jobs_pb2.JOB_STATUS_RUNNING
    done = (await stub.GetJob(jobs_pb2.GetJobRequest(job_id="gone-done"))).job
    assert (done.status, done.task_name, done.rounds_total, done.final_accuracy) == (jobs_pb2.JOB_STATUS_COMPLETED, "old-task", 2, 0.5)
    assert done.created_at.seconds > 0 and not done.error
    assert jobs["gone-running"].status == jobs_pb2.JOB_STATUS_UNSPECIFIED and "workflow is gone" in jobs["gone-running"].error


async def test_a_submit_that_cannot_start_its_workflow_gives_the_id_back(tmp_path: Path) -> None:
    """Temporal stops between the gateway's start and a submission: UNAVAILABLE in one line, and no
    job row is left holding the id, so the same submission goes through once Temporal is back."""
    from orchestrator.metadata import Metadata
    from syllabus import db
    from syllabus.tasks import dump_task, load_task

    path = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=path)
    tokens = tmp_path / "gateway-tokens.json"
    tokens.write_text(json.dumps({ADMIN_TOKEN: "*"}))
    config = Config(home=tmp_path, task_queue=f"tq-{uuid.uuid4()}", tokens_file=str(tokens))
    served = await create_server(config, "127.0.0.1:0", client=env.client)
    await served.set_serving(True)
    await env.shutdown()  # Temporal is gone; the gateway still serves
    channel = auth.channel(f"127.0.0.1:{served.port}", ADMIN_TOKEN)
    try:
        task = dump_task(load_task(ROOT / "examples/banking77/task.yaml"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await jobs_pb2_grpc.JobServiceStub(channel).SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id="no-temporal"),
                                                                   timeout=60)  # fmt: skip
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nothing was started, submit it again" in info.value.details() and "\n" not in info.value.details()
        with Metadata(config.resolved_database_url()).sessions()() as s:
            assert s.get(db.Job, "no-temporal") is None
    finally:
        await channel.close()
        await served.stop(0)


async def test_a_lost_database_is_unavailable_without_sql_in_the_answer(temporal, postgres_url: str, tmp_path: Path) -> None:
    """The metadata database goes away under a running gateway (dropped, as a failover would lose
    it): job RPCs answer UNAVAILABLE with a short message, never UNKNOWN with the SQL, its
    parameters or the database's name; the gateway itself keeps serving."""
    from sqlalchemy import create_engine, text

    tokens = tmp_path / "gateway-tokens.json"
    tokens.write_text(json.dumps({ADMIN_TOKEN: "*"}))
    config = Config(home=tmp_path, task_queue=f"tq-{uuid.uuid4()}", tokens_file=str(tokens), database_url=postgres_url)
    served = await create_server(config, "127.0.0.1:0", client=temporal.client)
    await served.set_serving(True)
    channel = auth.channel(f"127.0.0.1:{served.port}", ADMIN_TOKEN)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    try:
        assert (await stub.ListJobs(jobs_pb2.ListJobsRequest())).jobs == []
        name = postgres_url.rsplit("/", 1)[1]
        admin = create_engine(postgres_url.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        for call in (stub.ListJobs(jobs_pb2.ListJobsRequest()), stub.GetJob(jobs_pb2.GetJobRequest(job_id="any-job"))):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            details = info.value.details()
            assert details == "the metadata database is unavailable; retry"
            assert name not in details and "SELECT" not in details.upper()
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
        await served.stop(0)


async def test_a_task_naming_a_model_outside_the_allowlist_is_refused_at_submission(temporal, tmp_path: Path) -> None:
    from syllabus.tasks import dump_task, load_task

    tokens = tmp_path / "gateway-tokens.json"
    tokens.write_text(json.dumps({ADMIN_TOKEN: "*"}))
    config = Config(home=tmp_path, task_queue=f"tq-{uuid.uuid4()}", tokens_file=str(tokens),
                    allowed_models='["bundled:*", "/models/*"]')  # as the env var carries it  # fmt: skip
    served = await create_server(config, "127.0.0.1:0", client=temporal.client)
    await served.set_serving(True)
    channel = auth.channel(f"127.0.0.1:{served.port}", ADMIN_TOKEN)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    task = load_task(ROOT / "examples/banking77/task.yaml")
    before = (await temporal.client.count_workflows()).count
    try:
        for field, base in (("student", "/models/../etc/ssl"), ("teacher", str(ROOT))):
            bad = task.model_copy(update={field: getattr(task, field).model_copy(update={"model": base})})
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=dump_task(bad), job_id=f"deny-{field}"))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert info.value.details().startswith(f"{field}.model: ") and "allowed_models" in info.value.details()
        assert (await temporal.client.count_workflows()).count == before
        assert (await stub.ListJobs(jobs_pb2.ListJobsRequest())).jobs == []  # no row claimed either
        ok = (await stub.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=dump_task(task), job_id=f"allow-{uuid.uuid4().hex[:6]}"))).job
        assert ok.status == jobs_pb2.JOB_STATUS_RUNNING  # bundled: models pass
    finally:
        await channel.close()
        await served.stop(0)


async def test_a_tenant_past_its_running_jobs_and_full_finetuning_are_refused(temporal, tmp_path: Path) -> None:
    """max_running_jobs: 1 for tenants: a second running job of the same tenant is RESOURCE_EXHAUSTED
    (its resubmission of the first is not, nor is admin, nor another tenant); a recipe stage with
    lora: null is PERMISSION_DENIED unless the operator allows full fine-tuning."""
    from syllabus.recipe import Recipe
    from syllabus.tasks import dump_task, load_task

    tokens = tmp_path / "gateway-tokens.json"
    tokens.write_text(json.dumps({ADMIN_TOKEN: "*", "token-a": "team-a", "token-b": "team-b"}))
    config = Config(home=tmp_path, task_queue=f"tq-{uuid.uuid4()}", tokens_file=str(tokens), max_running_jobs=1)
    served = await create_server(config, "127.0.0.1:0", client=temporal.client)
    await served.set_serving(True)
    channels = {who: auth.channel(f"127.0.0.1:{served.port}", token) for who, token in
                (("admin", ADMIN_TOKEN), ("a", "token-a"), ("b", "token-b"))}  # fmt: skip
    stubs = {who: jobs_pb2_grpc.JobServiceStub(c) for who, c in channels.items()}
    task = dump_task(load_task(ROOT / "examples/banking77/task.yaml"))
    tag = uuid.uuid4().hex[:6]
    try:
        first = jobs_pb2.SubmitJobRequest(task_yaml=task, job_id=f"a1-{tag}")
        assert (await stubs["a"].SubmitJob(first)).job.status == jobs_pb2.JOB_STATUS_RUNNING  # no worker: it stays running
        assert (await stubs["a"].SubmitJob(first)).job.job_id == f"a1-{tag}"  # the same job again: not a second one
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs["a"].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id=f"a2-{tag}"))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'team-a' has 1 running jobs" in info.value.details() and "max_running_jobs" in info.value.details()
        await stubs["b"].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id=f"b1-{tag}"))  # another tenant's own
        await stubs["admin"].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id=f"adm1-{tag}"))
        await stubs["admin"].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=task, job_id=f"adm2-{tag}"))

        base = load_task(ROOT / "examples/banking77/task.yaml")
        recipe = Recipe.model_validate({"stages": [{"objective": "sft", "lora": None}]})
        full = dump_task(base.model_copy(update={"train": base.train.model_copy(update={"recipe": recipe})}))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs["admin"].SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=full, job_id=f"full-{tag}"))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details().startswith("train.recipe.stages[0].lora: full fine-tuning is off on this server")
    finally:
        for c in channels.values():
            await c.close()
        await served.stop(0)
