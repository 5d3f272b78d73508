"""Jobs are searchable in Temporal: a job run on the embedded stack carries SyllabusTask, SyllabusTenant,
SyllabusRound and SyllabusStatus (registered by the stack's dev server), found through the Temporal API,
`syllabus jobs list --task --status`, and the Web UI filtered by task name (headless Chromium).
Runs on the shared stack of tests/e2e/conftest.py."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from temporalio.client import Client

from orchestrator import search
from orchestrator.stack import Stack, config_env
from syllabus_sdk import SyllabusClient
from syllabus_sdk.jobs.v1 import jobs_pb2

pytestmark = pytest.mark.e2e
SYLLABUS = [sys.executable, "-m", "orchestrator.cli"]


@pytest.fixture(scope="module")
async def job(stack: Stack, banking77_tiny) -> dict:
    """One job run to completion (its search attributes sampled while it ran), and a decoy: another
    task's workflow that no worker runs, terminated."""
    name = f"search-{uuid.uuid4().hex[:8]}"
    task = banking77_tiny(2, name=name, generate={"per_label": 1, "max_new_tokens": 12, "seed": 0},
                          train={"epochs": 1, "batch_size": 4})
    temporal = await Client.connect(stack.config.temporal_address, namespace=stack.config.temporal_namespace)
    decoy = await temporal.start_workflow(
        "DistillationWorkflow", id=f"decoy-{uuid.uuid4().hex[:8]}", task_queue=f"nobody-{uuid.uuid4()}",
        search_attributes=search.start_attributes(f"{name}-other", "admin"),
    )
    await decoy.terminate("a decoy")
    token = (stack.config.home / "token").read_text().strip()
    seen: set[tuple] = set()
    with SyllabusClient(stack.config.gateway_address, token=token) as client:
        job_id = (await asyncio.to_thread(client.submit_job, yaml.safe_dump(task))).job_id
        watch = asyncio.ensure_future(asyncio.to_thread(lambda: list(client.watch_job(job_id))))
        while not watch.done():
            async for w in temporal.list_workflows(f"WorkflowId = '{job_id}'"):
                seen.add((w.typed_search_attributes.get(search.STATUS), w.typed_search_attributes.get(search.ROUND)))
            await asyncio.sleep(0.3)
        final = (await watch)[-1]
    assert final.status == jobs_pb2.JOB_STATUS_COMPLETED, final.error
    return {"id": job_id, "task": name, "decoy": decoy.id, "seen": seen, "temporal": temporal}


async def _ids(temporal: Client, query: str) -> list[str]:
    return [w.id async for w in temporal.list_workflows(query)]


async def test_temporal_lists_the_job_by_its_search_attributes(job: dict) -> None:
    temporal, job_id, task = job["temporal"], job["id"], job["task"]
    assert await _ids(temporal, f"SyllabusTask = '{task}'") == [job_id]
    assert await _ids(temporal, f"SyllabusTask = '{task}' AND SyllabusTenant = 'admin' AND SyllabusStatus = 'completed' "
                                "AND SyllabusRound = 1") == [job_id]
    assert await _ids(temporal, f"SyllabusTask = '{task}' AND SyllabusStatus = 'running'") == []
    # The round was upserted while the job ran, the status when it ended.
    assert ("running", 1) in job["seen"], job["seen"]
    attrs = (await temporal.get_workflow_handle(job_id).describe()).typed_search_attributes
    assert [attrs.get(k) for k in search.KEYS] == [task, "admin", 1, "completed"]


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SYLLABUS, *args], check=False, env=config_env(stack.config), capture_output=True, text=True,
                          timeout=120)


def _listed(stack: Stack, *args: str) -> list[str]:
    result = _cli(stack, "jobs", "list", "--json", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return [j["job_id"] for j in json.loads(result.stdout.strip().splitlines()[-1])]


def test_cli_lists_jobs_by_task_and_status(stack: Stack, job: dict) -> None:
    assert _listed(stack, "--task", job["task"]) == [job["id"]]
    assert _listed(stack, "--task", job["task"], "--status", "completed") == [job["id"]]
    assert _listed(stack, "--task", job["task"], "--status", "running") == []
    terminated = _listed(stack, "--status", "terminated")  # admin also sees workflows without a job row
    assert job["decoy"] in terminated and job["id"] not in terminated
    bad = _cli(stack, "jobs", "list", "--task", "no'such")
    assert bad.returncode == 2 and "task_name:" in bad.stderr


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """(width, height, filtered scanlines) of a non-interlaced PNG, read with the standard library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_web_ui_filtered_by_task_shows_the_job(chromium, stack: Stack, job: dict, tmp_path: Path) -> None:
    c = stack.config
    query = quote(f'SyllabusTask="{job["task"]}"')  # what the UI's filter bar writes into the address
    url = f"{c.temporal_ui_url}/namespaces/{c.temporal_namespace}/workflows?query={query}"
    dom = chromium("--dump-dom", "--window-size=1400,900", url)
    assert job["id"] in dom.stdout, f"the filtered Web UI does not show {job['id']}: {dom.stderr[-1000:]}"
    assert job["decoy"] not in dom.stdout  # another task's workflow is filtered out
    assert "SyllabusTask" in dom.stdout  # the filter the page applied

    shot = tmp_path / "temporal-ui-by-task.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1400,900", url)
    assert shot.is_file(), result.stderr[-1000:]
    width, height, pixels = _png_pixels(shot)
    assert (width, height) == (1400, 900)
    # Not blank: a rendered page of text and tables has many distinct byte values, a blank one a few.
    assert len(set(pixels)) > 64 and shot.stat().st_size > 20_000, shot
    print(f"screenshot: {shot}")
