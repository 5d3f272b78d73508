"""Nothing unauthenticated costs the gateway memory (issue 25, item 1): a flood of 64 MB request
bodies without a token, 20 connections at once, against the real gateway server in its own process.
The guard refuses each call from its metadata before the body is read, so the gateway's peak RSS
grows by less than one body (reading them would take 20 x 64 MB), and its health stays SERVING."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration

BODY_MB = 64
CONNECTIONS = 20

GATEWAY = textwrap.dedent("""
    import asyncio, sys
    from orchestrator.gateway import create_server
    from syllabus.config import Config

    async def main():
        served = await create_server(Config(home=sys.argv[1]), client=object())  # no Temporal: refused calls never reach it
        await served.set_serving(True)
        print(served.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def _flood(port: int) -> list[grpc.StatusCode]:
    body = b"\n" * (BODY_MB << 20)  # bytes on the wire: the server refuses before it would parse them
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)])
                for _ in range(CONNECTIONS)]  # fmt: skip
    try:
        calls = [ch.unary_unary("/syllabus.jobs.v1.JobService/SubmitJob", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)(body, timeout=60) for ch in channels]  # fmt: skip
        health = health_pb2_grpc.HealthStub(channels[0])
        codes = []
        for result in await asyncio.gather(*calls, return_exceptions=True):
            assert isinstance(result, grpc.aio.AioRpcError), result
            codes.append(result.code())
        status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=10)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        return codes
    finally:
        for ch in channels:
            await ch.close()


def test_a_flood_of_unauthenticated_64mb_bodies_costs_the_gateway_no_memory(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text(json.dumps({"t" * 32: "tenant-a"}))
    proc = subprocess.Popen([sys.executable, "-c", GATEWAY, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        before = _peak_rss_mb(proc.pid)
        codes = asyncio.run(_flood(port))
        peak = _peak_rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    # Less than one body across all 20 connections: with HTTP/2 BDP probing on, the server's receive
    # windows grew with the loopback's bandwidth and a fast machine buffered ~330 MB of refused bodies.
    assert peak - before < BODY_MB, f"gateway peak RSS {peak:.0f} MB (started at {before:.0f} MB)"
