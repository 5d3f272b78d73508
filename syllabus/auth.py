"""Bearer-token authentication for every Syllabus gRPC server, and the guard every RPC passes.

Tokens travel as `authorization: Bearer <token>` metadata. Each token is bound to a principal:
- the **service** role: the one token the orchestrator worker sends to the teacher, student and
  trainer (`Config.service_token`, or `home/service-token`); those services accept nothing else;
- a **tenant**: gateway tokens from `Config.tokens_file` (JSON `{"<token>": "<tenant>"}`); the
  gateway scopes jobs, lineage, export and cancel to the caller's tenant;
- **admin**: a gateway token whose tenant is `"*"`; it sees every tenant's jobs.

`ServerGuard` is the server interceptor `syllabus.serving.build_server` installs. For each call it
1. lets health checks through (load balancers and `syllabus up` probe them without a token);
2. answers UNAVAILABLE while the service is not ready, so a caller retries instead of reaching a
   half-started process (a restarted trainer, say);
3. answers UNAUTHENTICATED for a missing or unknown token, PERMISSION_DENIED for a wrong role;
4. runs the handler with the caller's `Principal` in `current_principal()`, with `context.abort`
   details bounded and stripped of server paths, and with a `ValueError` that escapes the handler
   (undecodable input) answered INVALID_ARGUMENT instead of UNKNOWN.

`syllabus up` creates the local tokens once (`ensure_local_tokens`): `home/token` (admin, mode
0600) is what the CLI and SDK use when `SYLLABUS_TOKEN` is unset.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from syllabus_sdk.services import authenticated_channel

log = logging.getLogger(__name__)

ADMIN_TENANT = "*"
SERVICE_ROLE, TENANT_ROLE, ADMIN_ROLE = "service", "tenant", "admin"
MAX_DETAIL_CHARS = 400  # error details stay far below gRPC's 8 KiB metadata limit
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_TOKEN_FILES = {"token": "admin (CLI/SDK)", "service-token": "service role (worker -> services)"}


class AuthConfigError(RuntimeError):
    """A server was asked to start without the tokens it needs: the message says where to set them."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: `role` is service, tenant or admin; `tenant` is "*" for admin and service."""

    role: str
    tenant: str

    def sees(self, tenant: str | None) -> bool:
        """Whether this caller may see a job owned by `tenant`."""
        return self.role == ADMIN_ROLE or (self.role == TENANT_ROLE and tenant == self.tenant)


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("syllabus_principal", default=None)


def current_principal() -> Principal:
    """The authenticated caller of the RPC being handled (set by `ServerGuard`)."""
    p = _current.get()
    if p is None:  # a handler reached without the guard: a wiring bug, never a client's fault
        raise RuntimeError("no authenticated principal: the server was built without ServerGuard")
    return p


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    """Token -> Principal, kept as sha256 digests so lookups never compare secrets directly."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._by_digest = {_digest(t): p for t, p in principals.items() if t}

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, token: str) -> Principal | None:
        return self._by_digest.get(_digest(token)) if token else None


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return ""


def service_token(config) -> str:
    """The service-role token: `config.service_token`, else `home/service-token`, else ""."""
    return config.service_token or _read_secret(Path(config.home) / "service-token")


def service_table(config) -> TokenTable:
    """What the teacher, student and trainer accept: the service token only."""
    token = service_token(config)
    if not token:
        raise AuthConfigError(
            "no service token: set SYLLABUS_SERVICE_TOKEN (a Secret in deployments) or run `syllabus up`, "
            f"which creates {Path(config.home) / 'service-token'}"
        )
    return TokenTable({token: Principal(SERVICE_ROLE, ADMIN_TENANT)})


def gateway_table(config) -> TokenTable:
    """What the gateway accepts: the tenant tokens of `config.tokens_file` (default home/tokens.json)."""
    path = Path(config.tokens_file) if config.tokens_file else Path(config.home) / "tokens.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise AuthConfigError(
            f"no gateway tokens file at {path}: set SYLLABUS_TOKENS_FILE or run `syllabus up`, which creates one"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AuthConfigError(f"{path}: not a JSON object of token -> tenant ({e})") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise AuthConfigError(f"{path}: must be a JSON object of token -> tenant")
    principals = {}
    for token, tenant in raw.items():
        if tenant != ADMIN_TENANT and not TENANT_RE.match(tenant):
            raise AuthConfigError(f"{path}: tenant {tenant[:40]!r} must match {TENANT_RE.pattern} (or be '*')")
        if tenant in RESERVED_TENANTS:
            raise AuthConfigError(f"{path}: tenant {tenant!r} is reserved (the admin token's jobs); use '*' for admin")
        principals[token] = Principal(ADMIN_ROLE, ADMIN_TENANT) if tenant == ADMIN_TENANT else Principal(TENANT_ROLE, tenant)
    return TokenTable(principals)


TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
RESERVED_TENANTS = frozenset({"admin"})  # the gateway records the admin token's jobs under "admin"


def _write_secret(path: Path, text: str) -> None:
    """Create `path` with mode 0600 (never readable by others, not even for an instant)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def ensure_local_tokens(home: Path) -> dict[str, Path]:
    """Create the embedded stack's tokens once: an admin token for the CLI, the service token, and
    the gateway's tokens file naming the admin token. Existing files are kept (and re-moded 0600)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    paths = {name: home / name for name in _TOKEN_FILES}
    for path in paths.values():
        if not path.exists():
            _write_secret(path, secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    tokens = home / "tokens.json"
    admin = paths["token"].read_text().strip()
    table = json.loads(tokens.read_text()) if tokens.exists() else {}
    if table.get(admin) != ADMIN_TENANT:
        table[admin] = ADMIN_TENANT
        tmp = tokens.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _write_secret(tmp, json.dumps(table, indent=1, sort_keys=True) + "\n")
        tmp.replace(tokens)
    tokens.chmod(0o600)
    paths["tokens.json"] = tokens
    return paths


def client_token(config) -> str:
    """What the CLI and SDK users send: `SYLLABUS_TOKEN`, else the local admin token `home/token`."""
    return os.environ.get("SYLLABUS_TOKEN", "").strip() or _read_secret(Path(config.home) / "token")


# -- client side ---------------------------------------------------------------------------------


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def channel(address: str, token: str, options: list | None = None, root_certificates: bytes | None = None) -> grpc.aio.Channel:
    """An aio channel to a Syllabus server that authenticates every call with `token` (the SDK's),
    over TLS when `root_certificates` (`client_ca(config)`) are given."""
    return authenticated_channel(address, token, options, root_certificates)


def _pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AuthConfigError(f"cannot read the TLS {what} {path}: {e.strerror}") from None


def server_tls(config) -> tuple[bytes, bytes] | None:
    """(key, certificate) the servers present, from `tls_key_file`/`tls_cert_file`; None: plaintext."""
    if not (config.tls_cert_file or config.tls_key_file):
        return None
    if not (config.tls_cert_file and config.tls_key_file):
        raise AuthConfigError("TLS needs both SYLLABUS_TLS_CERT_FILE and SYLLABUS_TLS_KEY_FILE")
    return _pem(config.tls_key_file, "key"), _pem(config.tls_cert_file, "certificate")


def client_ca(config) -> bytes | None:
    """The CA clients verify servers with (`tls_ca_file`); None: plaintext."""
    return _pem(config.tls_ca_file, "CA") if config.tls_ca_file else None


# -- server side ---------------------------------------------------------------------------------

_ABS_PATH = re.compile(r"(?<![\w:/])/(?:[\w.@+-]+/)+[\w.@+-]*")
_FILE_URI = re.compile(r"file://[^\s'\"]*")


def bounded(details: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Error text safe to send: one line, absolute server paths replaced, at most `limit` chars."""
    text = " ".join(str(details).split())
    text = _FILE_URI.sub("<path>", text)  # a local store's URIs are server paths too
    text = _ABS_PATH.sub("<path>", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _GuardedContext:
    """The servicer context, with abort details bounded (delegates everything else)."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    async def abort(self, code, details: str = "", trailing_metadata=()):
        await self._context.abort(code, bounded(details), trailing_metadata)

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def _bearer(context: grpc.aio.ServicerContext) -> str:
    return _bearer_of(context.invocation_metadata())


def _bearer_of(metadata) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return ""


def _refusal(code: grpc.StatusCode, details: str):
    """A handler that answers `code` without reading the request: request-streaming, so the body is
    never pulled off the wire (only the stream's flow-control window is buffered), whatever size the
    client sends. A unary client call reads the same on the wire."""

    async def refuse(request_iterator, context):
        await context.abort(code, details)

    return grpc.stream_unary_rpc_method_handler(refuse)


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message (bad wire format, string fields
    that are not UTF-8): the guard answers it INVALID_ARGUMENT after authentication."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name, self.error = type_name, error


def _lenient(deserializer):
    """Wrap a request deserializer so undecodable bytes reach the guard instead of gRPC's UNKNOWN."""
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:  # noqa: BLE001 — DecodeError (and friends) from client bytes
            name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
            return _Undecodable(getattr(name, "full_name", "request"), e)

    return deserialize


async def _reject_undecodable(context: grpc.aio.ServicerContext, method: str, request: _Undecodable) -> None:
    log.info("%s: rejected undecodable request: %s", method, bounded(str(request.error), 200))
    reason = "a string field is not UTF-8" if "UTF-8" in str(request.error) else "malformed wire format"
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {request.type_name} message ({reason})")


class ServerGuard(grpc.aio.ServerInterceptor):
    """Readiness, authentication and error hygiene for every RPC of one server (see module doc)."""

    def __init__(self, table: TokenTable, roles: frozenset[str], ready: Callable[[], bool]) -> None:
        self.table = table
        self.roles = roles
        self.ready = ready

    async def _admit(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        if not self.ready():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "service is starting or stopping; retry")
        principal = self.table.lookup(_bearer(context))
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
        if principal.role not in self.roles:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method}: not allowed for the {principal.role} role")
        return principal

    @contextlib.asynccontextmanager
    async def _call(self, method: str, request, context: grpc.aio.ServicerContext):
        """One unary-request RPC: admitted (ready, authenticated, allowed), its request decoded, the
        principal current while it runs, a ValueError out of it answered INVALID_ARGUMENT; yields the
        context the handler sees (details bounded)."""
        principal = await self._admit(method, context)
        if isinstance(request, _Undecodable):
            await _reject_undecodable(context, method, request)
        token = _current.set(principal)
        try:
            yield _GuardedContext(context)
        except grpc.aio.AbortError:
            raise
        except ValueError as e:
            await _invalid(context, method, e)
        except Exception as e:  # noqa: BLE001 — whatever a handler did not map gets a precise code, not UNKNOWN
            await _unexpected(context, method, e)
        finally:
            _current.reset(token)

    def _precheck(self, method: str, metadata):
        """The refusal handler of a call not admitted, decided from its metadata alone, before any
        of its body is read (unauthenticated bytes cost no memory); None to go on."""
        if not self.ready():
            return _refusal(grpc.StatusCode.UNAVAILABLE, "service is starting or stopping; retry")
        principal = self.table.lookup(_bearer_of(metadata))
        if principal is None:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
        if principal.role not in self.roles:
            return _refusal(grpc.StatusCode.PERMISSION_DENIED, f"{method}: not allowed for the {principal.role} role")
        return None

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_HEALTH_PREFIX):
            return handler
        if (refusal := self._precheck(method, handler_call_details.invocation_metadata)) is not None:
            return refusal
        if handler.request_streaming:  # Syllabus has no client-streaming RPCs; reflection does
            return self._wrap_stream_request(handler, method)
        if handler.response_streaming:
            inner = handler.unary_stream

            async def unary_stream(request, context):
                async with self._call(method, request, context) as guarded:
                    async for item in inner(request, guarded):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        inner_unary = handler.unary_unary

        async def unary_unary(request, context):
            async with self._call(method, request, context) as guarded:
                return await inner_unary(request, guarded)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _wrap_stream_request(self, handler, method: str):
        inner = handler.stream_stream

        async def stream_stream(request_iterator, context):
            principal = await self._admit(method, context)
            token = _current.set(principal)
            try:
                async for item in inner(request_iterator, context):
                    yield item
            finally:
                _current.reset(token)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def unexpected_status(e: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code and a message without server detail (no SQL, parameters, paths or upstream text)
    for a failure no handler mapped: a store or service the server depends on being down is
    UNAVAILABLE (the client may retry), a full disk RESOURCE_EXHAUSTED, the rest INTERNAL."""
    import errno

    module = type(e).__module__.split(".")[0]
    if module == "sqlalchemy":
        if type(e).__name__ in ("OperationalError", "DisconnectionError", "TimeoutError"):
            return grpc.StatusCode.UNAVAILABLE, "the metadata database is unavailable; retry"
        return grpc.StatusCode.INTERNAL, "metadata database error (the server logged it)"
    if module == "temporalio":
        return grpc.StatusCode.UNAVAILABLE, "Temporal is unavailable; retry"
    if module in ("minio", "urllib3", "botocore"):
        return grpc.StatusCode.UNAVAILABLE, "the artifact store is unavailable; retry"
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, "the server is out of disk space"
        return grpc.StatusCode.UNAVAILABLE, f"storage or network error ({type(e).__name__}); retry"
    return grpc.StatusCode.INTERNAL, "internal error (the server logged it)"


async def _unexpected(context: grpc.aio.ServicerContext, method: str, e: Exception) -> None:
    code, message = unexpected_status(e)
    log.error("%s: %s", method, code.name, exc_info=e)  # the whole story stays in the server's log
    await context.abort(code, message)


async def _invalid(context: grpc.aio.ServicerContext, method: str, e: ValueError) -> None:
    # A ValueError reaching here came from decoding what the client sent (bytes that are not UTF-8,
    # JSON that is not JSON): the client's mistake, said briefly.
    log.info("%s: rejected malformed input: %s: %s", method, type(e).__name__, bounded(str(e), 200))
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(f"malformed input: {type(e).__name__}: {e}"))
