"""Metrics and traces of every Syllabus process: a Prometheus endpoint each, one OpenTelemetry trace per job.

Metrics (`prometheus-client`; a process serves them at http://<metrics_host>:<port>/metrics once its
`main` calls `start_metrics`, port from `Config.<component>_metrics_port`, 0 = off):

- `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}` and the histogram
  `grpc_server_handling_seconds{grpc_service, grpc_method}`: every RPC of every server, counted by
  `RpcTelemetry`, which `syllabus.serving.build_server` installs outermost (so UNAUTHENTICATED and
  UNAVAILABLE answers of the auth guard count too). Only registered methods are counted: a client
  cannot mint label values.
- `syllabus_model_queue_depth{service}` / `syllabus_model_busy{service}`: model work waiting for the
  service's model and model work running (`model_turn`, around each service's model lock).
- Throughput counters, defined where they count: `syllabus_teacher_generated_tokens_total`
  (teacher_svc.metering), `syllabus_student_samples_scored_total` and
  `syllabus_student_samples_evaluated_total` (student_svc.service), `syllabus_trainer_tokens_total`
  (trainer_svc.jobs). Prometheus' `rate()` turns them into tokens or samples per second.
- The worker's endpoint is the Temporal SDK's own (`temporal_runtime`): workflow, activity, poller and
  request metrics with the SDK's names (`temporal_activity_execution_latency`, `temporal_request`, ...).

Tracing (OpenTelemetry; on only when `Config.otlp_endpoint` is set, `setup_tracing`): one trace per job
from the gateway's SubmitJob through Temporal (`temporal_interceptors`: the SDK's TracingInterceptor
carries the context in workflow and activity headers) to each service RPC (`trace_grpc_clients`: a
client span per call whose context goes in the call's metadata as W3C `traceparent`; `RpcTelemetry`
continues it on the server). Spans go over OTLP/gRPC to the collector in batches. Without an endpoint
no SDK is loaded and the spans `RpcTelemetry` opens are the OpenTelemetry API's no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from temporalio.runtime import Runtime

    from syllabus.config import Config

log = logging.getLogger(__name__)

# RPCs run from milliseconds (health, status reads) to an hour (a training watch stream).
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

RPC_HANDLED = Counter(
    "grpc_server_handled", "RPCs completed on the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds", "Time from the call's arrival to its status, by method.",
    ["grpc_service", "grpc_method"], buckets=RPC_BUCKETS,
)
MODEL_QUEUE_DEPTH = Gauge(
    "syllabus_model_queue_depth", "Model work (requests, training jobs) waiting for the service's model.", ["service"],
)
MODEL_BUSY = Gauge("syllabus_model_busy", "Model work running now (one at a time per service).", ["service"])

_tracer = trace.get_tracer("syllabus")


# -- metrics ---------------------------------------------------------------------------------------


def start_metrics(component: str, port: int, host: str = "127.0.0.1") -> int | None:
    """Serve this process's metrics at http://host:port/metrics (a daemon thread); port 0: off.
    Returns the port, or None when off."""
    if not port:
        return None
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)
    log.info("%s metrics at http://%s:%d/metrics", component, host, port)
    return port


@contextlib.asynccontextmanager
async def model_turn(service: str, lock: asyncio.Lock) -> AsyncIterator[None]:
    """Hold `lock` (a service's one-at-a-time model lock) with the wait counted in
    `syllabus_model_queue_depth` and the work in `syllabus_model_busy`."""
    waiting, busy = MODEL_QUEUE_DEPTH.labels(service), MODEL_BUSY.labels(service)
    waiting.inc()
    try:
        await lock.acquire()
    finally:
        waiting.dec()
    busy.inc()
    try:
        yield
    finally:
        busy.dec()
        lock.release()


def _split(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _status(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status the client gets: what abort/set_code set, else OK, or for an exception that set
    none UNKNOWN (what gRPC answers), CANCELLED or DEADLINE_EXCEEDED."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class _Call:
    """One RPC being observed: its server span (continuing the caller's trace from the metadata) is
    current while the handler runs; `finish` records the status in the span and the metrics."""

    def __init__(self, full_method: str, context: grpc.aio.ServicerContext) -> None:
        self.service, self.method = _split(full_method)
        self.context = context
        self.started = time.perf_counter()
        carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        self.span = _tracer.start_span(
            full_method.lstrip("/"), context=propagate.extract(carrier), kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": self.service, "rpc.method": self.method},
        )
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def finish(self, error: BaseException | None) -> None:
        code = _status(self.context, error)
        RPC_HANDLED.labels(self.service, self.method, code.name).inc()
        RPC_SECONDS.labels(self.service, self.method).observe(time.perf_counter() - self.started)
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
        self.span.end()
        with contextlib.suppress(ValueError):  # a stream closed from another task: its context is not ours
            otel_context.detach(self._token)


class RpcTelemetry(grpc.aio.ServerInterceptor):
    """Counts, times and traces every RPC of a server (see the module doc); `build_server` puts it
    first, around the auth guard."""

    async def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED; nothing to label
            return None
        method = handler_call_details.method
        kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        # The request argument (one message or an iterator) passes through; what differs is whether
        # the handler returns one response or yields a stream of them.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_counted_call(method, handler.unary_unary), **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_counted_stream(method, handler.unary_stream), **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_counted_call(method, handler.stream_unary), **kwargs)
        return grpc.stream_stream_rpc_method_handler(_counted_stream(method, handler.stream_stream), **kwargs)


def _counted_call(method: str, inner: Callable) -> Callable:
    """A handler returning one response, counted and timed as `method`."""

    async def handle(request, context):
        call, error = _Call(method, context), None
        try:
            return await inner(request, context)
        except BaseException as e:
            error = e
            raise
        finally:
            call.finish(error)

    return handle


def _counted_stream(method: str, inner: Callable) -> Callable:
    """A handler yielding a stream of responses, counted and timed as `method`."""

    async def handle(request, context):
        call, error = _Call(method, context), None
        try:
            async for item in inner(request, context):
                yield item
        except BaseException as e:
            error = e
            raise
        finally:
            call.finish(error)

    return handle


# -- tracing ---------------------------------------------------------------------------------------


def setup_tracing(config: Config, component: str) -> bool:
    """Export this process's spans to `config.otlp_endpoint` (OTLP/gRPC, batched) as service
    `syllabus-<component>` (OTEL_SERVICE_NAME overrides it), and trace the grpc.aio calls it makes.
    No endpoint: nothing is set up (False)."""
    if not config.otlp_endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"syllabus-{component}"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint)))
    trace.set_tracer_provider(provider)  # flushed at exit (the provider's atexit shutdown)
    trace_grpc_clients()
    log.info("%s exports traces to %s", component, config.otlp_endpoint)
    return True


_background: set[asyncio.Task] = set()  # span-closing tasks, referenced until done


def _client_span(details: grpc.aio.ClientCallDetails) -> tuple[trace.Span, grpc.aio.ClientCallDetails]:
    """A client span for the call and the call's details with the span's context in the metadata."""
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    service, name = _split(method)
    span = _tracer.start_span(
        method.lstrip("/"), kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata = (*tuple(details.metadata or ()), *carrier.items())
    return span, grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready)


async def _end_client_span(span: trace.Span, call: grpc.aio.Call) -> None:
    code = await call.code()  # at once: the call is done
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
    span.end()


def _traced_call(span: trace.Span, call: grpc.aio.Call) -> grpc.aio.Call:
    """End `span` when `call` is done. A done callback rather than the end of the response stream: a
    caller that stops reading at the message it waited for (the final WatchTraining event) still
    gets its span closed with the call's status."""

    def done(finished: grpc.aio.Call) -> None:
        task = asyncio.ensure_future(_end_client_span(span, finished))
        _background.add(task)
        task.add_done_callback(_background.discard)

    call.add_done_callback(done)
    return call


async def _start_traced(span: trace.Span, start: Callable[[], Any]) -> grpc.aio.Call:
    try:
        call = await start()
    except BaseException as e:  # the call never started (e.g. a closed channel)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(e).__name__))
        span.end()
        raise
    return _traced_call(span, call)


# grpc.aio files each interceptor under one call kind only, hence one class per kind.
class _TraceUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        span, details = _client_span(client_call_details)
        return await _start_traced(span, lambda: continuation(details, request))


class _TraceUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        span, details = _client_span(client_call_details)
        return await _start_traced(span, lambda: continuation(details, request))


class _TraceStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        span, details = _client_span(client_call_details)
        return await _start_traced(span, lambda: continuation(details, request_iterator))


class _TraceStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        span, details = _client_span(client_call_details)
        return await _start_traced(span, lambda: continuation(details, request_iterator))


CLIENT_TRACING = (_TraceUnaryUnary(), _TraceUnaryStream(), _TraceStreamUnary(), _TraceStreamStream())
_clients_traced = False


def trace_grpc_clients() -> None:
    """Give every grpc.aio channel made from now on the `CLIENT_TRACING` interceptors (outermost).
    The typed service clients build their own channels (syllabus_sdk.services, which needs only grpcio),
    so the two channel constructors are wrapped, as OpenTelemetry's grpc instrumentation does. Once per
    process; the sync grpc channels (the OTLP exporter's) are left alone."""
    global _clients_traced
    if _clients_traced:
        return
    _clients_traced = True
    for name in ("insecure_channel", "secure_channel"):
        original = getattr(grpc.aio, name)
        signature = inspect.signature(original)

        @functools.wraps(original)
        def traced(*args: Any, _original: Callable = original, _signature=signature, **kwargs: Any) -> grpc.aio.Channel:
            bound = _signature.bind(*args, **kwargs)
            bound.arguments["interceptors"] = [*CLIENT_TRACING, *(bound.arguments.get("interceptors") or ())]
            return _original(*bound.args, **bound.kwargs)

        setattr(grpc.aio, name, traced)


def temporal_connect_options(config: Config) -> dict:
    """The `Client.connect` keywords every Temporal client of Syllabus passes (gateway, worker, the
    stack's own checks): namespace, tracing interceptors, and TLS / mTLS / an API key where the config
    asks for them. Half an mTLS pair is a ValueError naming the missing file."""
    options: dict = {"namespace": config.temporal_namespace, "interceptors": temporal_interceptors(config)}
    if bool(config.temporal_tls_cert_file) != bool(config.temporal_tls_key_file):
        raise ValueError("temporal_tls_cert_file and temporal_tls_key_file go together: set both for mTLS, or neither")
    if config.temporal_tls_ca_file or config.temporal_tls_cert_file:
        from temporalio.service import TLSConfig

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        options["tls"] = TLSConfig(
            server_root_ca_cert=read(config.temporal_tls_ca_file), client_cert=read(config.temporal_tls_cert_file),
            client_private_key=read(config.temporal_tls_key_file), domain=config.temporal_tls_server_name or None,
        )  # fmt: skip
    if config.temporal_api_key_env:
        key = os.environ.get(config.temporal_api_key_env)
        if not key:
            raise ValueError(f"temporal_api_key_env names {config.temporal_api_key_env}, which is not set")
        options["api_key"] = key
    return options


def temporal_interceptors(config: Config) -> list:
    """Interceptors of a Temporal client (and the workers made from it): the SDK's TracingInterceptor
    when tracing is on, so a job's trace goes on through its workflow and activities."""
    if not config.otlp_endpoint:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def temporal_runtime(config: Config, port: int) -> Runtime | None:
    """A Temporal runtime whose SDK metrics are served at http://<metrics_host>:port/metrics (the
    SDK's own Prometheus exporter, its default metric names); port 0: None, the default runtime."""
    if not port:
        return None
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{config.metrics_host}:{port}")))
    log.info("Temporal SDK metrics at http://%s:%d/metrics", config.metrics_host, port)
    return runtime
