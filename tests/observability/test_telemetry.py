"""syllabus.telemetry on a real gRPC server built by `build_server`: RPC counts and latencies by method
and status code (the auth guard's refusals included, unknown methods not), a server span that continues
the caller's trace from the metadata, the model-queue gauges, and the HTTP endpoint that serves them."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from syllabus import telemetry
from syllabus.auth import SERVICE_ROLE, Principal, TokenTable
from syllabus.config import Config
from syllabus.serving import build_server
from syllabus_sdk.services import authenticated_channel
from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc
from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc

pytestmark = pytest.mark.unit

TOKEN = "telemetry-test-token"
TEACHER = "syllabus.teacher.v1.TeacherService"
STUDENT = "syllabus.student.v1.StudentService"


class FakeTeacher(teacher_pb2_grpc.TeacherServiceServicer):
    """Generate: OK, or INVALID_ARGUMENT when the request names no output key; records its current span."""

    def __init__(self) -> None:
        self.spans: list = []

    async def Generate(self, request, context):
        from opentelemetry import trace

        self.spans.append(trace.get_current_span().get_span_context())
        if not request.output_key:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "output_key: required")
        return teacher_pb2.GenerateResponse()


class FakeStudent(student_pb2_grpc.StudentServiceServicer):
    async def ScoreStream(self, request, context):
        for done in range(3):
            yield student_pb2.ScoreStreamResponse(progress=student_pb2.ScoreProgress(stage="forward", done=done, total=3))


def handled(service: str, method: str, code: str) -> float:
    return REGISTRY.get_sample_value(
        "grpc_server_handled_total", {"grpc_service": service, "grpc_method": method, "grpc_code": code}
    ) or 0.0


def timed(service: str, method: str) -> float:
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", {"grpc_service": service, "grpc_method": method}) or 0.0


@pytest.fixture
async def server():
    teacher = FakeTeacher()

    def add(s: grpc.aio.Server) -> None:
        teacher_pb2_grpc.add_TeacherServiceServicer_to_server(teacher, s)
        student_pb2_grpc.add_StudentServiceServicer_to_server(FakeStudent(), s)

    served = await build_server(
        "127.0.0.1:0", add, (TEACHER, STUDENT), TokenTable({TOKEN: Principal(SERVICE_ROLE, "*")})
    )
    await served.set_serving(True)
    try:
        yield served, teacher
    finally:
        await served.stop(0)


async def test_rpcs_are_counted_by_method_and_status_code(server) -> None:
    served, _ = server
    before = {
        "ok": handled(TEACHER, "Generate", "OK"), "invalid": handled(TEACHER, "Generate", "INVALID_ARGUMENT"),
        "unauth": handled(TEACHER, "Generate", "UNAUTHENTICATED"), "stream": handled(STUDENT, "ScoreStream", "OK"),
        "timed": timed(TEACHER, "Generate"),
    }
    async with authenticated_channel(f"127.0.0.1:{served.port}", TOKEN) as channel:
        stub = teacher_pb2_grpc.TeacherServiceStub(channel)
        await stub.Generate(teacher_pb2.GenerateRequest(output_key="jobs/j/x.jsonl"))
        await stub.Generate(teacher_pb2.GenerateRequest(output_key="jobs/j/y.jsonl"))
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Generate(teacher_pb2.GenerateRequest())
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        events = [e async for e in student_pb2_grpc.StudentServiceStub(channel).ScoreStream(student_pb2.ScoreStreamRequest())]
        assert len(events) == 3
        # A method the server does not have: UNIMPLEMENTED, and no label value minted for it.
        nope = channel.unary_unary(f"/{TEACHER}/Nope", request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await nope(b"")
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    async with authenticated_channel(f"127.0.0.1:{served.port}", "wrong-token") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await teacher_pb2_grpc.TeacherServiceStub(channel).Generate(teacher_pb2.GenerateRequest(output_key="k"))
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED

    assert handled(TEACHER, "Generate", "OK") - before["ok"] == 2
    assert handled(TEACHER, "Generate", "INVALID_ARGUMENT") - before["invalid"] == 1
    assert handled(TEACHER, "Generate", "UNAUTHENTICATED") - before["unauth"] == 1  # the guard's refusal
    assert handled(STUDENT, "ScoreStream", "OK") - before["stream"] == 1
    assert timed(TEACHER, "Generate") - before["timed"] == 4
    assert REGISTRY.get_sample_value("grpc_server_handling_seconds_sum", {"grpc_service": TEACHER, "grpc_method": "Generate"}) > 0
    assert handled(TEACHER, "Nope", "UNIMPLEMENTED") == 0


async def test_the_server_span_continues_the_callers_trace(server, spans) -> None:
    """With an SDK tracer provider installed, the handler runs inside a server span whose parent is the
    span named by the caller's `traceparent` metadata (what the client instrumentation sends)."""
    from opentelemetry import trace

    exporter = spans
    served, teacher = server
    trace_id, parent_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    traceparent = f"00-{trace_id:032x}-{parent_id:016x}-01"
    async with authenticated_channel(f"127.0.0.1:{served.port}", TOKEN) as channel:
        stub = teacher_pb2_grpc.TeacherServiceStub(channel)
        await stub.Generate(teacher_pb2.GenerateRequest(output_key="k"), metadata=(("traceparent", traceparent),))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Generate(teacher_pb2.GenerateRequest(), metadata=(("traceparent", traceparent),))
    ok, failed = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    for span in (ok, failed):
        assert span.name == f"{TEACHER}/Generate"
        assert span.kind == trace.SpanKind.SERVER
        assert span.parent.span_id == parent_id
        assert span.attributes["rpc.service"] == TEACHER and span.attributes["rpc.method"] == "Generate"
    assert ok.attributes["rpc.grpc.status_code"] == 0 and ok.status.status_code == trace.StatusCode.UNSET
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert failed.status.status_code == trace.StatusCode.ERROR
    # the handler saw the server span as current (so what it calls joins the trace)
    assert [c.span_id for c in teacher.spans[-2:]] == [ok.context.span_id, failed.context.span_id]


@pytest.fixture
def spans():
    """An in-memory exporter on the process's SDK tracer provider (installed once, as the global one),
    shut down after the test so later tests' spans are not kept."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


async def test_client_spans_carry_the_context_and_end_with_the_call(server, spans) -> None:
    """The tracing client interceptors: each call gets a client span, the server span is its child, and
    a stream's span ends with the call even when the caller stops reading: at the final message it
    waited for (the end of the stream is never read) with the call's status, mid-stream when the
    channel closes, as cancelled."""
    from opentelemetry import trace

    exporter = spans
    served, _ = server
    auth = (("authorization", f"Bearer {TOKEN}"),)

    def clients() -> list:
        return [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]

    with trace.get_tracer("test").start_as_current_span("activity") as parent:
        # what trace_grpc_clients gives every grpc.aio channel
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}", interceptors=telemetry.CLIENT_TRACING) as channel:
            teacher = teacher_pb2_grpc.TeacherServiceStub(channel)
            await teacher.Generate(teacher_pb2.GenerateRequest(output_key="k"), metadata=auth)
            with pytest.raises(grpc.aio.AioRpcError):
                await teacher.Generate(teacher_pb2.GenerateRequest(), metadata=auth)
            student = student_pb2_grpc.StudentServiceStub(channel)
            async for event in student.ScoreStream(student_pb2.ScoreStreamRequest(), metadata=auth):
                if event.progress.done == 2:
                    break  # the last message: what a caller waits for
            for _ in range(100):
                if len(clients()) == 3:
                    break
                await asyncio.sleep(0.02)
            assert len(clients()) == 3  # ended while the channel is still open
            async for event in student.ScoreStream(student_pb2.ScoreStreamRequest(), metadata=auth):
                break  # abandoned mid-stream
        for _ in range(100):
            if len(clients()) == 4:
                break
            await asyncio.sleep(0.02)
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == parent.get_span_context().trace_id]
    calls = [s for s in spans if s.kind == trace.SpanKind.CLIENT]
    servers = {s.parent.span_id: s for s in spans if s.kind == trace.SpanKind.SERVER}
    assert [c.name for c in calls] == [f"{TEACHER}/Generate"] * 2 + [f"{STUDENT}/ScoreStream"] * 2
    codes = [grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK, grpc.StatusCode.CANCELLED]
    assert [c.attributes["rpc.grpc.status_code"] for c in calls] == [c.value[0] for c in codes]
    for client in calls:
        assert client.parent.span_id == parent.get_span_context().span_id
        assert servers[client.context.span_id].name == client.name  # the server continued this very span


async def test_model_turn_counts_waiting_and_running_work() -> None:
    lock = asyncio.Lock()
    depth = lambda: REGISTRY.get_sample_value("syllabus_model_queue_depth", {"service": "unit"})
    busy = lambda: REGISTRY.get_sample_value("syllabus_model_busy", {"service": "unit"})
    release = asyncio.Event()
    running = []

    async def work(i: int) -> None:
        async with telemetry.model_turn("unit", lock):
            running.append(i)
            await release.wait()

    tasks = [asyncio.create_task(work(i)) for i in range(3)]
    while not running:
        await asyncio.sleep(0.01)
    assert (depth(), busy()) == (2, 1)
    tasks[2].cancel()  # a waiter that gives up leaves the queue
    await asyncio.sleep(0.01)
    assert depth() == 1
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert (depth(), busy()) == (0, 0) and running == [0, 1]


def test_metered_backend_counts_generated_tokens() -> None:
    from teacher_svc.backend import ChatPrompt, Completion, Sampling
    from teacher_svc.metering import GENERATED_TOKENS, MeteredBackend

    class Backend:  # the Backend protocol; the counting is what is under test, not a model
        name, model, revision, adapter = "fake", "fake:model", "abc", "a"

        def generate(self, prompts, sampling, batch_size, stop=()):
            return [[Completion("x", 3), Completion("y", 4)] for _ in prompts]

    before = GENERATED_TOKENS._value.get()
    metered = MeteredBackend(Backend())
    out = metered.generate([ChatPrompt("a"), ChatPrompt("b")], Sampling(n=2), 8)
    assert len(out) == 2 and GENERATED_TOKENS._value.get() - before == 14
    assert (metered.name, metered.model, metered.revision, metered.adapter) == ("fake", "fake:model", "abc", "a")


def test_metrics_endpoint_serves_the_registry_and_port_0_is_off() -> None:
    assert telemetry.start_metrics("unit", 0) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert telemetry.start_metrics("unit", port) == port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"grpc_server_handled", "grpc_server_handling_seconds", "syllabus_model_queue_depth"} <= names


def test_tracing_is_off_without_an_endpoint_and_the_endpoint_is_validated() -> None:
    config = Config()
    assert config.otlp_endpoint == "" and not telemetry.setup_tracing(config, "unit")
    assert telemetry.temporal_interceptors(config) == []
    assert telemetry.temporal_runtime(config, 0) is None
    assert Config(otlp_endpoint="http://collector:4317").otlp_endpoint == "http://collector:4317"
    with pytest.raises(ValueError, match="otlp_endpoint"):
        Config(otlp_endpoint="collector:4317")  # no scheme: plaintext or TLS would be a guess
    for field in ("gateway", "teacher", "student", "trainer", "worker"):
        assert getattr(config, f"{field}_metrics_port") == 0  # off unless asked (tests bind nothing)


def test_up_turns_metrics_on_at_documented_ports_and_checks_them(tmp_path) -> None:
    from orchestrator.stack import Stack, StackError, loopback_config, metrics_urls, with_metrics

    config = with_metrics(Config(home=tmp_path, teacher_metrics_port=19461))
    assert (config.gateway_metrics_port, config.teacher_metrics_port, config.student_metrics_port,
            config.trainer_metrics_port, config.worker_metrics_port) == (9460, 19461, 9462, 9463, 9464)
    assert metrics_urls(config.model_copy(update={"metrics_host": "0.0.0.0"}))["teacher"] == "http://127.0.0.1:19461/metrics"
    assert metrics_urls(Config(home=tmp_path)) == {}  # off unless asked
    # tests' stacks get free ports; a taken one stops the stack before it starts anything
    config = loopback_config(tmp_path)
    assert set(metrics_urls(config)) == {"gateway", "teacher", "student", "trainer", "worker"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", config.student_metrics_port))
        taken.listen()
        with pytest.raises(StackError, match="student metrics port"):
            Stack(config)._check_ports_free()
