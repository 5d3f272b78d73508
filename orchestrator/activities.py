"""Thin activities: each one calls one service (or does one small data step) and records metadata in SQL.

Every activity is idempotent. Its output key is derived from the job, round, step, the sha256 of its
input artifacts and its parameters (`orchestrator.keys.output_key`); before calling a service it
looks for that key in the artifact store and, if the output is already published, uses it without
calling the service. SQL rows are always (re)derived from the output artifact and written with
`insert_ignore`, so a retry after a crash between "artifact written" and "rows written" completes the
rows and a retry after both duplicates nothing.

Heavy modules (grpc, the generated stubs, SQLAlchemy, pydantic task specs) are imported inside the
methods, so importing this module (as the workflow sandbox and the gateway do) stays cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator.keys import job_prefix, output_key
from orchestrator.types import (
    AnalyzeInput,
    AnalyzeOutput,
    CritiqueInput,
    CritiqueOutput,
    EvaluateInput,
    EvaluateOutput,
    FinishJobInput,
    FinishJobOutput,
    GenerateInput,
    GenerateOutput,
    PrepareJobInput,
    PrepareJobOutput,
    ScoreInput,
    ScoreOutput,
    SelectInput,
    SelectOutput,
    TrainInput,
    TrainOutput,
)
from syllabus.artifacts import ArtifactRef
from syllabus.records import content_id, dumps_jsonl, loads_jsonl
from syllabus.selection import top_fraction

if TYPE_CHECKING:
    import grpc
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from syllabus.artifacts import ArtifactStore
    from syllabus.config import Config
    from syllabus.db import Base
    from syllabus.tasks import TaskSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

# Status codes that no retry can fix: the request, an input or the model is wrong.
NON_RETRYABLE_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "DATA_LOSS"})
# Interval of background heartbeats while a unary call runs (the SDK throttles them further).
HEARTBEAT_EVERY_S = 5.0
# Scores the student computes, in SQL `scores.metric` spelling.
SCORE_METRICS = ("loss_base", "loss_ref", "learnability")


class _Heartbeater:
    """Heartbeats in the background while a long call runs, repeating the latest progress details."""

    def __init__(self) -> None:
        self.details: dict[str, Any] | None = None

    def update(self, details: dict[str, Any]) -> None:
        self.details = details
        activity.heartbeat(details)

    async def loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self.details is None:
                activity.heartbeat()
            else:
                activity.heartbeat(self.details)


@contextlib.asynccontextmanager
async def _heartbeating(every: float = HEARTBEAT_EVERY_S) -> AsyncIterator[_Heartbeater]:
    timeout = activity.info().heartbeat_timeout
    if timeout:  # beat well inside the timeout the workflow chose
        every = min(every, timeout.total_seconds() / 3)
    hb = _Heartbeater()
    task = asyncio.create_task(hb.loop(every))
    try:
        yield hb
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _rpc_failure(err: grpc.aio.AioRpcError, what: str) -> ApplicationError:
    code = err.code().name
    return ApplicationError(
        f"{what} failed: {code}: {err.details()}", type=code, non_retryable=code in NON_RETRYABLE_CODES
    )


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _sample_row(job_id: str, round_: int, split: str, record: dict, artifact_uri: str) -> dict:
    """A `samples` row from a dataset record, with the provenance fields lineage queries by."""
    prov = record.get("provenance") or {"method": split}
    return {
        "job_id": job_id,
        "sample_id": record["id"],
        "round": round_,
        "split": split,
        "input": record["input"],
        "label": record["label"],
        "parent_id": record.get("parent_id"),
        "provenance": prov,
        "artifact_uri": artifact_uri,
        "method": prov.get("method", split),
        "teacher_model": prov.get("model"),
        "teacher_revision": prov.get("revision"),
        "prompt_template_hash": prov.get("prompt_template_hash"),
    }


class Activities:
    """The orchestrator's activities; holds the artifact store and the SQL engine (created lazily)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._store: ArtifactStore | None = None
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskSpec] = {}

    # --- resources ---------------------------------------------------------------------------------

    @property
    def store(self) -> ArtifactStore:
        with self._lock:
            if self._store is None:
                from syllabus.artifacts import open_store

                self._store = open_store(self.config.resolved_artifact_url(), self.config)
            return self._store

    def _session_factory(self) -> sessionmaker[Session]:
        with self._lock:
            if self._sessions is None:
                from syllabus.db import make_engine, session_factory

                self._engine = make_engine(self.config.resolved_database_url())
                self._sessions = session_factory(self._engine)
            return self._sessions

    def close(self) -> None:
        """Dispose the SQL engine (the worker calls this on shutdown)."""
        if self._engine is not None:
            self._engine.dispose()

    def _insert_rows(self, model: type[Base], rows: list[dict]) -> int:
        from syllabus.db import insert_ignore

        with self._session_factory().begin() as session:
            return insert_ignore(session, model, rows)

    async def _record(self, model: type[Base], rows: list[dict]) -> int:
        """Insert rows, skipping existing ones (a retry duplicates nothing); returns how many were new."""
        return await asyncio.to_thread(self._insert_rows, model, rows)

    async def _record_artifacts(self, job_id: str, round_: int, refs: dict[str, ArtifactRef | None]) -> None:
        """Index published outputs (kind -> ref) in the `artifacts` table, once each."""
        from syllabus.db import Artifact

        rows = [
            {"job_id": job_id, "round": round_, "kind": kind, "uri": ref.uri, "sha256": ref.sha256, "size_bytes": ref.size_bytes}
            for kind, ref in refs.items()
            if ref is not None
        ]
        await self._record(Artifact, rows)

    def _read(self, ref: ArtifactRef) -> bytes:
        from syllabus.artifacts import ArtifactNotFound, ChecksumMismatch, InvalidKey

        try:
            return self.store.get_bytes(ref)
        except ArtifactNotFound as e:
            raise ApplicationError(str(e), type="NOT_FOUND", non_retryable=True) from e
        except ChecksumMismatch as e:
            raise ApplicationError(str(e), type="DATA_LOSS", non_retryable=True) from e
        except InvalidKey as e:
            raise ApplicationError(str(e), type="INVALID_ARGUMENT", non_retryable=True) from e

    def _read_jsonl(self, ref: ArtifactRef) -> list[dict]:
        return loads_jsonl(self._read(ref))

    def _publish_once(self, key: str, data: bytes) -> ArtifactRef:
        """Publish derived data at key unless the same bytes are already there."""
        import hashlib

        existing = self.store.stat(key)
        if existing is not None:
            if existing.sha256 != hashlib.sha256(data).hexdigest():
                raise ApplicationError(
                    f"artifact {key} exists with different content; refusing to overwrite it",
                    type="CONFLICT",
                    non_retryable=True,
                )
            return existing
        return self.store.put_bytes(key, data)

    def _task(self, ref: ArtifactRef) -> TaskSpec:
        """The task spec behind ref (parsed once per sha256)."""
        task = self._tasks.get(ref.sha256)
        if task is None:
            from syllabus.tasks import TaskSpecError, parse_task

            try:
                task = parse_task(self._read(ref).decode(), source=ref.uri)
            except TaskSpecError as e:
                raise ApplicationError(str(e), type="INVALID_ARGUMENT", non_retryable=True) from e
            self._tasks[ref.sha256] = task
        return task

    async def _unary(self, address: str, what: str, call: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        """Make one unary call on a fresh channel, heartbeating while it runs."""
        import grpc

        from syllabus import auth

        async with auth.channel(address, auth.service_token(self.config)) as channel, _heartbeating():
            try:
                return await call(channel)
            except grpc.aio.AioRpcError as e:
                raise _rpc_failure(e, what) from None

    # --- activities --------------------------------------------------------------------------------

    @activity.defn
    async def prepare_job(self, inp: PrepareJobInput) -> PrepareJobOutput:
        """Write the seed and eval sets as JSONL and record the job and its samples."""
        from syllabus.db import Job, Sample

        task = self._task(inp.task_ref)
        prefix = job_prefix(inp.job_id)
        seeds: dict[str, dict] = {}
        for ex in task.seeds:
            sid = content_id(ex.input, ex.label)
            seeds.setdefault(
                sid,
                {
                    "id": sid,
                    "input": ex.input,
                    "label": ex.label,
                    "prompt": task.prompt_for(ex.input),
                    "response": ex.label,
                    "parent_id": None,
                    "provenance": {"method": "seed"},
                },
            )
        evals: dict[str, dict] = {}
        for ex in task.eval:
            eid = content_id(ex.input, ex.label)
            evals.setdefault(
                eid, {"id": eid, "input": ex.input, "label": ex.label, "prompt": task.prompt_for(ex.input)}
            )
        seeds_ref = self._publish_once(f"{prefix}/seeds.jsonl", dumps_jsonl(seeds.values()))
        eval_ref = self._publish_once(f"{prefix}/eval.jsonl", dumps_jsonl(evals.values()))
        validation = {
            (vid := content_id(ex.input, ex.label)): {"id": vid, "input": ex.input, "label": ex.label, "prompt": task.prompt_for(ex.input)}
            for ex in (task.validation or task.seeds)
        }
        validation_ref = self._publish_once(f"{prefix}/validation.jsonl", dumps_jsonl(validation.values()))
        # A prefix, spelt as the gateway spells it (trailing slash).
        artifacts_uri = self.store.uri_for(prefix).rstrip("/") + "/"

        await self._record(
            Job,
            [
                {
                    "id": inp.job_id,
                    "task_name": task.name,
                    "task_yaml": self._read(inp.task_ref).decode(),
                    "status": "running",
                    "rounds_total": inp.rounds,
                    "artifacts_uri": artifacts_uri,
                }
            ],
        )
        rows = [
            _sample_row(inp.job_id, 0, split, r, ref.uri)
            for split, records, ref in (("seed", seeds, seeds_ref), ("eval", evals, eval_ref))
            for r in records.values()
        ]
        await self._record(Sample, rows)
        if task.validation:
            await self._record(Sample, [_sample_row(inp.job_id, 0, "validation", r, validation_ref.uri) for r in validation.values()])
        await self._record_artifacts(
            inp.job_id, 0, {"task": inp.task_ref, "seeds": seeds_ref, "eval": eval_ref, "validation": validation_ref}
        )
        return PrepareJobOutput(
            seeds=seeds_ref,
            eval_set=eval_ref,
            seed_count=len(seeds),
            eval_count=len(evals),
            artifacts_uri=artifacts_uri,
            validation=validation_ref,
        )

    @activity.defn
    async def evaluate_student(self, inp: EvaluateInput) -> EvaluateOutput:
        """StudentService.Evaluate on the eval set; records the Evaluation (and the Round, if given)."""
        from syllabus.db import Evaluation, Round
        from syllabus.pb import ref_from_pb, ref_to_pb
        from syllabus_sdk.common.v1 import common_pb2
        from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

        task = self._task(inp.task_ref)
        params = {"model": task.student.model, "kind": task.kind, "labels": task.labels}
        key = output_key(inp.job_id, inp.round, "evaluate", [inp.eval_set, inp.adapter], params, "jsonl")
        predictions = self.store.stat(key)
        if predictions is None:
            model = common_pb2.ModelRef(base=task.student.model)
            if inp.adapter is not None:
                model.adapter.CopyFrom(ref_to_pb(inp.adapter))
            request = student_pb2.EvaluateRequest(
                model=model,
                kind=common_pb2.TASK_KIND_CLASSIFICATION,
                eval_set=ref_to_pb(inp.eval_set),
                labels=task.labels,
                output_key=key,
            )
            response = await self._unary(
                self.config.student_address,
                "StudentService.Evaluate",
                lambda ch: student_pb2_grpc.StudentServiceStub(ch).Evaluate(request),
            )
            predictions = ref_from_pb(response.predictions)
            if predictions is None:
                raise ApplicationError("StudentService.Evaluate returned no predictions", type="DATA_LOSS")

        records = self._read_jsonl(predictions)
        correct = sum(1 for r in records if r.get("correct"))
        total = len(records)
        accuracy = correct / total if total else 0.0
        adapter_uri = inp.adapter.uri if inp.adapter is not None else ""
        await self._record(
            Evaluation,
            [
                {
                    "job_id": inp.job_id,
                    "round": inp.round,
                    "stage": inp.stage,
                    "accuracy": accuracy,
                    "correct": correct,
                    "total": total,
                    "adapter_uri": adapter_uri,
                    "predictions_uri": predictions.uri,
                }
            ],
        )
        if inp.round_counts is not None:
            c = inp.round_counts
            await self._record(
                Round,
                [
                    {
                        "job_id": inp.job_id,
                        "round": inp.round,
                        "generated": c.generated,
                        "kept": c.kept,
                        "selected": c.selected,
                        "trained": c.trained,
                        "accuracy": accuracy,
                    }
                ],
            )
        await self._record_artifacts(inp.job_id, inp.round, {f"predictions-{inp.stage}": predictions})
        return EvaluateOutput(accuracy=accuracy, correct=correct, total=total, predictions=predictions)

    @activity.defn
    async def generate_examples(self, inp: GenerateInput) -> GenerateOutput:
        """TeacherService.Generate: expand the seeds into new labelled examples; records the samples."""
        from syllabus.db import Sample
        from syllabus.pb import ref_from_pb, ref_to_pb
        from syllabus_sdk.common.v1 import common_pb2
        from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc

        task = self._task(inp.task_ref)
        g = task.generate
        sampling = {
            "temperature": g.temperature,
            "top_p": g.top_p,
            "max_new_tokens": g.max_new_tokens,
            "n": g.n,
            "seed": g.seed + inp.round,
        }
        params = {
            "model": task.teacher.model,
            "kind": task.kind,
            "instructions": task.instructions,
            "labels": task.labels,
            "per_label": g.per_label,
            "batch_size": g.batch_size,
            "sampling": sampling,
            "round": inp.round,
        }
        key = output_key(inp.job_id, inp.round, "generate", [inp.seeds, inp.eval_set], params, "jsonl")
        examples = self.store.stat(key)
        leaked = 0
        if examples is None:
            request = teacher_pb2.GenerateRequest(
                model=common_pb2.ModelRef(base=task.teacher.model),
                kind=common_pb2.TASK_KIND_CLASSIFICATION,
                instructions=task.instructions,
                labels=task.labels,
                seeds=ref_to_pb(inp.seeds),
                per_label=g.per_label,
                sampling=common_pb2.SamplingParams(**sampling),
                batch_size=g.batch_size,
                output_key=key,
                round=inp.round,
            )
            if inp.eval_set is not None:
                request.eval.CopyFrom(ref_to_pb(inp.eval_set))
            response = await self._unary(
                self.config.teacher_address,
                "TeacherService.Generate",
                lambda ch: teacher_pb2_grpc.TeacherServiceStub(ch).Generate(request),
            )
            examples = ref_from_pb(response.examples)
            if examples is None:
                raise ApplicationError("TeacherService.Generate returned no examples", type="DATA_LOSS")
            leaked = response.leaked_removed
        elif stats := self.store.stat(key + ".stats.json"):  # the teacher's counts of the run that published it
            leaked = int(json.loads(self._read(stats)).get("leaked_removed", 0))

        records = self._read_jsonl(examples)
        targeted: list[dict] = []
        if inp.skills is not None:
            targeted_ref, targeted_leaked = await self._generate_targeted(inp, task, params, sampling)
            leaked += targeted_leaked
            seen = {r["id"] for r in records}
            targeted = [r for r in self._read_jsonl(targeted_ref) if r["id"] not in seen]
            if targeted:  # one examples artifact for the critique: expansion + targeted
                key_all = output_key(inp.job_id, inp.round, "generate-all", [examples, targeted_ref], {}, "jsonl")
                examples = self._publish_once(key_all, dumps_jsonl(records + targeted))
                records = records + targeted
        await self._record(Sample, [_sample_row(inp.job_id, inp.round, "generated", r, examples.uri) for r in records])
        await self._record_artifacts(inp.job_id, inp.round, {"generated": examples})
        return GenerateOutput(examples=examples, generated=len(records), leaked=leaked, targeted=len(targeted))

    async def _generate_targeted(
        self, inp: GenerateInput, task: TaskSpec, params: dict, sampling: dict
    ) -> tuple[ArtifactRef, int]:
        """TeacherService.Generate in TARGETED mode for the skills AnalyzeErrors named (error-driven
        generation, arXiv 2412.15652): (examples, leaked count)."""
        from syllabus.pb import ref_from_pb, ref_to_pb
        from syllabus_sdk.common.v1 import common_pb2
        from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc

        per_skill = task.generate.targeted_per_skill
        key = output_key(
            inp.job_id, inp.round, "generate-targeted", [inp.seeds, inp.eval_set, inp.skills],
            {**params, "per_skill": per_skill}, "jsonl",
        )
        if existing := self.store.stat(key):
            stats = self.store.stat(key + ".stats.json")
            return existing, int(json.loads(self._read(stats)).get("leaked_removed", 0)) if stats else 0
        request = teacher_pb2.GenerateRequest(
            model=common_pb2.ModelRef(base=task.teacher.model),
            kind=common_pb2.TASK_KIND_CLASSIFICATION,
            instructions=task.instructions,
            labels=task.labels,
            seeds=ref_to_pb(inp.seeds),
            sampling=common_pb2.SamplingParams(**sampling),
            batch_size=task.generate.batch_size,
            output_key=key,
            round=inp.round,
            mode=teacher_pb2.GENERATE_MODE_TARGETED,
            skills=ref_to_pb(inp.skills),
            per_skill=per_skill,
        )
        if inp.eval_set is not None:
            request.eval.CopyFrom(ref_to_pb(inp.eval_set))
        response = await self._unary(
            self.config.teacher_address,
            "TeacherService.Generate (targeted)",
            lambda ch: teacher_pb2_grpc.TeacherServiceStub(ch).Generate(request),
        )
        out = ref_from_pb(response.examples)
        if out is None:
            raise ApplicationError("TeacherService.Generate returned no examples", type="DATA_LOSS")
        return out, response.leaked_removed

    @activity.defn
    async def analyze_errors(self, inp: AnalyzeInput) -> AnalyzeOutput:
        """TeacherService.AnalyzeErrors: name the student's confusions on the validation split."""
        from syllabus.pb import ref_from_pb, ref_to_pb
        from syllabus_sdk.common.v1 import common_pb2
        from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc

        task = self._task(inp.task_ref)
        key = output_key(inp.job_id, inp.round, "analyze", [inp.predictions, inp.validation], {"labels": task.labels}, "jsonl")
        skills = self.store.stat(key)
        if skills is None:
            request = teacher_pb2.AnalyzeErrorsRequest(
                kind=common_pb2.TASK_KIND_CLASSIFICATION,
                labels=task.labels,
                predictions=ref_to_pb(inp.predictions),
                eval=ref_to_pb(inp.validation),
                output_key=key,
            )
            response = await self._unary(
                self.config.teacher_address,
                "TeacherService.AnalyzeErrors",
                lambda ch: teacher_pb2_grpc.TeacherServiceStub(ch).AnalyzeErrors(request),
            )
            skills = ref_from_pb(response.skills)
            if skills is None:
                raise ApplicationError("TeacherService.AnalyzeErrors returned no skills", type="DATA_LOSS")
        records = self._read_jsonl(skills)
        await self._record_artifacts(inp.job_id, inp.round, {"skills": skills})
        return AnalyzeOutput(skills=skills, skill_count=len(records), wrong=sum(int(r.get("count", 0)) for r in records))

    @activity.defn
    async def critique_examples(self, inp: CritiqueInput) -> CritiqueOutput:
        """TeacherService.Critique (judge): keep or drop each generated example; records the critiques."""
        from syllabus.db import Critique
        from syllabus.pb import ref_from_pb, ref_to_pb
        from syllabus_sdk.common.v1 import common_pb2
        from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc

        task = self._task(inp.task_ref)
        mode = task.critique.mode
        params = {"model": task.teacher.model, "mode": mode, "kind": task.kind, "labels": task.labels}
        prefix = output_key(inp.job_id, inp.round, "critique", [inp.examples, inp.seeds], params)
        kept = self.store.stat(f"{prefix}-kept.jsonl")
        critiques = self.store.stat(f"{prefix}-critiques.jsonl")
        if kept is None or critiques is None:
            request = teacher_pb2.CritiqueRequest(
                model=common_pb2.ModelRef(base=task.teacher.model),
                mode=teacher_pb2.CRITIQUE_MODE_JUDGE,
                kind=common_pb2.TASK_KIND_CLASSIFICATION,
                labels=task.labels,
                examples=ref_to_pb(inp.examples),
                seeds=ref_to_pb(inp.seeds),
                output_key=prefix,
            )
            response = await self._unary(
                self.config.teacher_address,
                "TeacherService.Critique",
                lambda ch: teacher_pb2_grpc.TeacherServiceStub(ch).Critique(request),
            )
            kept, critiques = ref_from_pb(response.kept), ref_from_pb(response.critiques)
            if kept is None or critiques is None:
                raise ApplicationError("TeacherService.Critique returned no outputs", type="DATA_LOSS")

        verdicts = self._read_jsonl(critiques)
        kept_count = len(self._read_jsonl(kept))
        await self._record(
            Critique,
            [
                {
                    "job_id": inp.job_id,
                    "sample_id": v["id"],
                    "mode": mode,
                    "keep": bool(v["keep"]),
                    "reason": str(v.get("reason", "")),
                }
                for v in verdicts
            ],
        )
        await self._record_artifacts(inp.job_id, inp.round, {"kept": kept, "critiques": critiques})
        return CritiqueOutput(
            kept=kept,
            critiques=critiques,
            kept_count=kept_count,
            dropped_count=sum(1 for v in verdicts if not v["keep"]),
        )

    @activity.defn
    async def score_samples(self, inp: ScoreInput) -> ScoreOutput:
        """StudentService.Score: LoBaSS losses (L0 under the current student, Lref under the reference
        adapter) and learnability; records scores."""
        from syllabus.db import Score
        from syllabus.pb import ref_from_pb, ref_to_pb
        from syllabus_sdk.common.v1 import common_pb2
        from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

        task = self._task(inp.task_ref)
        params = {"model": task.student.model, "metrics": list(SCORE_METRICS)}
        key = output_key(inp.job_id, inp.round, "score", [inp.dataset, inp.reference, inp.student], params, "jsonl")
        scores = self.store.stat(key)
        if scores is None:
            request = student_pb2.ScoreRequest(
                model=common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.reference)),
                dataset=ref_to_pb(inp.dataset),
                metrics=[
                    student_pb2.METRIC_LOSS_BASE,
                    student_pb2.METRIC_LOSS_REF,
                    student_pb2.METRIC_LEARNABILITY,
                ],
                output_key=key,
            )
            if inp.student is not None:  # L0 under the current student, not the bare base
                request.base_adapter.CopyFrom(ref_to_pb(inp.student))
            response = await self._unary(
                self.config.student_address,
                "StudentService.Score",
                lambda ch: student_pb2_grpc.StudentServiceStub(ch).Score(request),
            )
            scores = ref_from_pb(response.scores)
            if scores is None:
                raise ApplicationError("StudentService.Score returned no scores", type="DATA_LOSS")

        records = self._read_jsonl(scores)
        # Which model each loss was taken under: L0 under the current student, the rest under the reference.
        under_ref = f"{task.student.model}+{inp.reference.uri}"
        under = {"loss_base": f"{task.student.model}+{inp.student.uri}" if inp.student else task.student.model}
        await self._record(
            Score,
            [
                {
                    "job_id": inp.job_id,
                    "round": inp.round,
                    "sample_id": r["id"],
                    "metric": metric,
                    "value": float(r[metric]),
                    "model": under.get(metric, under_ref),
                }
                for r in records
                for metric in SCORE_METRICS
                # A NaN (e.g. learnability at zero base loss) is kept in the artifact, not in SQL.
                if _finite(r.get(metric))
            ],
        )
        await self._record_artifacts(inp.job_id, inp.round, {"scores": scores})
        return ScoreOutput(scores=scores, count=len(records))

    @activity.defn
    async def select_samples(self, inp: SelectInput) -> SelectOutput:
        """Select the most learnable kept examples and write the training set (selected + seeds)."""
        from syllabus.db import Selection

        kept = {r["id"]: r for r in self._read_jsonl(inp.kept)}
        scores = [r for r in self._read_jsonl(inp.scores) if r["id"] in kept]
        chosen = top_fraction(scores, "learnability", inp.top_fraction)
        seeds = self._read_jsonl(inp.seeds)
        chosen_ids = set(chosen)
        train = [kept[i] for i in chosen] + [s for s in seeds if s["id"] not in chosen_ids]

        params = {"top_fraction": inp.top_fraction, "metric": "learnability"}
        key = output_key(inp.job_id, inp.round, "select", [inp.kept, inp.scores, inp.seeds], params, "jsonl")
        train_set = self._publish_once(key, dumps_jsonl(train))
        await self._record(
            Selection,
            [
                {"job_id": inp.job_id, "round": inp.round, "sample_id": sid, "rank": i}
                for i, sid in enumerate(chosen)
            ],
        )
        await self._record_artifacts(inp.job_id, inp.round, {"train-set": train_set})
        return SelectOutput(train_set=train_set, selected=len(chosen), trained=len(train))

    @activity.defn
    async def train_adapter(self, inp: TrainInput) -> TrainOutput:
        """TrainerService.StartTraining + WatchTraining: one LoRA SFT run; records the training run.

        Heartbeats on every progress event. A retry (this worker died, the trainer restarted) starts
        the same `job_key` again: the trainer re-attaches to the running job, resumes a killed one
        from its checkpoint, or answers from the store; the final event carries the run's true step
        count and loss curve either way. Cancelling the activity cancels the training job.
        """
        import grpc

        from syllabus.artifacts import training_metrics_key
        from syllabus.auth import channel as auth_channel
        from syllabus.auth import service_token
        from syllabus.pb import ref_from_pb, ref_to_pb
        from syllabus_sdk.common.v1 import common_pb2
        from syllabus_sdk.trainer.v1 import trainer_pb2, trainer_pb2_grpc

        if inp.stage not in ("reference", "sft"):
            raise ApplicationError(
                f"unknown training stage {inp.stage!r}", type="INVALID_ARGUMENT", non_retryable=True
            )
        task = self._task(inp.task_ref)
        t = task.train
        lora = {
            "rank": t.lora_rank,
            "alpha": t.lora_alpha,
            "dropout": t.lora_dropout,
            "target_modules": t.target_modules,
        }
        training = {
            "epochs": t.reference_epochs if inp.stage == "reference" else t.epochs,
            "learning_rate": t.learning_rate,
            "batch_size": t.batch_size,
            "warmup_ratio": t.warmup_ratio,
            "seed": t.seed,
            "max_seq_len": t.max_seq_len,
        }
        params = {"model": task.student.model, "stage": inp.stage, "lora": lora, "training": training}
        step_name = "reference" if inp.stage == "reference" else "train"
        key = output_key(inp.job_id, inp.round, step_name, [inp.dataset, inp.init_adapter], params, "tar")
        records = self._read_jsonl(inp.dataset)

        model = common_pb2.ModelRef(base=task.student.model)
        if inp.init_adapter is not None:
            model.adapter.CopyFrom(ref_to_pb(inp.init_adapter))
        request = trainer_pb2.StartTrainingRequest(
            job_key=key,
            model=model,
            dataset=ref_to_pb(inp.dataset),
            lora=trainer_pb2.LoraSpec(**lora),
            training=trainer_pb2.TrainingSpec(**training),
            output_key=key,
        )
        adapter = self.store.stat(key)
        metrics_ref = self.store.stat(training_metrics_key(key)) if adapter is not None else None
        if metrics_ref is not None:  # a retry after the run finished: its output answers, no call
            done = json.loads(self._read(metrics_ref))
            return await self._finish_training(inp, params, records, adapter, done)
        final: trainer_pb2.WatchTrainingResponse | None = None
        training_id = ""
        async with (
            auth_channel(self.config.trainer_address, service_token(self.config)) as channel,
            _heartbeating() as hb,
        ):
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            try:
                started = await stub.StartTraining(request)
                training_id = started.training_id
                hb.update({"training_id": training_id, "state": "PENDING"})
                async for event in stub.WatchTraining(trainer_pb2.WatchTrainingRequest(training_id=training_id)):
                    state = trainer_pb2.TrainingState.Name(event.state).removeprefix("TRAINING_STATE_")
                    hb.update({"state": state, "step": event.step, "total": event.total_steps, "loss": round(float(event.loss), 4)})
                    if event.state == trainer_pb2.TRAINING_STATE_FAILED:
                        raise ApplicationError(
                            f"training {training_id} failed: {event.message}", type="TrainingFailed", non_retryable=True
                        )
                    if event.state == trainer_pb2.TRAINING_STATE_CANCELLED:
                        # Someone cancelled the training job itself: retrying would not help.
                        raise ApplicationError(
                            f"training {training_id} was cancelled: {event.message}",
                            type="TrainingCancelled",
                            non_retryable=True,
                        )
                    if event.state == trainer_pb2.TRAINING_STATE_SUCCEEDED:
                        final = event
                        break
            except grpc.aio.AioRpcError as e:
                raise _rpc_failure(e, "TrainerService training") from None
            except asyncio.CancelledError:
                # The workflow was cancelled (or this attempt timed out): stop the training job so it
                # neither burns the trainer nor publishes an adapter nobody asked for any more.
                if training_id:
                    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                        await stub.CancelTraining(trainer_pb2.CancelTrainingRequest(training_id=training_id), timeout=5)
                raise
        if final is None:
            # The stream ended without a verdict (e.g. the trainer restarted): retry, which
            # reattaches to the same job through its job_key or resumes it from its checkpoint.
            raise ApplicationError("training progress stream ended before the job finished", type="TrainingInterrupted")
        adapter = ref_from_pb(final.adapter)
        if adapter is None:
            raise ApplicationError("training succeeded without an adapter", type="DATA_LOSS")
        # The trainer's own record (float64, published before the adapter) is what SQL keeps, the same
        # whether this attempt watched the run or a retry finds it finished.
        metrics_ref = self.store.stat(training_metrics_key(key))
        if metrics_ref is None:
            raise ApplicationError(f"training {training_id} succeeded without its metrics", type="DATA_LOSS")
        return await self._finish_training(inp, params, records, adapter, json.loads(self._read(metrics_ref)))

    async def _finish_training(
        self, inp: TrainInput, params: dict, records: list[dict], adapter: ArtifactRef, metrics: dict
    ) -> TrainOutput:
        """Record a finished training run (once) with the trainer's own step count and losses."""
        samples = len(records)
        metrics = {**metrics, "losses": [round(float(x), 5) for x in metrics["losses"]]}  # one per step

        await asyncio.to_thread(
            self._record_training_run,
            {
                "job_id": inp.job_id,
                "round": inp.round,
                "stage": inp.stage,
                "dataset_uri": inp.dataset.uri,
                "adapter_uri": adapter.uri,
                "samples": samples,
                "steps": int(metrics["steps"]),
                "mean_loss": float(metrics["mean_loss"]),
                "params": {
                    **params,
                    "init_adapter": inp.init_adapter.uri if inp.init_adapter is not None else None,
                },
                "metrics": {"losses": metrics.get("losses", [])},
            },
            sorted({r["id"] for r in records}),
            adapter,
        )
        await self._record_artifacts(inp.job_id, inp.round, {f"adapter-{inp.stage}": adapter})
        return TrainOutput(
            adapter=adapter,
            samples=samples,
            steps=int(metrics["steps"]),
            mean_loss=float(metrics["mean_loss"]),
        )

    def _record_training_run(self, row: dict, sample_ids: list[str], adapter: ArtifactRef) -> None:
        """The run, the exact sample set it trained on and its final checkpoint, in one transaction."""
        from sqlalchemy import select

        from syllabus.db import Checkpoint, TrainingRun, TrainingRunSample, insert_ignore

        with self._session_factory().begin() as session:
            insert_ignore(session, TrainingRun, [row])
            run_id = session.execute(
                select(TrainingRun.id).where(
                    TrainingRun.job_id == row["job_id"], TrainingRun.round == row["round"], TrainingRun.stage == row["stage"]
                )
            ).scalar_one()
            insert_ignore(session, TrainingRunSample, [{"training_run_id": run_id, "sample_id": sid} for sid in sample_ids])
            insert_ignore(
                session, Checkpoint, [{"training_run_id": run_id, "step": row["steps"], "uri": adapter.uri, "sha256": adapter.sha256}]
            )

    @activity.defn
    async def finish_job(self, inp: FinishJobInput) -> FinishJobOutput:
        """Mark the job's row completed / failed / cancelled with its accuracies."""
        await asyncio.to_thread(self._finish, inp)
        return FinishJobOutput(status=inp.status)

    def _finish(self, inp: FinishJobInput) -> None:
        from sqlalchemy import update

        from syllabus.db import Job

        with self._session_factory().begin() as session:
            values: dict[str, object] = {"status": inp.status}
            if inp.baseline_accuracy is not None:
                values["baseline_accuracy"] = inp.baseline_accuracy
            if inp.final_accuracy is not None:
                values["final_accuracy"] = inp.final_accuracy
            updated = session.execute(update(Job).where(Job.id == inp.job_id).values(**values)).rowcount
        if not updated:
            # prepare_job never ran (the job failed before it): nothing to mark.
            log.warning("finish_job: no row for job %s", inp.job_id)

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        """The activity callables to register on a worker."""
        return [
            self.prepare_job,
            self.evaluate_student,
            self.generate_examples,
            self.analyze_errors,
            self.critique_examples,
            self.score_samples,
            self.select_samples,
            self.train_adapter,
            self.finish_job,
        ]
