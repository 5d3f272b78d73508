"""JobService: the public gRPC gateway that starts, queries, watches and cancels distillation jobs.

Run: python -m orchestrator.gateway [--address HOST:PORT]     (env: SYLLABUS_*; see syllabus/config.py)

Metrics at SYLLABUS_GATEWAY_METRICS_PORT; with SYLLABUS_OTLP_ENDPOINT each job's trace starts at its SubmitJob.

Each job is one `DistillationWorkflow` whose workflow id is the job id. The gateway validates the
task spec (INVALID_ARGUMENT naming the problem, nothing started), stores it as an artifact, records
the job in SQL and starts the workflow. Job state comes from Temporal: the workflow's `progress`
query while it runs, its result once completed, and the pending activity's heartbeat for step detail.
A running job's ETAs (the step's and the job's) price its remaining plan with the durations of the
steps it already timed (`orchestrator.eta`); a training step's heartbeat (step/total) refines its own.

Search: each job's workflow carries the SyllabusTask, SyllabusTenant, SyllabusRound and SyllabusStatus
search attributes (`orchestrator.search`) where the namespace has them registered; ListJobs with a task
name or status filter finds jobs through them.

Tenancy: every job row names the tenant whose token submitted it (`db.ADMIN_JOBS_TENANT` for the admin
token). Get, Watch, Cancel, List and Lineage only ever show the caller's own jobs (admin: all); another
tenant's job answers NOT_FOUND exactly as a missing one does. Job ids are one namespace: a job id is
owned by its first submission, and resubmitting it is idempotent only with the same task (sha256 of the
canonical task) from a caller who sees the job; anything else is ALREADY_EXISTS, and the stored task
artifact is never overwritten.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from orchestrator import search
from orchestrator.eta import estimate
from orchestrator.keys import CHILD_ID_SUFFIX
from orchestrator.metadata import Metadata
from orchestrator.types import DistillationInput, JobProgress
from orchestrator.workflows import DistillationWorkflow
from syllabus import db
from syllabus.artifacts import open_store
from syllabus.auth import ADMIN_ROLE, TENANT_ROLE, Principal, current_principal, gateway_table, server_tls
from syllabus.config import Config, load_config
from syllabus.serving import Served, build_server, serve
from syllabus.tasks import MAX_TASK_BYTES, TaskSpecError, dump_task, parse_task
from syllabus.telemetry import setup_tracing, start_metrics, temporal_connect_options
from syllabus_sdk.jobs.v1 import jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STATUS = {
    WorkflowExecutionStatus.RUNNING: jobs_pb2.JOB_STATUS_RUNNING,
    WorkflowExecutionStatus.CONTINUED_AS_NEW: jobs_pb2.JOB_STATUS_RUNNING,
    WorkflowExecutionStatus.COMPLETED: jobs_pb2.JOB_STATUS_COMPLETED,
    WorkflowExecutionStatus.FAILED: jobs_pb2.JOB_STATUS_FAILED,
    WorkflowExecutionStatus.CANCELED: jobs_pb2.JOB_STATUS_CANCELLED,
    WorkflowExecutionStatus.TERMINATED: jobs_pb2.JOB_STATUS_TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT: jobs_pb2.JOB_STATUS_TERMINATED,
}
WATCH_POLL_SECONDS = 0.5
QUERY_TIMEOUT = timedelta(seconds=3)  # a query waits for a worker; do not hang a GetJob on a dead one
SEARCH_RECHECK_SECONDS = 60.0  # how often to look again for search attributes the namespace lacked
_SEARCH_STATUS = {
    jobs_pb2.JOB_STATUS_RUNNING: search.RUNNING,
    jobs_pb2.JOB_STATUS_COMPLETED: search.COMPLETED,
    jobs_pb2.JOB_STATUS_FAILED: search.FAILED,
    jobs_pb2.JOB_STATUS_CANCELLED: search.CANCELLED,
    jobs_pb2.JOB_STATUS_TERMINATED: search.TERMINATED,
}


@dataclass
class _Snapshot:
    status: int
    progress: JobProgress | None
    step_detail: str
    error: str
    created_at: Timestamp
    step_units: tuple[int, int] | None = None  # (done, total) of the running step, from its heartbeat


def web_ui_url(config: Config, job_id: str) -> str:
    return f"{config.temporal_ui_url.rstrip('/')}/namespaces/{config.temporal_namespace}/workflows/{job_id}"


def _detail(heartbeat: dict) -> str:
    """Human-readable progress from an activity's heartbeat details."""
    if not isinstance(heartbeat, dict):
        return str(heartbeat)
    if "step" in heartbeat and "total" in heartbeat:
        loss = f" loss {heartbeat['loss']:.3f}" if isinstance(heartbeat.get("loss"), (int, float)) else ""
        return f"step {heartbeat['step']}/{heartbeat['total']}{loss}"
    if set(heartbeat) <= {"service_ticks", "service_busy"}:  # only the service's own progress
        return f"service at work ({heartbeat.get('service_ticks', 0)} model steps so far)"
    return ", ".join(f"{k} {v}" for k, v in heartbeat.items() if not k.startswith("service_"))


def _failure_text(e: BaseException) -> str:
    """The failure chain as one line, innermost cause last: 'Activity task failed: ...: <root cause>'."""
    parts, seen = [], set()
    cur: BaseException | None = e.cause if isinstance(e, WorkflowFailureError) else e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        msg = getattr(cur, "message", None) or str(cur)
        if msg and msg not in parts:
            parts.append(msg)
        cur = cur.__cause__ or getattr(cur, "cause", None)
    return ": ".join(parts) or str(e)


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """Implements syllabus.jobs.v1.JobService on top of a Temporal client."""

    def __init__(self, config: Config, client: Client) -> None:
        self.config = config
        self.client = client
        self.store = open_store(config.resolved_artifact_url(), config)
        # The gateway creates each job's row (the only place that does), through the metadata module.
        self.metadata = Metadata(config.resolved_database_url())
        self.sessions = self.metadata.sessions()  # reads
        self._searchable = False  # the namespace has the search attributes (once seen, for good)
        self._search_checked = float("-inf")  # loop time of the last look

    # -- RPCs ---------------------------------------------------------------------------------

    async def SubmitJob(self, request, context):
        try:
            # Off the event loop: parsing and validating a large task is CPU work, and health checks,
            # other tenants' calls and shutdown must not wait behind it.
            task = await asyncio.to_thread(parse_task, request.task_yaml, source="task_yaml", inline_only=True)
        except TaskSpecError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        job_id = request.job_id or f"{task.name}-{uuid.uuid4().hex[:8]}"
        if not JOB_ID_RE.match(job_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: use letters, digits, '.', '_' or '-' (max 128)")
        if CHILD_ID_SUFFIX.search(job_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: a '-tailor-N' or '-baseline-ARM-N' ending is reserved for a job's own steps")
        for field, base in _model_fields(task):
            if not self.config.model_allowed(base):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"{field}: {base[:200]!r} is not among the models this server allows (allowed_models)")  # fmt: skip
        stages = task.train.recipe.stages if task.train.recipe is not None else ()
        full = next((i for i, st in enumerate(stages) if st.lora is None), None)
        if full is not None and not self.config.allow_full_finetune:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"train.recipe.stages[{full}].lora: full fine-tuning is off on this server (allow_full_finetune); "
                                "give the stage a LoRA")  # fmt: skip
        principal = current_principal()
        if self.config.max_running_jobs and principal.role != ADMIN_ROLE:
            with self.sessions() as s:
                running = s.execute(select(func.count()).select_from(db.Job).where(
                    db.Job.tenant == principal.tenant, db.Job.status == "running", db.Job.id != job_id)).scalar_one()  # fmt: skip
            if running >= self.config.max_running_jobs:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"tenant {principal.tenant!r} has {running} running jobs, the most this server allows "
                                    f"(max_running_jobs); cancel one or wait for one to finish")  # fmt: skip
        if principal.role != ADMIN_ROLE and (why := await asyncio.to_thread(
                self.metadata.over_training_quota, None, principal.tenant, self.config.tenant_training_tokens_per_day)):  # fmt: skip
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        canonical = dump_task(task).encode()
        digest = hashlib.sha256(canonical).hexdigest()
        task_key = f"jobs/{job_id}/task.yaml"
        artifacts_uri = self.store.uri_for(task_key).removesuffix("task.yaml")
        # The job row claims the id atomically (primary key); the first submission owns it.
        row = self.metadata.claim_job(
            {"id": job_id, "tenant": _tenant_of(principal), "task_name": task.name, "task_yaml": request.task_yaml,
             "task_sha256": digest, "rounds_total": task.rounds, "artifacts_uri": artifacts_uri, "status": "running"}
        )
        claimed = row is None
        stored = await asyncio.to_thread(self.store.stat, task_key)
        if row is not None and not (principal.sees(row.tenant) and (row.task_sha256 or _sha(stored)) == digest):
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, _taken(job_id))
        if stored is not None and stored.sha256 != digest:
            # A task artifact this id's row does not account for (a store kept across a database reset):
            # never overwrite it, and give the id back.
            if claimed:
                self.metadata.release_job(job_id)
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, _taken(job_id))
        try:
            await self._start(job_id, task, stored or await asyncio.to_thread(self.store.put_bytes, task_key, canonical), principal)
        except Exception as e:  # Temporal or the store down: said below, logged here
            # Nothing started: give the id back, so the same submission can simply be sent again (a
            # kept row without a workflow would hold the id for good).
            if claimed:
                self.metadata.release_job(job_id)
            log.warning("job %s not started", job_id, exc_info=e)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "could not start the job (Temporal or the artifact store "
                                "is unreachable); nothing was started, submit it again")  # fmt: skip
        return jobs_pb2.SubmitJobResponse(job=await self._job(job_id, context))

    async def _start(self, job_id: str, task, task_ref, principal: Principal) -> None:
        """Start the job's workflow; a running or finished one of this id stays as it is."""
        attributes = search.start_attributes(task.name, _tenant_of(principal)) if await self._search_ready() else None
        inp = DistillationInput(
            job_id=job_id,
            task_ref=task_ref,
            rounds=task.rounds,
            heartbeat_timeout_s=self.config.activity_heartbeat_timeout_s,
        )
        try:
            # USE_EXISTING: submitting the same job id again returns the running job instead of a second
            # run; REJECT_DUPLICATE: nor does it start a finished job over.
            await self.client.start_workflow(
                DistillationWorkflow.run,
                inp,
                id=job_id,
                task_queue=self.config.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=attributes,
            )
        except WorkflowAlreadyStartedError:
            pass
        except RPCError as e:
            if e.status != RPCStatusCode.ALREADY_EXISTS:
                raise

    async def GetJob(self, request, context):
        return jobs_pb2.GetJobResponse(job=await self._job(request.job_id, context))

    async def ListJobs(self, request, context):
        limit = request.limit or 50
        if limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit: must be >= 0")
        principal = current_principal()
        if request.task_name or request.status:
            ids = await self._search_jobs(request, limit, principal, context)
            return jobs_pb2.ListJobsResponse(jobs=[await self._job(job_id, context, light=True) for job_id in ids])
        stmt = select(db.Job.id).order_by(db.Job.created_at.desc()).limit(limit)
        if principal.role != ADMIN_ROLE:
            stmt = stmt.where(db.Job.tenant == principal.tenant)
        with self.sessions() as s:
            ids = s.execute(stmt).scalars().all()
        jobs = [await self._job(job_id, context, light=True) for job_id in ids]
        return jobs_pb2.ListJobsResponse(jobs=jobs)

    async def WatchJob(self, request, context):
        last = None
        while True:
            job = await self._job(request.job_id, context)
            if job != last:
                yield jobs_pb2.WatchJobResponse(job=job)
                last = job
            if job.status not in (jobs_pb2.JOB_STATUS_RUNNING, jobs_pb2.JOB_STATUS_UNSPECIFIED):
                return
            await asyncio.sleep(WATCH_POLL_SECONDS)

    async def CancelJob(self, request, context):
        job = await self._job(request.job_id, context)
        if job.status == jobs_pb2.JOB_STATUS_RUNNING:
            await self.client.get_workflow_handle(request.job_id).cancel()
        return jobs_pb2.CancelJobResponse(job=await self._job(request.job_id, context))

    async def GetLineage(self, request, context):
        from syllabus.lineage import sample_lineage, training_run_lineage

        target = request.WhichOneof("target")
        if target is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "target: set sample_id or training_run_id")
        principal = current_principal()
        with self.sessions() as s:
            if target == "sample_id":
                samples = sample_lineage(s, request.sample_id, request.job_id)
                # Only the caller's jobs: another tenant's sample is as absent as a missing one.
                tenants = _tenants(s, {x.job_id for x in samples})
                samples = [x for x in samples if principal.sees(tenants.get(x.job_id))]
                if not samples:
                    where = f" in job {request.job_id!r}" if request.job_id else ""
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"sample {request.sample_id!r} not found{where}")
                return jobs_pb2.GetLineageResponse(samples=samples)
            run = training_run_lineage(s, request.training_run_id)
            if run is None or not principal.sees(_tenants(s, {run.job_id}).get(run.job_id)):
                await context.abort(grpc.StatusCode.NOT_FOUND, f"training run {request.training_run_id} not found")
            return jobs_pb2.GetLineageResponse(training_run=run)

    # -- helpers ------------------------------------------------------------------------------

    async def _search_ready(self) -> bool:
        """Whether job workflows may carry the search attributes (the namespace has them registered)."""
        now = asyncio.get_running_loop().time()
        if not self._searchable and now - self._search_checked >= SEARCH_RECHECK_SECONDS:
            self._search_checked = now
            self._searchable = await search.registered(self.client, self.config.temporal_namespace)
        return self._searchable

    async def _search_jobs(self, request, limit: int, principal: Principal, context) -> list[str]:
        """Ids of the caller's jobs matching the request's task name and status, newest first, found
        through Temporal's visibility store by the jobs' search attributes."""
        if request.status and request.status not in _SEARCH_STATUS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"status: unknown value {request.status}")
        try:
            query = search.job_query(
                DistillationWorkflow.__name__, task=request.task_name, status=_SEARCH_STATUS.get(request.status, ""),
                tenant="" if principal.role == ADMIN_ROLE else principal.tenant,
            )
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not await self._search_ready():
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Temporal namespace {self.config.temporal_namespace!r} lacks the Syllabus search attributes, so jobs "
                f"cannot be listed by task or status; register them: {'; '.join(search.create_commands(self.config.temporal_namespace))}",
            )
        try:
            found = [w async for w in self.client.list_workflows(query, limit=limit)]
        except RPCError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"Temporal: {e.message}")
        found.sort(key=lambda w: w.start_time, reverse=True)
        ids = list(dict.fromkeys(w.id for w in found))
        # The job rows decide visibility, as for every other RPC: a tenant sees only its own rows.
        with self.sessions() as s:
            tenants = _tenants(s, set(ids))
        return [i for i in ids if (principal.sees(tenants[i]) if i in tenants else principal.role == ADMIN_ROLE)]

    async def _snapshot(self, handle: WorkflowHandle, light: bool) -> _Snapshot:
        desc = await handle.describe()
        status = _STATUS.get(desc.status, jobs_pb2.JOB_STATUS_UNSPECIFIED)
        created = Timestamp()
        created.FromDatetime(desc.start_time)
        progress, detail, error, units = None, "", "", None
        if status == jobs_pb2.JOB_STATUS_COMPLETED:
            progress = await handle.result()
        elif status == jobs_pb2.JOB_STATUS_FAILED:
            try:
                await handle.result()
            except WorkflowFailureError as e:
                error = _failure_text(e)
        elif status == jobs_pb2.JOB_STATUS_RUNNING and not light and desc.history_length > 2:
            # history_length <= 2: started but no worker has picked it up, so a query could only time out.
            try:
                progress = await handle.query(DistillationWorkflow.progress, rpc_timeout=QUERY_TIMEOUT)
            except RPCError:
                progress = None  # no worker is answering (yet): report what Temporal alone knows
            for pending in desc.raw_description.pending_activities:
                if pending.heartbeat_details.payloads:
                    (hb,) = await self.client.data_converter.decode(pending.heartbeat_details.payloads[:1])
                    detail = _detail(hb)
                    if isinstance(hb, dict) and isinstance(hb.get("step"), int) and isinstance(hb.get("total"), int):
                        units = (hb["step"], hb["total"])
        return _Snapshot(status, progress, detail, error, created, units)

    async def ExportTrainingSet(self, request, context):
        from syllabus.export import ExportError, training_set
        from syllabus.records import dumps_jsonl

        if request.round < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"round: must be >= 1, got {request.round}")
        await self._visible(request.job_id, context)
        try:
            with self.sessions() as s:
                records = await asyncio.to_thread(training_set, s, request.job_id, request.round, self.store)
        except ExportError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        return jobs_pb2.ExportTrainingSetResponse(records_jsonl=dumps_jsonl(records), count=len(records))

    async def GetJobReport(self, request, context):
        from syllabus.report_data import ReportDataError, job_report_data

        await self._visible(request.job_id, context)
        try:
            with self.sessions() as s:
                data = await asyncio.to_thread(job_report_data, s, self.store, request.job_id)
        except ReportDataError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        return jobs_pb2.GetJobReportResponse(report_json=json.dumps(data))

    async def _visible(self, job_id: str, context) -> db.Job | None:
        """The job's row if the caller may see the job; NOT_FOUND otherwise."""
        if not job_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: required")
        with self.sessions() as s:
            row = s.get(db.Job, job_id)
        # Another tenant's job is NOT_FOUND exactly as a missing one is; only admin sees a workflow
        # that has no job row (started outside the gateway).
        principal = current_principal()
        if not (principal.sees(row.tenant) if row is not None else principal.role == ADMIN_ROLE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found")
        return row

    async def _job(self, job_id: str, context, light: bool = False) -> jobs_pb2.Job:
        row = await self._visible(job_id, context)
        handle = self.client.get_workflow_handle(job_id, result_type=JobProgress)
        try:
            snap = await self._snapshot(handle, light)
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                if row is not None:  # the row outlived its workflow (retention): what the row knows
                    return _row_job(row, self.config)
                await context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"Temporal: {e.message}")
        job = jobs_pb2.Job(
            job_id=job_id,
            status=snap.status,
            created_at=snap.created_at,
            web_ui_url=web_ui_url(self.config, job_id),
            step_detail=snap.step_detail,
            error=snap.error,
        )
        if row is not None:
            job.task_name = row.task_name
            job.rounds_total = row.rounds_total
            job.artifacts_uri = row.artifacts_uri
        p = snap.progress
        if p is not None:
            job.rounds_total = p.rounds_total
            job.current_round = p.current_round
            job.current_step = p.current_step if snap.status == jobs_pb2.JOB_STATUS_RUNNING else ""
            if p.baseline_accuracy is not None:
                job.baseline_accuracy = p.baseline_accuracy
            if p.final_accuracy is not None:
                job.final_accuracy = p.final_accuracy
            job.artifacts_uri = p.artifacts_uri or job.artifacts_uri
            job.rounds.extend(
                jobs_pb2.RoundSummary(
                    round=r.round, generated=r.generated, kept=r.kept, selected=r.selected, trained=r.trained,
                    accuracy=r.accuracy, train_loss=r.train_loss, adapter_uri=r.adapter_uri, leaked=r.leaked, targeted=r.targeted,
                    critique_dropped=r.dropped, candidates=r.candidates, selection_dropped=r.selection_dropped,
                    reasoning={m: jobs_pb2.ReasoningCounts(**c) for m, c in r.reasoning.items()},
                    teacher_adapter_uri=r.teacher_adapter_uri, tailor_pairs=r.tailor_pairs, tailor_skipped=r.tailor_skipped,
                    win_rate=r.win_rate, parsing={s: jobs_pb2.ParseCounts(**c) for s, c in r.parsing.items()},
                    car=[jobs_pb2.MethodCar(method=c.method, produced=c.produced, kept=c.kept, reward=c.reward,
                                            loss=c.loss, car=c.car) for c in r.car],
                    budget=r.budget,
                )
                for r in p.rounds
            )
            job.steps.extend(jobs_pb2.StepTiming(name=t.name, round=t.round, seconds=t.seconds) for t in p.steps)
            job.baselines.extend(
                jobs_pb2.BaselineArm(arm=b.arm, comparison=b.comparison, rounds=[
                    jobs_pb2.BaselineRound(
                        round=a.round, accuracy=a.accuracy, repeat_accuracies=[x.accuracy for x in a.runs],
                        trained=a.runs[0].trained if a.runs else 0, lift=a.lift, ci_low=a.ci_low, ci_high=a.ci_high,
                        verdict=a.verdict, adapter_uris=[x.adapter.uri for x in a.runs],
                    ) for a in b.rounds
                ])
                for b in p.baselines
            )  # fmt: skip
            if snap.status == jobs_pb2.JOB_STATUS_RUNNING:
                if not job.step_detail and p.step_note:
                    job.step_detail = p.step_note
                elapsed = max(0.0, time.time() - p.step_started_at) if p.step_started_at else 0.0
                step_eta, job_eta = estimate(p.planned, p.steps, p.current_round, p.current_step, elapsed, snap.step_units)
                if step_eta is not None:
                    job.step_eta_s = round(step_eta, 1)
                if job_eta is not None:
                    job.job_eta_s = round(job_eta, 1)
        return job


def _tenant_of(principal: Principal) -> str:
    return db.ADMIN_JOBS_TENANT if principal.role == ADMIN_ROLE else principal.tenant


def _sha(ref) -> str:
    return ref.sha256 if ref is not None else ""


#: A job row's final status (rows and search attributes share one vocabulary) where its workflow is
#: gone (Temporal's retention removed it); a row still "running" has none.
_ROW_STATUS = {name: code for code, name in _SEARCH_STATUS.items() if name != search.RUNNING}


def _row_job(row: db.Job, config: Config) -> jobs_pb2.Job:
    """A job from its SQL row alone: its workflow's history is gone, so no steps or rounds; a row
    still "running" (its workflow vanished before it finished) says so in `error`."""
    job = jobs_pb2.Job(job_id=row.id, status=_ROW_STATUS.get(row.status, jobs_pb2.JOB_STATUS_UNSPECIFIED),
                       task_name=row.task_name, rounds_total=row.rounds_total, artifacts_uri=row.artifacts_uri,
                       web_ui_url=web_ui_url(config, row.id))  # fmt: skip
    job.created_at.FromDatetime(row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC))
    if row.baseline_accuracy is not None:
        job.baseline_accuracy = row.baseline_accuracy
    if row.final_accuracy is not None:
        job.final_accuracy = row.final_accuracy
    if row.status not in _ROW_STATUS:
        job.error = "its workflow is gone from Temporal (retention, or removed) before the job finished"
    return job


def _model_fields(task) -> list[tuple[str, str]]:
    """(field, model base) of every model a task names."""
    out = [("student.model", task.student.model)]
    out += [(f"teachers[{i}].model" if task.teachers else "teacher.model", t.model) for i, t in enumerate(task.teacher_list)]
    if task.score.model is not None:
        out.append(("score.model", task.score.model.model))
    return out


def _taken(job_id: str) -> str:
    # The same words whoever owns the id: nothing says whether it is another tenant's job.
    return f"job_id: {job_id!r} already exists with another task; resubmit the same task or choose another job_id"


def _tenants(s, job_ids: set[str]) -> dict[str, str]:
    """job id -> tenant for the job rows among `job_ids`."""
    if not job_ids:
        return {}
    return dict(s.execute(select(db.Job.id, db.Job.tenant).where(db.Job.id.in_(job_ids))).all())


async def create_server(config: Config, address: str = "127.0.0.1:0", client: Client | None = None) -> Served:
    """Start the gateway (health NOT_SERVING until `await served.set_serving(True)`)."""
    client = client or await Client.connect(config.temporal_address, **temporal_connect_options(config))
    servicer = JobServicer(config, client)
    return await build_server(
        address,
        lambda server: jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, server),
        (jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,),
        gateway_table(config),
        roles=frozenset({TENANT_ROLE, ADMIN_ROLE}),
        max_receive_mb=(MAX_TASK_BYTES >> 20) + 1,  # a task with its examples inline, and the request around it
        max_concurrent_rpcs=256,  # every CLI `run` holds a WatchJob stream for its whole job
        tls=server_tls(config),
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="listen host:port (default: SYLLABUS_GATEWAY_ADDRESS)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_config()
    setup_tracing(config, "gateway")  # a job's trace starts at its SubmitJob
    start_metrics("gateway", config.gateway_metrics_port, config.metrics_host)

    async def _main() -> None:
        served = await create_server(config, args.address or config.gateway_address)
        await serve(served)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
