"""Search attributes on every job's workflow, so Temporal (its API, the Web UI, `temporal workflow list`)
can find jobs by task, tenant, round and status.

    SyllabusTask    Keyword  the task spec's name                       set by the gateway at start
    SyllabusTenant  Keyword  the tenant that submitted the job ("admin") set by the gateway at start
    SyllabusRound   Int      the round in progress (0: before round 1)   set at start, upserted each round
    SyllabusStatus  Keyword  running | completed | failed | cancelled    set at start, upserted at the end

A namespace must have them registered before a workflow may carry them: the embedded stack's dev
server registers them at start (`--search-attribute`, see `dev_server_flags`); on a cluster an operator
registers them once per namespace (`temporal operator search-attribute create`, deploy/README.md).
The gateway sets them only where they are registered, and a workflow started without them (by an
older gateway, or a test) upserts nothing, so jobs run either way; only the search is missing.

A terminated or timed-out workflow cannot update its own SyllabusStatus (it stays "running"): `job_query`
pairs the attribute with Temporal's ExecutionStatus, which the server keeps for every workflow.
Workflow code may import this module: it imports nothing but temporalio.
"""

from __future__ import annotations

import logging
import re

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

log = logging.getLogger(__name__)

TASK = SearchAttributeKey.for_keyword("SyllabusTask")
TENANT = SearchAttributeKey.for_keyword("SyllabusTenant")
ROUND = SearchAttributeKey.for_int("SyllabusRound")
STATUS = SearchAttributeKey.for_keyword("SyllabusStatus")
KEYS = (TASK, TENANT, ROUND, STATUS)
# The type names that `temporal ... --search-attribute NAME=TYPE` and `--type TYPE` take.
_TYPE_NAMES = {TASK: "Keyword", TENANT: "Keyword", ROUND: "Int", STATUS: "Keyword"}

RUNNING, COMPLETED, FAILED, CANCELLED, TERMINATED = "running", "completed", "failed", "cancelled", "terminated"
STATUSES = (RUNNING, COMPLETED, FAILED, CANCELLED, TERMINATED)
"""What `job_query` filters on; the workflow itself sets the first four (it cannot outlive a termination)."""

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # task names and tenants: no quoting needed


def dev_server_flags() -> list[str]:
    """`temporal server start-dev` arguments that register the attributes (idempotent across restarts)."""
    return [arg for key in KEYS for arg in ("--search-attribute", f"{key.name}={_TYPE_NAMES[key]}")]


def create_commands(namespace: str) -> list[str]:
    """The `temporal` CLI commands that register the attributes on a cluster's namespace (docs, logs)."""
    return [
        f"temporal operator search-attribute create --namespace {namespace} --name {key.name} --type {_TYPE_NAMES[key]}"
        for key in KEYS
    ]


async def registered(client, namespace: str) -> bool:
    """Whether `namespace` has all four attributes with the right types (a read; registers nothing)."""
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.service import RPCError

    try:
        resp = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    except RPCError as e:
        log.warning("cannot list the search attributes of namespace %s: %s", namespace, e.message)
        return False
    have = dict(resp.custom_attributes)
    missing = [key.name for key in KEYS if have.get(key.name) != key.indexed_value_type.value]
    if missing:
        log.warning(
            "namespace %s lacks the search attributes %s: jobs run, but cannot be searched by task, tenant, round "
            "or status. Register them once: %s", namespace, ", ".join(missing), "; ".join(create_commands(namespace)),
        )
    return not missing


def start_attributes(task: str, tenant: str) -> TypedSearchAttributes:
    """The attributes a job's workflow starts with (the gateway's SubmitJob)."""
    return TypedSearchAttributes(
        [SearchAttributePair(TASK, task), SearchAttributePair(TENANT, tenant), SearchAttributePair(ROUND, 0),
         SearchAttributePair(STATUS, RUNNING)]
    )


def upsert(*, round: int | None = None, status: str | None = None) -> None:
    """In workflow code: record the round in progress and/or the job's status, if the workflow was
    started with the Syllabus attributes (otherwise its namespace may not have them: do nothing)."""
    if workflow.info().typed_search_attributes.get(TASK) is None:
        return
    updates = []
    if round is not None:
        updates.append(ROUND.value_set(round))
    if status is not None:
        updates.append(STATUS.value_set(status))
    if updates:
        workflow.upsert_search_attributes(updates)


def job_query(workflow_type: str, *, task: str = "", status: str = "", tenant: str = "") -> str:
    """A Temporal visibility query for the `workflow_type` workflows (jobs) of `task` with `status` owned
    by `tenant` ("" = any).

    Raises ValueError naming the bad argument (task names and tenants are plain identifiers)."""
    clauses = [f"WorkflowType = '{workflow_type}'"]
    for name, key, value in (("task_name", TASK, task), ("tenant", TENANT, tenant)):
        if value:
            if not _SAFE.match(value):
                raise ValueError(f"{name}: {value[:60]!r} is not a task name (letters, digits, '.', '_' or '-')")
            clauses.append(f"{key.name} = '{value}'")
    if status == RUNNING:
        clauses.append(f"{STATUS.name} = '{RUNNING}' AND ExecutionStatus = 'Running'")
    elif status == TERMINATED:
        clauses.append("ExecutionStatus IN ('Terminated', 'TimedOut')")
    elif status in (COMPLETED, FAILED, CANCELLED):
        clauses.append(f"{STATUS.name} = '{status}'")
    elif status:
        raise ValueError(f"status: {status[:40]!r} is not one of {', '.join(STATUSES)}")
    return " AND ".join(clauses)
