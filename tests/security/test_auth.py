"""Authentication and tenant isolation on real servers (issue 10's security suite).

(a) every RPC of every service, enumerated from the generated descriptors (a new RPC is covered
    without touching this file), refuses a missing or unknown token and a token of the wrong role;
    health answers without one;
(b) tenant B cannot list, get, watch, cancel, export or see the lineage of tenant A's job, and what B gets
    is word for word what a job that does not exist gets; admin sees every tenant's jobs;
(c) resubmitting a job id: the same task returns the same job, another task (or another tenant) is
    ALREADY_EXISTS and the stored task is unchanged;
(d) the local tokens are created with mode 0600; the CLI and SDK send them.

The gateway needs a Temporal server (a local dev server, as in tests/gateway) but no worker: the
jobs here stay RUNNING, which is all tenancy needs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from syllabus import auth, db
from syllabus.config import Config
from syllabus_sdk.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from syllabus_sdk.student.v1 import student_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2
from syllabus_sdk.trainer.v1 import trainer_pb2

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"admin": "tok-admin", "a": "tok-tenant-a", "b": "tok-tenant-b"}
SERVICES = {
    "teacher": teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"],
    "student": student_pb2.DESCRIPTOR.services_by_name["StudentService"],
    "trainer": trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
    "gateway": jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
}


@pytest.fixture(scope="module")
async def temporal():
    path = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=path, dev_server_log_level="error")
    yield env
    await env.shutdown()


@pytest.fixture(scope="module")
async def servers(temporal: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory, service_token: str):
    """{name: port} of a started teacher, student, trainer and gateway, plus the config they share."""
    from orchestrator.gateway import create_server as create_gateway
    from student_svc.server import create_server as create_student
    from teacher_svc.server import create_server as create_teacher
    from trainer_svc.server import create_server as create_trainer
    from trainer_svc.server import jobs_for

    home = tmp_path_factory.mktemp("security-home")
    tokens_file = home / "gateway-tokens.json"
    tokens_file.write_text(json.dumps({TOKENS["admin"]: "*", TOKENS["a"]: "tenant-a", TOKENS["b"]: "tenant-b"}))
    config = Config(
        home=home, service_token=service_token, tokens_file=str(tokens_file), task_queue=f"tq-{uuid.uuid4()}",
        artifact_url=(home / "artifacts").as_uri(),
    )
    jobs = jobs_for(config)
    served = {
        "teacher": await create_teacher(config),
        "student": await create_student(config),
        "trainer": await create_trainer(config, jobs=jobs),
        "gateway": await create_gateway(config, client=temporal.client),
    }
    for s in served.values():
        await s.set_serving(True)
    yield {name: s.port for name, s in served.items()}, config
    for s in served.values():
        await s.stop(0)
    await jobs.close()


def _methods():
    for name, service in SERVICES.items():
        for method in service.methods:
            yield pytest.param(name, method, id=f"{name}.{method.name}")


async def _call(channel: grpc.aio.Channel, method, metadata=()) -> grpc.StatusCode:
    """Call `method` with an empty request; the status code it ends with (OK if it succeeds)."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kwargs = {"request_serializer": request_cls.SerializeToString, "response_deserializer": response_cls.FromString}
    try:
        if method.client_streaming and method.server_streaming:
            async for _ in channel.stream_stream(path, **kwargs)(iter([request_cls()]), metadata=metadata, timeout=10):
                pass
        elif method.client_streaming:
            await channel.stream_unary(path, **kwargs)(iter([request_cls()]), metadata=metadata, timeout=10)
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, **kwargs)(request_cls(), metadata=metadata, timeout=10):
                pass
        else:
            await channel.unary_unary(path, **kwargs)(request_cls(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


# -- (a) every RPC needs a token of the right role -----------------------------------------------


def test_every_service_method_is_enumerated() -> None:
    """The parametrisation below really covers the services' RPCs (guards against an empty list)."""
    names = {f"{n}.{m.name}" for n, s in SERVICES.items() for m in s.methods}
    assert {"gateway.SubmitJob", "gateway.GetLineage", "teacher.Generate", "student.Score", "trainer.StartTraining"} <= names


@pytest.mark.parametrize(("service", "method"), list(_methods()))
async def test_rpc_refuses_missing_wrong_and_foreign_tokens(servers, service: str, method, service_token: str) -> None:
    ports, _ = servers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[service]}") as channel:
        assert await _call(channel, method) == grpc.StatusCode.UNAUTHENTICATED
        assert await _call(channel, method, auth.metadata("not-a-token")) == grpc.StatusCode.UNAUTHENTICATED
        assert await _call(channel, method, (("authorization", TOKENS["a"]),)) == grpc.StatusCode.UNAUTHENTICATED  # no "Bearer "
        # The other side's token: a tenant's on a service, the service token on the gateway.
        foreign = service_token if service == "gateway" else TOKENS["admin"]
        assert await _call(channel, method, auth.metadata(foreign)) in (
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
        )
        # The right token gets past the guard: whatever the empty request earns, it is not an auth error.
        right = TOKENS["a"] if service == "gateway" else service_token
        assert await _call(channel, method, auth.metadata(right)) not in (
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
        )


@pytest.mark.parametrize("service", list(SERVICES))
async def test_health_needs_no_token(servers, service: str) -> None:
    ports, _ = servers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[service]}") as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICES[service].full_name), timeout=5
        )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(("service", "path", "limit_mb"), [
    ("student", "/syllabus.student.v1.StudentService/Score", 4),
    ("trainer", "/syllabus.trainer.v1.TrainerService/StartTraining", 4),
    ("gateway", "/syllabus.jobs.v1.JobService/SubmitJob", 33),
])  # fmt: skip
async def test_requests_larger_than_their_server_takes_are_refused_even_with_a_token(
    servers, service: str, path: str, limit_mb: int, service_token: str
) -> None:
    """Each server takes what its RPCs carry: the services' requests name artifacts (4 MB), the
    gateway's SubmitJob a task inline (32 MiB and the request around it)."""
    ports, _ = servers
    token = TOKENS["a"] if service == "gateway" else service_token
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[service]}", options=[("grpc.max_send_message_length", -1)]) as channel:
        call = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"\n" * ((limit_mb << 20) + 1), metadata=auth.metadata(token), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- (b) tenant isolation --------------------------------------------------------------------------


def _task(name: str = "banking77-mini", rounds: int | None = None) -> str:
    from syllabus.tasks import dump_task, load_task

    task = load_task(ROOT / "examples/banking77/task.yaml")
    if rounds is not None:
        task = task.model_copy(update={"rounds": rounds})
    return dump_task(task)


def _stub(ports: dict, who: str) -> tuple[jobs_pb2_grpc.JobServiceStub, grpc.aio.Channel]:
    channel = auth.channel(f"127.0.0.1:{ports['gateway']}", TOKENS[who])
    return jobs_pb2_grpc.JobServiceStub(channel), channel


async def _error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        result = call()
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    return info.value


@pytest.fixture(scope="module")
async def job_of_a(servers) -> str:
    """A RUNNING job of tenant A (no worker), with a sample and a training run recorded in SQL."""
    ports, config = servers
    stub, channel = _stub(ports, "a")
    job_id = f"a-job-{uuid.uuid4().hex[:6]}"
    async with channel:
        await stub.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task(), job_id=job_id))
    sessions = db.session_factory(db.make_engine(config.resolved_database_url()))
    with sessions.begin() as s:
        s.add(db.Sample(job_id=job_id, sample_id="s-of-a", round=1, split="generated", input="my card is lost",
                        label="lost_or_stolen_card", provenance={"method": "seed_expansion"}))
        run = db.TrainingRun(job_id=job_id, round=1, stage="reference", dataset_uri="file:///x", adapter_uri="file:///y",
                             samples=1, steps=1, mean_loss=0.5)
        sft = db.TrainingRun(job_id=job_id, round=1, stage="sft", dataset_uri="file:///x", adapter_uri="file:///z",
                             samples=1, steps=1, mean_loss=0.4)
        s.add_all([run, sft])
    with sessions.begin() as s:
        sft_id = s.execute(select(db.TrainingRun.id).where(db.TrainingRun.job_id == job_id, db.TrainingRun.stage == "sft")).scalar_one()
        s.add(db.TrainingRunSample(training_run_id=sft_id, sample_id="s-of-a"))  # what round 1 trained on: exportable
    with sessions() as s:
        run_id = s.execute(
            select(db.TrainingRun.id).where(db.TrainingRun.job_id == job_id, db.TrainingRun.stage == "reference")
        ).scalar_one()
    return job_id, run_id


def _same_shape(theirs: grpc.aio.AioRpcError, missing: grpc.aio.AioRpcError, their_id: str, missing_id) -> None:
    """B's answer about A's job is exactly the answer about a job that does not exist."""
    assert theirs.code() == missing.code() == grpc.StatusCode.NOT_FOUND
    assert theirs.details().replace(str(their_id), "ID") == missing.details().replace(str(missing_id), "ID")


async def test_tenant_b_cannot_see_or_touch_tenant_a_jobs(servers, job_of_a) -> None:
    ports, _ = servers
    job_id, run_id = job_of_a
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"
    b, channel = _stub(ports, "b")
    async with channel:
        assert job_id not in [j.job_id for j in (await b.ListJobs(jobs_pb2.ListJobsRequest(limit=1000))).jobs]
        for rpc, req in (
            (b.GetJob, jobs_pb2.GetJobRequest), (b.CancelJob, jobs_pb2.CancelJobRequest), (b.WatchJob, jobs_pb2.WatchJobRequest),
        ):
            theirs = await _error(lambda rpc=rpc, req=req: rpc(req(job_id=job_id)))
            missing = await _error(lambda rpc=rpc, req=req: rpc(req(job_id=nobody)))
            _same_shape(theirs, missing, job_id, nobody)
        theirs = await _error(lambda: b.GetLineage(jobs_pb2.GetLineageRequest(sample_id="s-of-a")))
        missing = await _error(lambda: b.GetLineage(jobs_pb2.GetLineageRequest(sample_id="s-nowhere")))
        _same_shape(theirs, missing, "s-of-a", "s-nowhere")
        theirs = await _error(lambda: b.GetLineage(jobs_pb2.GetLineageRequest(sample_id="s-of-a", job_id=job_id)))
        missing = await _error(lambda: b.GetLineage(jobs_pb2.GetLineageRequest(sample_id="s-of-a", job_id=nobody)))
        _same_shape(theirs, missing, job_id, nobody)
        theirs = await _error(lambda: b.GetLineage(jobs_pb2.GetLineageRequest(training_run_id=run_id)))
        missing = await _error(lambda: b.GetLineage(jobs_pb2.GetLineageRequest(training_run_id=run_id + 10_000)))
        _same_shape(theirs, missing, run_id, run_id + 10_000)
        theirs = await _error(lambda: b.ExportTrainingSet(jobs_pb2.ExportTrainingSetRequest(job_id=job_id, round=1)))
        missing = await _error(lambda: b.ExportTrainingSet(jobs_pb2.ExportTrainingSetRequest(job_id=nobody, round=1)))
        _same_shape(theirs, missing, job_id, nobody)

    # B's cancel did nothing; A still sees its job, its sample and its training run.
    a, channel = _stub(ports, "a")
    async with channel:
        job = (await a.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))).job
        assert job.status == jobs_pb2.JOB_STATUS_RUNNING
        assert [j.job_id for j in (await a.ListJobs(jobs_pb2.ListJobsRequest(limit=1000))).jobs] == [job_id]
        samples = (await a.GetLineage(jobs_pb2.GetLineageRequest(sample_id="s-of-a"))).samples
        assert [x.job_id for x in samples] == [job_id]
        run = (await a.GetLineage(jobs_pb2.GetLineageRequest(training_run_id=run_id))).training_run
        assert run.job_id == job_id
        export = await a.ExportTrainingSet(jobs_pb2.ExportTrainingSetRequest(job_id=job_id, round=1))
        assert export.count == 1 and b'"id": "s-of-a"' in export.records_jsonl


async def test_admin_sees_every_tenant(servers, job_of_a) -> None:
    ports, _ = servers
    job_id, run_id = job_of_a
    b, channel = _stub(ports, "b")
    b_job = f"b-job-{uuid.uuid4().hex[:6]}"
    async with channel:
        await b.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task(), job_id=b_job))
        assert [j.job_id for j in (await b.ListJobs(jobs_pb2.ListJobsRequest(limit=1000))).jobs] == [b_job]
    admin, channel = _stub(ports, "admin")
    async with channel:
        listed = {j.job_id for j in (await admin.ListJobs(jobs_pb2.ListJobsRequest(limit=1000))).jobs}
        assert {job_id, b_job} <= listed
        assert (await admin.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))).job.job_id == job_id
        assert (await admin.GetLineage(jobs_pb2.GetLineageRequest(training_run_id=run_id))).training_run.job_id == job_id


# -- (c) resubmitting a job id ------------------------------------------------------------------


async def test_resubmit_same_task_is_idempotent_other_task_already_exists(servers) -> None:
    ports, config = servers
    job_id = f"resub-{uuid.uuid4().hex[:6]}"
    task_file = Path(config.home) / "artifacts" / "jobs" / job_id / "task.yaml"
    a, channel = _stub(ports, "a")
    async with channel:
        first = (await a.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task(), job_id=job_id))).job
        stored = task_file.read_bytes()
        again = (await a.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task(), job_id=job_id))).job
        assert again.job_id == first.job_id == job_id and again.created_at == first.created_at
        other = await _error(lambda: a.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task(rounds=3), job_id=job_id)))
        assert other.code() == grpc.StatusCode.ALREADY_EXISTS and other.details().startswith("job_id:")
    assert task_file.read_bytes() == stored  # never overwritten, never mixed
    # Another tenant, even with the very same task: ALREADY_EXISTS, in the same words (nothing says whose).
    b, channel = _stub(ports, "b")
    async with channel:
        foreign = await _error(lambda: b.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_task(), job_id=job_id)))
    assert foreign.code() == grpc.StatusCode.ALREADY_EXISTS and foreign.details() == other.details()
    assert task_file.read_bytes() == stored
    sessions = db.session_factory(db.make_engine(config.resolved_database_url()))
    with sessions() as s:
        row = s.get(db.Job, job_id)
        assert row.tenant == "tenant-a" and row.rounds_total == first.rounds_total


async def test_sdk_sends_its_token(servers, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from syllabus_sdk import SyllabusClient, SyllabusError

    ports, _ = servers
    address = f"127.0.0.1:{ports['gateway']}"

    def list_as(token: str | None) -> list:
        with SyllabusClient(address, token=token) as client:
            return client.list_jobs()

    monkeypatch.delenv("SYLLABUS_TOKEN", raising=False)
    monkeypatch.setenv("SYLLABUS_HOME", str(tmp_path / "no-home"))
    with pytest.raises(SyllabusError) as info:
        await asyncio.to_thread(list_as, None)  # no token anywhere
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert isinstance(await asyncio.to_thread(list_as, TOKENS["b"]), list)
    monkeypatch.setenv("SYLLABUS_TOKEN", TOKENS["b"])
    assert isinstance(await asyncio.to_thread(list_as, None), list)


# -- (d) local tokens ----------------------------------------------------------------------------


def test_local_tokens_are_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = auth.ensure_local_tokens(tmp_path / "home")
    for name in ("token", "service-token", "tokens.json"):
        assert stat.S_IMODE(paths[name].stat().st_mode) == 0o600, name
    admin = paths["token"].read_text().strip()
    assert json.loads(paths["tokens.json"].read_text()) == {admin: "*"}
    paths["token"].chmod(0o644)
    again = auth.ensure_local_tokens(tmp_path / "home")  # kept, and re-moded
    assert again["token"].read_text().strip() == admin
    assert stat.S_IMODE(again["token"].stat().st_mode) == 0o600
    config = Config(home=tmp_path / "home")
    monkeypatch.delenv("SYLLABUS_TOKEN", raising=False)
    assert auth.client_token(config) == admin
    monkeypatch.setenv("SYLLABUS_TOKEN", "from-env")
    assert auth.client_token(config) == "from-env"  # SYLLABUS_TOKEN wins
    assert auth.service_token(config) == paths["service-token"].read_text().strip()


def test_cli_without_a_token_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from orchestrator import cli

    monkeypatch.delenv("SYLLABUS_TOKEN", raising=False)
    monkeypatch.setenv("SYLLABUS_HOME", str(tmp_path / "empty-home"))
    assert cli.main(["jobs", "list"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "syllabus up" in err and "SYLLABUS_TOKEN" in err


async def test_cli_with_a_rejected_token_is_one_line(servers, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from orchestrator import cli

    ports, _ = servers
    monkeypatch.setenv("SYLLABUS_TOKEN", "not-a-token")
    monkeypatch.setenv("SYLLABUS_GATEWAY_ADDRESS", f"127.0.0.1:{ports['gateway']}")
    assert await asyncio.to_thread(cli.main, ["jobs", "list"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "UNAUTHENTICATED" in err


@pytest.mark.unit
def test_unmapped_failures_get_precise_codes_and_no_server_detail() -> None:
    import errno

    from sqlalchemy.exc import IntegrityError, OperationalError
    from temporalio.service import RPCError, RPCStatusCode

    from syllabus.auth import unexpected_status

    secret = "/srv/syllabus/home/secret.db SELECT * FROM jobs WHERE tenant = 'victim'"
    cases = [
        (OperationalError(secret, {}, Exception(secret)), grpc.StatusCode.UNAVAILABLE),
        (IntegrityError(secret, {}, Exception(secret)), grpc.StatusCode.INTERNAL),
        (RPCError(secret, RPCStatusCode.UNAVAILABLE, b""), grpc.StatusCode.UNAVAILABLE),
        (OSError(errno.ENOSPC, secret), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ConnectionRefusedError(errno.ECONNREFUSED, secret), grpc.StatusCode.UNAVAILABLE),
        (RuntimeError(secret), grpc.StatusCode.INTERNAL),
    ]
    for error, code in cases:
        got, message = unexpected_status(error)
        assert got == code, type(error).__name__
        assert "/srv" not in message and "SELECT" not in message and "victim" not in message
