"""Search attributes (orchestrator.search): the visibility query the gateway builds, and the workflow
helper that upserts round and status only on a workflow started with the attributes."""

from __future__ import annotations

import re
import shutil
import sys
import uuid
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from orchestrator import search

TEMPORAL = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")


@workflow.defn
class RoundsWorkflow:
    """Upserts what DistillationWorkflow does: each round, then the final status."""

    @workflow.run
    async def run(self, rounds: int) -> int:
        for r in range(1, rounds + 1):
            search.upsert(round=r)
            await workflow.sleep(0.01)
        search.upsert(status=search.COMPLETED)
        return rounds


async def _run(client: Client, **start) -> str:
    queue = f"search-{uuid.uuid4()}"
    async with Worker(client, task_queue=queue, workflows=[RoundsWorkflow], workflow_runner=UnsandboxedWorkflowRunner()):
        handle = await client.start_workflow(RoundsWorkflow.run, 2, id=f"wf-{uuid.uuid4()}", task_queue=queue, **start)
        assert await handle.result() == 2
    return handle.id


@pytest.mark.unit
def test_job_query() -> None:
    q = search.job_query("DistillationWorkflow", task="banking77", status="completed", tenant="acme")
    assert q == ("WorkflowType = 'DistillationWorkflow' AND SyllabusTask = 'banking77' AND SyllabusTenant = 'acme' "
                 "AND SyllabusStatus = 'completed'")
    # A terminated workflow never updates its own attribute: running also asks Temporal's own status.
    assert search.job_query("W", status="running").endswith("SyllabusStatus = 'running' AND ExecutionStatus = 'Running'")
    assert search.job_query("W", status="terminated").endswith("ExecutionStatus IN ('Terminated', 'TimedOut')")
    assert search.job_query("W") == "WorkflowType = 'W'"
    with pytest.raises(ValueError, match="task_name: \"x' OR 'a'='a\" is not a task name"):
        search.job_query("W", task="x' OR 'a'='a")
    with pytest.raises(ValueError, match="status: 'done' is not one of running, completed"):
        search.job_query("W", status="done")


@pytest.mark.unit
def test_dev_server_flags_and_cluster_commands_name_the_same_attributes() -> None:
    flags = search.dev_server_flags()
    assert flags[1::2] == ["SyllabusTask=Keyword", "SyllabusTenant=Keyword", "SyllabusRound=Int", "SyllabusStatus=Keyword"]
    assert set(flags[::2]) == {"--search-attribute"}
    assert search.create_commands("prod")[2] == (
        "temporal operator search-attribute create --namespace prod --name SyllabusRound --type Int"
    )


@pytest.mark.unit
def test_the_chart_and_the_cluster_docs_register_the_same_attributes() -> None:
    root = Path(__file__).resolve().parents[2]
    chart = (root / "deploy/helm/syllabus/templates/temporal.yaml").read_text()
    flags = search.dev_server_flags()
    assert re.findall(r"- (--search-attribute=\S+)", chart) == [f"{f}={v}" for f, v in zip(flags[::2], flags[1::2])]
    docs = (root / "deploy/README.md").read_text()
    assert all(cmd in docs for cmd in search.create_commands("syllabus"))


@pytest.mark.integration
async def test_without_registered_attributes_jobs_still_run(temporal_env: WorkflowEnvironment) -> None:
    # The session's dev server has none of the attributes: the gateway would start workflows without
    # them, and the workflow then upserts nothing (an upsert of an unknown attribute fails its task).
    assert not await search.registered(temporal_env.client, "default")
    await _run(temporal_env.client)


@pytest.mark.integration
async def test_round_and_status_are_upserted_and_searchable() -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=TEMPORAL, dev_server_log_level="error", search_attributes=search.KEYS
    )
    try:
        client = env.client
        assert await search.registered(client, "default")
        task = f"task-{uuid.uuid4().hex[:8]}"
        wf_id = await _run(client, search_attributes=search.start_attributes(task, "acme"))
        attrs = (await client.get_workflow_handle(wf_id).describe()).typed_search_attributes
        assert [attrs.get(k) for k in search.KEYS] == [task, "acme", 2, "completed"]

        async def ids(**kw) -> list[str]:
            return [w.id async for w in client.list_workflows(search.job_query(RoundsWorkflow.__name__, **kw))]

        assert await ids(task=task, status="completed", tenant="acme") == [wf_id]
        assert await ids(task=task, status="running") == []
        assert await ids(task=task, tenant="other") == []
    finally:
        await env.shutdown()
