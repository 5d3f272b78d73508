"""Optional TLS on the real servers: with a certificate configured a service speaks TLS only, a
client that trusts its CA gets through (and still needs its token), a plaintext client does not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from syllabus import auth
from syllabus.config import Config
from syllabus_sdk.services import ServiceError, TrainerClient
from syllabus_sdk.trainer.v1 import trainer_pb2

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    d = tmp_path_factory.mktemp("pki")

    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=syllabus-test-ca",
       "-keyout", "ca.key", "-out", "ca.crt")
    sh("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sh("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
       "-extfile", "san.ext", "-out", "server.crt")
    sh("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=syllabus-worker", "-keyout", "client.key", "-out", "client.csr")
    sh("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
       "-out", "client.crt")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key",
            "client_cert": d / "client.crt", "client_key": d / "client.key"}


async def test_trainer_over_tls(tmp_path: Path, pki: dict[str, Path]) -> None:
    from trainer_svc.server import create_server

    auth.ensure_local_tokens(tmp_path)
    config = Config(home=tmp_path, tls_cert_file=str(pki["cert"]), tls_key_file=str(pki["key"]), tls_ca_file=str(pki["ca"]))
    served = await create_server(config)
    await served.set_serving(True)
    address = f"127.0.0.1:{served.port}"
    cancel = trainer_pb2.CancelTrainingRequest(training_id="nope")
    try:
        async with TrainerClient(address, token=auth.service_token(config), root_certificates=auth.client_ca(config)) as c:
            with pytest.raises(ServiceError) as reached:  # through TLS and the guard, to the handler
                await c.cancel_training(cancel)
            assert reached.value.code == grpc.StatusCode.NOT_FOUND
        async with TrainerClient(address, token="", root_certificates=auth.client_ca(config)) as c:
            with pytest.raises(ServiceError) as no_token:
                await c.cancel_training(cancel)
            assert no_token.value.code == grpc.StatusCode.UNAUTHENTICATED
        async with TrainerClient(address, token=auth.service_token(config)) as plain:  # no TLS
            with pytest.raises(ServiceError) as refused:
                await plain.cancel_training(cancel, timeout=10)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await served.stop(0.5)


def test_half_a_tls_config_is_a_clear_error(tmp_path: Path, pki: dict[str, Path]) -> None:
    with pytest.raises(auth.AuthConfigError, match="both"):
        auth.server_tls(Config(home=tmp_path, tls_cert_file=str(pki["cert"])))
    with pytest.raises(auth.AuthConfigError, match="cannot read the TLS CA"):
        auth.client_ca(Config(home=tmp_path, tls_ca_file=str(tmp_path / "missing.pem")))


async def test_healthcheck_probes_a_tls_server(pki: dict[str, Path]) -> None:
    """The chart's exec probe when TLS is on (the kubelet's native gRPC probe speaks plaintext only)."""
    import asyncio
    import os
    import sys

    from syllabus.serving import build_server

    script = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"
    tls = (pki["key"].read_bytes(), pki["cert"].read_bytes())
    served = await build_server("127.0.0.1:0", lambda server: None, ("syllabus.trainer.v1.TrainerService",),
                                auth.TokenTable({}), tls=tls)
    await served.set_serving(True)
    address = f"127.0.0.1:{served.port}"

    async def probe(env: dict[str, str]) -> int:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), address, env={**os.environ, **env},
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await proc.wait()

    try:
        assert await probe({"SYLLABUS_TLS_CA_FILE": str(pki["ca"])}) == 0
        assert await probe({"SYLLABUS_TLS_CA_FILE": ""}) == 1  # plaintext cannot talk to it
    finally:
        await served.stop(0)


async def test_the_worker_probe_reaches_a_temporal_frontend_that_requires_mtls(pki: dict[str, Path]) -> None:
    """The worker's exec probe (`--temporal`) connects as the worker does: with the
    SYLLABUS_TEMPORAL_TLS_* files, over mTLS; without the client pair the frontend refuses it."""
    import asyncio
    import os
    import sys

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    script = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(pki["key"].read_bytes(), pki["cert"].read_bytes())],
                                              root_certificates=pki["ca"].read_bytes(), require_client_auth=True)  # fmt: skip
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    await servicer.set("temporal.api.workflowservice.v1.WorkflowService", health_pb2.HealthCheckResponse.SERVING)

    async def probe(env: dict[str, str]) -> int:
        env = {**os.environ, "SYLLABUS_TEMPORAL_ADDRESS": f"127.0.0.1:{port}", **env}
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), "--temporal", env=env,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await proc.wait()

    mtls = {"SYLLABUS_TEMPORAL_TLS_CA_FILE": str(pki["ca"]), "SYLLABUS_TEMPORAL_TLS_CERT_FILE": str(pki["client_cert"]),
            "SYLLABUS_TEMPORAL_TLS_KEY_FILE": str(pki["client_key"])}  # fmt: skip
    try:
        assert await probe(mtls) == 0
        assert await probe({**mtls, "SYLLABUS_TEMPORAL_TLS_CERT_FILE": "", "SYLLABUS_TEMPORAL_TLS_KEY_FILE": ""}) == 1  # no client cert
        assert await probe({"SYLLABUS_TEMPORAL_TLS_CA_FILE": ""}) == 1  # plaintext
    finally:
        await server.stop(0)
