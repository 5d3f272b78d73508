"""The StudentService servicer: request validation, artifacts, error mapping.

The model work lives in `scoring` and `evaluation`; here a request is checked, its inputs read
from the artifact store, the work run in a worker thread under one lock (health checks stay
responsive), and the output published at the caller's `output_key`. A key that already holds an
object is returned as is (retried steps never recompute).

Errors map to specific codes: INVALID_ARGUMENT naming the field, NOT_FOUND for a missing
artifact, DATA_LOSS for a checksum mismatch, FAILED_PRECONDITION for a model that cannot be
loaded or an adapter that does not fit it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tarfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

from student_svc import evaluation, scoring
from student_svc.models import AdapterMismatch, ModelCache
from syllabus import pb
from syllabus.artifacts import (
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStore,
    ChecksumMismatch,
    InvalidKey,
    validate_key,
)
from syllabus.models import ModelNotFound, fetch_adapter
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus.serving import abort_invalid

log = logging.getLogger(__name__)

SERVICE_NAME = student_pb2.DESCRIPTOR.services_by_name["StudentService"].full_name

METRIC_NAMES = {
    student_pb2.METRIC_LOSS_BASE: scoring.LOSS_BASE,
    student_pb2.METRIC_LOSS_REF: scoring.LOSS_REF,
    student_pb2.METRIC_LEARNABILITY: scoring.LEARNABILITY,
}

T = TypeVar("T")


class RequestFailed(Exception):
    """A failure the client can act on; `code` is the gRPC status it maps to."""

    code = grpc.StatusCode.UNKNOWN

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(self.code, str(self))


class InvalidField(RequestFailed):
    """A request field (or the data it names) is malformed: INVALID_ARGUMENT naming the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        await abort_invalid(context, self.field, self.problem)


class MissingArtifact(RequestFailed):
    """An input artifact does not exist: NOT_FOUND."""

    code = grpc.StatusCode.NOT_FOUND


class CorruptArtifact(RequestFailed):
    """An input artifact does not match its sha256: DATA_LOSS."""

    code = grpc.StatusCode.DATA_LOSS


class Unloadable(RequestFailed):
    """The model or adapter cannot be used: FAILED_PRECONDITION."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class ScoreJob:
    base: str
    adapter: ArtifactRef | None
    dataset: ArtifactRef
    metrics: tuple[str, ...]
    batch_size: int
    output_key: str


@dataclass(frozen=True)
class EvaluateJob:
    base: str
    adapter: ArtifactRef | None
    eval_set: ArtifactRef
    labels: tuple[str, ...]
    batch_size: int
    output_key: str


def _output_key(key: str) -> str:
    if not key:
        raise InvalidField("output_key", "required")
    try:
        return validate_key(key)
    except InvalidKey as e:
        raise InvalidField("output_key", str(e)) from None


def _base(model: common_pb2.ModelRef) -> str:
    if not model.base:
        raise InvalidField("model.base", "required (e.g. bundled:smollm2-135m-instruct)")
    return model.base


def _batch_size(value: int) -> int:
    if value < 0:
        raise InvalidField("batch_size", f"must be >= 0 (0 lets the service choose), got {value}")
    return value


def parse_score_request(request: student_pb2.ScoreRequest) -> ScoreJob:
    """Validate a ScoreRequest (raises InvalidField)."""
    base = _base(request.model)
    dataset = pb.ref_from_pb(request.dataset)
    if dataset is None:
        raise InvalidField("dataset", "required (an ArtifactRef with a uri)")
    metrics: list[str] = []
    for i, m in enumerate(request.metrics):
        if m not in METRIC_NAMES:
            raise InvalidField(
                f"metrics[{i}]", f"{m} is not a metric; use METRIC_LOSS_BASE, _LOSS_REF or _LEARNABILITY"
            )
        if METRIC_NAMES[m] not in metrics:
            metrics.append(METRIC_NAMES[m])
    if not metrics:
        metrics = list(scoring.ALL_METRICS)
    adapter = pb.ref_from_pb(request.model.adapter)
    needs_ref = [m for m in metrics if m in scoring.REF_METRICS]
    if needs_ref and adapter is None:
        raise InvalidField(
            "model.adapter", f"required for {', '.join(needs_ref)} (the LoBaSS reference adapter)"
        )
    return ScoreJob(
        base=base,
        adapter=adapter,
        dataset=dataset,
        metrics=tuple(m for m in scoring.ALL_METRICS if m in metrics),
        batch_size=_batch_size(request.batch_size),
        output_key=_output_key(request.output_key),
    )


def parse_evaluate_request(request: student_pb2.EvaluateRequest) -> EvaluateJob:
    """Validate an EvaluateRequest (raises InvalidField)."""
    base = _base(request.model)
    if request.kind == common_pb2.TASK_KIND_UNSPECIFIED:
        raise InvalidField("kind", "required (TASK_KIND_CLASSIFICATION)")
    if request.kind != common_pb2.TASK_KIND_CLASSIFICATION:
        raise InvalidField(
            "kind", f"{request.kind} is not supported; v1 evaluates TASK_KIND_CLASSIFICATION only"
        )
    eval_set = pb.ref_from_pb(request.eval_set)
    if eval_set is None:
        raise InvalidField("eval_set", "required (an ArtifactRef with a uri)")
    labels = list(request.labels)
    if not labels:
        raise InvalidField("labels", "required (the label set, at least one label)")
    for i, label in enumerate(labels):
        if not label.strip():
            raise InvalidField(f"labels[{i}]", "must be a non-empty string")
        if label in labels[:i]:
            raise InvalidField(f"labels[{i}]", f"duplicate label {label!r}")
    return EvaluateJob(
        base=base,
        adapter=pb.ref_from_pb(request.model.adapter),
        eval_set=eval_set,
        labels=tuple(labels),
        batch_size=_batch_size(request.batch_size),
        output_key=_output_key(request.output_key),
    )


def check_records(records: object, field: str, required: Sequence[str]) -> list[dict]:
    """Each record must be an object with string values for `required` (raises InvalidField)."""
    if not isinstance(records, list):
        raise InvalidField(field, "expected JSONL records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise InvalidField(field, f"record {i} is not a JSON object")
        for key in required:
            if not isinstance(r.get(key), str):
                raise InvalidField(
                    field, f"record {i} lacks a string {key!r} (records need {', '.join(required)})"
                )
    return records


class StudentServicer(student_pb2_grpc.StudentServiceServicer):
    """Score and Evaluate on a cached student; one request's model work at a time."""

    def __init__(self, store: ArtifactStore, models: ModelCache, adapter_cache: Path) -> None:
        self.store = store
        self.models = models
        self.adapter_cache = Path(adapter_cache)
        self._lock = asyncio.Lock()

    def preload(self, base: str) -> None:
        """Load a base model ahead of the first request (the `--preload` flag)."""
        self.models.get(base)

    # -- RPCs ---------------------------------------------------------------------------------

    async def Score(
        self, request: student_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> student_pb2.ScoreResponse:
        try:
            job = parse_score_request(request)
            async with self._lock:
                ref, count = await asyncio.to_thread(self._score, job)
        except RequestFailed as e:
            await e.abort(context)
            raise  # unreachable: abort raises
        return student_pb2.ScoreResponse(scores=pb.ref_to_pb(ref), count=count)

    async def Evaluate(
        self, request: student_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> student_pb2.EvaluateResponse:
        try:
            job = parse_evaluate_request(request)
            async with self._lock:
                ref, summary = await asyncio.to_thread(self._evaluate, job)
        except RequestFailed as e:
            await e.abort(context)
            raise  # unreachable: abort raises
        return student_pb2.EvaluateResponse(
            accuracy=summary.accuracy,
            correct=summary.correct,
            total=summary.total,
            predictions=pb.ref_to_pb(ref),
        )

    # -- blocking work (worker thread, under the lock) -----------------------------------------

    def _read_records(self, field: str, ref: ArtifactRef, required: Sequence[str]) -> list[dict]:
        data = self._get(field, ref)
        try:
            records = loads_jsonl(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidField(field, f"not JSONL: {e}") from None
        return check_records(records, field, required)

    def _get(self, field: str, ref: ArtifactRef) -> bytes:
        try:
            return self.store.get_bytes(ref)
        except ArtifactNotFound as e:
            raise MissingArtifact(f"{field}: {e}") from None
        except ChecksumMismatch as e:
            raise CorruptArtifact(f"{field}: {e}") from None
        except InvalidKey as e:
            raise InvalidField(f"{field}.uri", str(e)) from None

    def _adapter_dir(self, ref: ArtifactRef) -> Path:
        try:
            path = fetch_adapter(self.store, ref, self.adapter_cache)
        except ArtifactNotFound as e:
            raise MissingArtifact(f"model.adapter: {e}") from None
        except ChecksumMismatch as e:
            raise CorruptArtifact(f"model.adapter: {e}") from None
        except InvalidKey as e:
            raise InvalidField("model.adapter.uri", str(e)) from None
        except tarfile.TarError as e:
            raise InvalidField("model.adapter", f"not a tar of a peft adapter directory: {e}") from None
        if not (path / "adapter_config.json").is_file():
            shutil.rmtree(path, ignore_errors=True)  # our cache: do not keep a useless unpacked dir
            raise InvalidField(
                "model.adapter", "the archive holds no adapter_config.json (not a peft adapter)"
            )
        return path

    def _with_model(self, base: str, adapter: ArtifactRef | None, work: Callable[..., T]) -> T:
        """Run `work(model, tokenizer)` on the base, wrapped with the adapter if one is given."""
        adapter_dir = self._adapter_dir(adapter) if adapter is not None else None
        try:
            _, tokenizer = self.models.get(base)
            ctx = (
                self.models.with_adapter(base, adapter_dir) if adapter_dir is not None else nullcontext(None)
            )
            with ctx as wrapped:
                model = wrapped if wrapped is not None else self.models.get(base)[0]
                return work(model, tokenizer)
        except ModelNotFound as e:
            raise Unloadable(f"model.base: {e}") from None
        except AdapterMismatch as e:
            raise Unloadable(f"model.adapter: {e}") from None

    def _score(self, job: ScoreJob) -> tuple[ArtifactRef, int]:
        existing = self.store.stat(job.output_key)
        if existing is not None:
            return existing, len(loads_jsonl(self._get("output_key", existing)))
        records = self._read_records("dataset", job.dataset, ("id", "prompt", "response"))
        uses_ref = any(m in scoring.REF_METRICS for m in job.metrics)
        rows = self._with_model(
            job.base,
            job.adapter if uses_ref else None,
            lambda model, tok: scoring.score_records(
                model, tok, records, job.metrics, batch_size=job.batch_size
            ),
        )
        ref = self.store.put_bytes(job.output_key, dumps_jsonl(rows))
        log.info("scored %d samples (%s) -> %s", len(rows), ",".join(job.metrics), ref.uri)
        return ref, len(rows)

    def _evaluate(self, job: EvaluateJob) -> tuple[ArtifactRef, evaluation.EvalSummary]:
        existing = self.store.stat(job.output_key)
        if existing is not None:
            rows = loads_jsonl(self._get("output_key", existing))
            return existing, evaluation.EvalSummary(
                correct=sum(bool(r["correct"]) for r in rows), total=len(rows)
            )
        records = self._read_records("eval_set", job.eval_set, ("id", "prompt", "label"))
        if not records:
            raise InvalidField("eval_set", "holds no records")
        for i, r in enumerate(records):
            if r["label"] not in job.labels:
                raise InvalidField("eval_set", f"record {i}: label {r['label']!r} is not in labels")
        rows, summary = self._with_model(
            job.base,
            job.adapter,
            lambda model, tok: evaluation.evaluate_classification(
                model, tok, records, list(job.labels), batch_size=job.batch_size
            ),
        )
        ref = self.store.put_bytes(job.output_key, dumps_jsonl(rows))
        log.info("evaluated %d items: accuracy %.3f -> %s", summary.total, summary.accuracy, ref.uri)
        return ref, summary
