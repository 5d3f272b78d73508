"""The wiring every Syllabus gRPC server shares: health, reflection, port 0, graceful stop.

A service module builds its servicer and calls `build_server`; its `__main__` calls `serve`.
Health reports NOT_SERVING until the service says it is ready (model loaded) and again on SIGTERM;
meanwhile every other RPC answers UNAVAILABLE (retryable). Every RPC but health passes
`syllabus.auth.ServerGuard`: a bearer token of an allowed role, bounded error details. Every RPC,
health included, is counted, timed and traced by `syllabus.telemetry.RpcTelemetry`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from syllabus.auth import SERVICE_ROLE, ServerGuard, TokenTable
from syllabus.progress import PROGRESS, ProgressServicer
from syllabus.progress import SERVICE_NAME as PROGRESS_SERVICE
from syllabus.telemetry import RpcTelemetry
from syllabus_sdk.common.v1 import progress_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Served:
    """A started server: the server, the port it bound and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    state: dict = field(default_factory=lambda: {"serving": False})

    async def set_serving(self, serving: bool) -> None:
        self.state["serving"] = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


async def build_server(
    address: str,
    add_servicers: Callable[[grpc.aio.Server], None],
    service_names: tuple[str, ...],
    tokens: TokenTable,
    roles: frozenset[str] = frozenset({SERVICE_ROLE}),
    max_receive_mb: int = 4,
    max_send_mb: int = 64,
    max_concurrent_rpcs: int = 64,
    tls: tuple[bytes, bytes] | None = None,
    progress: bool = False,
) -> Served:
    """Create, bind and start an aio server at `address` ("host:port", port 0 picks a free one).

    `tokens` are the bearer tokens it accepts and `roles` the principals' roles allowed to call it:
    the teacher, student and trainer take the service role only; the gateway takes tenants.
    `tls` (key, certificate chain; `syllabus.auth.server_tls(config)`) makes it listen over TLS.
    A request larger than `max_receive_mb` is refused (RESOURCE_EXHAUSTED): the services' requests
    name artifacts and carry no data, so 4 MB is plenty; the gateway takes a task inline. Calls
    beyond `max_concurrent_rpcs` in flight are refused RESOURCE_EXHAUSTED rather than queued.
    `progress` adds the `ProgressService` (`syllabus.progress`) callers poll to tell slow from hung.
    """
    opts = [
        ("grpc.max_send_message_length", max_send_mb << 20),
        ("grpc.max_receive_message_length", max_receive_mb << 20),
        # No BDP probing: it grows each connection's receive window with the link's bandwidth, so a
        # refused call's body was still buffered (hundreds of MB under a flood on a fast machine).
        # Requests are small; the 64 KiB default window uploads a 32 MiB task faster on loopback.
        ("grpc.http2.bdp_probe", 0),
    ]
    state = {"serving": False}
    # Telemetry outermost: the guard's refusals (UNAUTHENTICATED, UNAVAILABLE) are counted and traced too.
    guard = ServerGuard(tokens, roles, lambda: state["serving"])
    server = grpc.aio.server(options=opts, interceptors=[RpcTelemetry(), guard], maximum_concurrent_rpcs=max_concurrent_rpcs)
    add_servicers(server)
    extra: tuple[str, ...] = ()
    if progress:
        progress_pb2_grpc.add_ProgressServiceServicer_to_server(ProgressServicer(), server)
        extra = (PROGRESS_SERVICE,)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*service_names, *extra, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    if tls is not None:  # (private key, certificate chain), PEM: TLS only, no plaintext port
        port = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    served = Served(server, port, health_servicer, service_names, state)
    await served.set_serving(False)
    return served


async def serve(served: Served, ready: Callable[[], object] | None = None, grace: float = 5.0) -> None:
    """Run until SIGTERM/SIGINT: call `ready` (e.g. load the model), go SERVING, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        await asyncio.to_thread(ready)
    await served.set_serving(True)
    log.info("serving %s on port %d", ",".join(served.service_names), served.port)
    print(f"SERVING {','.join(served.service_names)} port={served.port}", flush=True)
    await stop.wait()
    await served.stop(grace)


async def wait_healthy(address: str, timeout: float = 120.0, service: str = "", root_certificates: bytes | None = None) -> None:
    """Wait until the server at `address` reports SERVING (raises TimeoutError otherwise); over TLS
    when `root_certificates` (the CA, `syllabus.auth.client_ca`) is given."""
    deadline = asyncio.get_running_loop().time() + timeout
    if root_certificates is not None:
        opened = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root_certificates))
    else:
        opened = grpc.aio.insecure_channel(address)
    async with opened as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{address} not SERVING after {timeout:.0f}s")
            await asyncio.sleep(0.2)


class RequestFailed(Exception):
    """A request the service cannot serve: `code` is the status the client gets, `message` its details.

    Services raise it (or `InvalidRequest`) from validation and compute; the handler maps it with
    `abort`. A subclass exists only for a status a service raises often (e.g. NOT_FOUND)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(self.code, self.message)


class InvalidRequest(RequestFailed):
    """A request field (or the data it names) is malformed: INVALID_ARGUMENT "<field>: <problem>",
    `field` its proto path (e.g. "lora.rank"). The one request-error type of every service."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")
        self.field = field
        self.problem = problem


@contextmanager
def reading(field: str) -> Iterator[None]:
    """Map what reading the artifact a request field names can raise to the status the client gets:
    NOT_FOUND (no such artifact), DATA_LOSS (bytes do not match the sha256), INVALID_ARGUMENT naming
    the bad part of the reference (`<field>.uri` / `<field>.sha256`). The one mapping every service uses."""
    from syllabus.artifacts import ArtifactNotFound, ChecksumMismatch, InvalidKey

    try:
        yield
    except ArtifactNotFound as e:
        raise RequestFailed(grpc.StatusCode.NOT_FOUND, f"{field}: {e}") from None
    except ChecksumMismatch as e:
        raise RequestFailed(grpc.StatusCode.DATA_LOSS, f"{field}: {e}") from None
    except InvalidKey as e:
        raise InvalidRequest(f"{field}.{e.part}", str(e)) from None


async def abort_invalid(context: grpc.aio.ServicerContext, field: str, problem: str) -> None:
    """Reject a malformed request: INVALID_ARGUMENT naming the field."""
    await InvalidRequest(field, problem).abort(context)


async def in_model_thread(fn: Callable[..., T], *args) -> T:
    """`await asyncio.to_thread(fn, *args)` for work on a shared model, run under the service's model
    lock: when the caller is cancelled (the client went away, a deadline passed) the thread cannot be
    stopped, so this waits for it to end before the cancellation goes on and the lock is released.
    Otherwise the next request would share the model with a thread still swapping adapters,
    changing `padding_side` or drawing from the global RNG, and both would get silently wrong results."""
    def busy() -> T:
        with PROGRESS.busy():
            return fn(*args)

    work = asyncio.ensure_future(asyncio.to_thread(busy))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            try:
                await asyncio.wait({work})
            except asyncio.CancelledError:  # cancelled again: the thread still holds the model
                continue
        if not work.cancelled():
            work.exception()  # retrieved: a failure after the caller left is not "never retrieved"
        raise
