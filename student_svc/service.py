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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from prometheus_client import Counter

from student_svc import evaluation, scoring
from student_svc.models import AdapterMismatch, ModelCache
from syllabus import answers, pb
from syllabus.artifacts import (
    ArtifactRef,
    ArtifactStore,
    InvalidKey,
    validate_output_key,
)
from syllabus.kinds import EXACT_MATCH, LABEL_LIKELIHOOD, NUMERIC_MATCH
from syllabus.models import ModelNotFound, fetch_adapter
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus.serving import InvalidRequest, RequestFailed, in_model_thread, reading
from syllabus.telemetry import model_turn
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

log = logging.getLogger(__name__)

# Throughput (rate() of these is samples per second); a retried request that finds its output counts nothing.
SAMPLES_SCORED = Counter("syllabus_student_samples_scored", "Samples the student scored (Score, ScoreStream).")
SAMPLES_EVALUATED = Counter("syllabus_student_samples_evaluated", "Eval items the student answered and was graded on (Evaluate).")

SERVICE_NAME = student_pb2.DESCRIPTOR.services_by_name["StudentService"].full_name

CAR = "car"
ARTE = "arte_preference"
IRT_DIFFICULTY = "irt_difficulty"
METRIC_NAMES = {
    student_pb2.METRIC_LOSS_BASE: scoring.LOSS_BASE,
    student_pb2.METRIC_LOSS_REF: scoring.LOSS_REF,
    student_pb2.METRIC_LEARNABILITY: scoring.LEARNABILITY,
    student_pb2.METRIC_IFD: scoring.IFD,
    student_pb2.METRIC_RIFD: scoring.RIFD,
    student_pb2.METRIC_REFLECTION: scoring.REFLECTION,
    student_pb2.METRIC_CAR: CAR,
    student_pb2.METRIC_ARTE_PREFERENCE: ARTE,
    student_pb2.METRIC_IRT_DIFFICULTY: IRT_DIFFICULTY,
}
METRIC_ORDER = (*scoring.NLL_METRICS, CAR, ARTE, IRT_DIFFICULTY)
PRECISIONS = {
    student_pb2.PRECISION_UNSPECIFIED: "auto",
    student_pb2.PRECISION_FLOAT32: "float32",
    student_pb2.PRECISION_BFLOAT16: "bfloat16",
}
MATCHES = {
    student_pb2.ANSWER_MATCH_UNSPECIFIED: answers.EXACT,
    student_pb2.ANSWER_MATCH_EXACT: answers.EXACT,
    student_pb2.ANSWER_MATCH_NUMERIC: answers.NUMERIC,
    student_pb2.ANSWER_MATCH_LABEL: answers.LABEL,
}
DEFAULT_CAR_BETA = 1.0

T = TypeVar("T")
#: progress(stage, done, total), called from the worker thread.
StageProgress = Callable[[str, int, int], None]


class Unloadable(RequestFailed):
    """The model or adapter cannot be used: FAILED_PRECONDITION."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, message)


@dataclass(frozen=True)
class IrtFitJob:
    model: str = "1pl"
    steps: int = 2000
    lr: float = 0.05


@dataclass(frozen=True)
class ArteJob:
    probe_set: ArtifactRef
    probe_responses: ArtifactRef | None
    probe_k: int
    match: str
    max_new_tokens: int
    fit: IrtFitJob


@dataclass(frozen=True)
class IrtJob:
    crowd: tuple[ArtifactRef, ...]
    include_base: bool
    labels: tuple[str, ...]
    fit: IrtFitJob


@dataclass(frozen=True)
class ScoreJob:
    base: str
    adapter: ArtifactRef | None
    dataset: ArtifactRef
    metrics: tuple[str, ...]
    batch_size: int
    output_key: str
    options: scoring.ScoreOptions = scoring.ScoreOptions()  # noqa: RUF009 (frozen, immutable)
    car_beta: float = DEFAULT_CAR_BETA
    arte: ArteJob | None = None
    irt: IrtJob | None = None
    base_adapter: ArtifactRef | None = None
    """LoBaSS rounds >= 2: loss_base (L0) under base + this adapter (the current student)."""


LABEL_GENERATION = "label_generation"
SCORERS = {
    student_pb2.EVAL_SCORER_LABEL_LIKELIHOOD: LABEL_LIKELIHOOD,
    student_pb2.EVAL_SCORER_LABEL_GENERATION: LABEL_GENERATION,
    student_pb2.EVAL_SCORER_EXACT_MATCH: EXACT_MATCH,
    student_pb2.EVAL_SCORER_NUMERIC: NUMERIC_MATCH,
}


@dataclass(frozen=True)
class EvaluateJob:
    base: str
    adapter: ArtifactRef | None
    eval_set: ArtifactRef
    labels: tuple[str, ...]
    batch_size: int
    output_key: str
    scorer: str = LABEL_LIKELIHOOD
    max_new_tokens: int = 32
    dtype: str = "auto"


@dataclass(frozen=True)
class SampleJob:
    base: str
    adapter: ArtifactRef | None
    dataset: ArtifactRef
    temperature: float
    top_p: float
    max_new_tokens: int
    n: int
    seed: int
    output_key: str


MAX_SAMPLES_PER_PROMPT = 16


def parse_sample_request(request: student_pb2.SampleRequest) -> SampleJob:
    """Validate a SampleRequest (raises InvalidRequest)."""
    _finite(request)
    base = _base(request.model)
    dataset = pb.ref_from_pb(request.dataset)
    if dataset is None:
        raise InvalidRequest("dataset", "required (an ArtifactRef with a uri)")
    s = request.sampling
    if not 0 < s.temperature <= 5:
        raise InvalidRequest("sampling.temperature", f"must be in (0, 5] (on-policy samples are drawn), got {s.temperature:g}")
    if not 0 <= s.top_p <= 1:
        raise InvalidRequest("sampling.top_p", f"must be in (0, 1] (0 means 1), got {s.top_p:g}")
    if not 0 < s.max_new_tokens <= 2048:
        raise InvalidRequest("sampling.max_new_tokens", f"must be in [1, 2048], got {s.max_new_tokens}")
    if not 0 <= s.n <= MAX_SAMPLES_PER_PROMPT:
        raise InvalidRequest("sampling.n", f"must be in [0, {MAX_SAMPLES_PER_PROMPT}] (0 means 1), got {s.n}")
    return SampleJob(base=base, adapter=pb.ref_from_pb(request.model.adapter), dataset=dataset,
                     temperature=round(s.temperature, 6), top_p=round(s.top_p, 6) or 1.0, max_new_tokens=s.max_new_tokens,
                     n=s.n or 1, seed=s.seed, output_key=_output_key(request.output_key))  # fmt: skip


def _output_key(key: str) -> str:
    if not key:
        raise InvalidRequest("output_key", "required")
    try:
        return validate_output_key(key)
    except InvalidKey as e:
        raise InvalidRequest("output_key", str(e)) from None


def _finite(request) -> None:
    """No request field may hold inf or NaN (raises InvalidRequest naming it)."""
    if bad := pb.first_nonfinite(request):
        raise InvalidRequest(bad, "must be a finite number (no inf or NaN)")


def _base(model: common_pb2.ModelRef, field: str = "model.base") -> str:
    if not model.base:
        raise InvalidRequest(field, "required (e.g. bundled:smollm2-135m-instruct)")
    if len(model.base) > 1024 or "\x00" in model.base or "://" in model.base:
        raise InvalidRequest(field, "not a model name (bundled:NAME or a local HF model directory)")
    return model.base


def _batch_size(value: int) -> int:
    if value < 0:
        raise InvalidRequest("batch_size", f"must be >= 0 (0 lets the service choose), got {value}")
    return value


def _non_negative(field: str, value: float) -> None:
    if value < 0:
        raise InvalidRequest(field, f"must be >= 0 (0 means the default), got {value}")


def _precision(field: str, value: int) -> str:
    if value not in PRECISIONS:
        raise InvalidRequest(field, f"{value} is not a Precision")
    return PRECISIONS[value]


def _irt_fit(field: str, fit: student_pb2.IrtFit, default: str) -> IrtFitJob:
    models = {student_pb2.IRT_MODEL_UNSPECIFIED: default, student_pb2.IRT_MODEL_1PL: "1pl", student_pb2.IRT_MODEL_2PL: "2pl"}
    if fit.model not in models:
        raise InvalidRequest(f"{field}.model", f"{fit.model} is not an IrtModel")
    _non_negative(f"{field}.steps", fit.steps)
    _non_negative(f"{field}.learning_rate", fit.learning_rate)
    return IrtFitJob(model=models[fit.model], steps=fit.steps or 2000, lr=fit.learning_rate or 0.05)


def parse_score_request(request: student_pb2.ScoreRequest) -> ScoreJob:
    """Validate a ScoreRequest (raises InvalidRequest)."""
    _finite(request)
    base = _base(request.model)
    dataset = pb.ref_from_pb(request.dataset)
    if dataset is None:
        raise InvalidRequest("dataset", "required (an ArtifactRef with a uri)")
    metrics: list[str] = []
    for i, m in enumerate(request.metrics):
        if m not in METRIC_NAMES:
            raise InvalidRequest(f"metrics[{i}]", f"{m} is not a Metric (see student.proto)")
        if METRIC_NAMES[m] not in metrics:
            metrics.append(METRIC_NAMES[m])
    if not metrics:
        metrics = list(scoring.ALL_METRICS)
    adapter = pb.ref_from_pb(request.model.adapter)
    needs_ref = [m for m in metrics if m in scoring.REF_METRICS]
    if needs_ref and adapter is None:
        raise InvalidRequest(
            "model.adapter", f"required for {', '.join(needs_ref)} (the LoBaSS reference adapter)"
        )
    base_adapter = pb.ref_from_pb(request.base_adapter) if request.HasField("base_adapter") else None
    if base_adapter is not None and adapter is None:
        raise InvalidRequest("base_adapter", "needs model.adapter (L0 and Lref come from one model load)")
    _non_negative("max_batch_tokens", request.max_batch_tokens)
    _non_negative("max_len", request.max_len)
    if 0 < request.max_len < 16:
        raise InvalidRequest("max_len", f"must be 0 (default 512) or >= 16, got {request.max_len}")
    ratios = {student_pb2.IFD_RATIO_UNSPECIFIED: "ppl", student_pb2.IFD_RATIO_PPL: "ppl", student_pb2.IFD_RATIO_LOSS: "loss"}
    if request.ifd_ratio not in ratios:
        raise InvalidRequest("ifd_ratio", f"{request.ifd_ratio} is not an IfdRatio")
    options = scoring.ScoreOptions(
        dtype=_precision("precision", request.precision),
        batch_size=_batch_size(request.batch_size),
        max_batch_tokens=request.max_batch_tokens,
        max_len=request.max_len or scoring.DEFAULT_MAX_LEN,
        ratio=ratios[request.ifd_ratio],
        ifd_on_base=request.student_metrics_on_base,
    )
    car_beta = request.car_beta if request.HasField("car_beta") else DEFAULT_CAR_BETA
    _non_negative("car_beta", car_beta)
    arte = None
    if ARTE in metrics:
        probe_set = pb.ref_from_pb(request.arte.probe_set)
        if probe_set is None:
            raise InvalidRequest("arte.probe_set", "required for METRIC_ARTE_PREFERENCE")
        _non_negative("arte.probe_k", request.arte.probe_k)
        _non_negative("arte.max_new_tokens", request.arte.max_new_tokens)
        if request.arte.match not in MATCHES:
            raise InvalidRequest("arte.match", f"{request.arte.match} is not an AnswerMatch")
        responses = pb.ref_from_pb(request.arte.probe_responses)
        if responses is not None and not request.arte.probe_k:
            raise InvalidRequest("arte.probe_k", "required (> 0) with arte.probe_responses")
        arte = ArteJob(
            probe_set=probe_set,
            probe_responses=responses,
            probe_k=request.arte.probe_k,
            match=MATCHES[request.arte.match],
            max_new_tokens=request.arte.max_new_tokens or evaluation.DEFAULT_MAX_NEW_TOKENS,
            fit=_irt_fit("arte.irt", request.arte.irt, "2pl"),
        )
    irt = None
    if IRT_DIFFICULTY in metrics:
        crowd = []
        for i, ref in enumerate(request.irt.crowd):
            parsed = pb.ref_from_pb(ref)
            if parsed is None:
                raise InvalidRequest(f"irt.crowd[{i}]", "an ArtifactRef with a uri")
            crowd.append(parsed)
        if len(crowd) + request.irt.include_base < 2:
            raise InvalidRequest("irt.crowd", "the crowd needs at least 2 members (checkpoints, or 1 + include_base)")
        labels = _labels("irt.labels", list(request.irt.labels))
        irt = IrtJob(
            crowd=tuple(crowd),
            include_base=request.irt.include_base,
            labels=tuple(labels),
            fit=_irt_fit("irt.fit", request.irt.fit, "1pl"),
        )
    return ScoreJob(
        base=base,
        adapter=adapter,
        dataset=dataset,
        metrics=tuple(m for m in METRIC_ORDER if m in metrics),
        batch_size=options.batch_size,
        output_key=_output_key(request.output_key),
        options=options,
        car_beta=car_beta,
        arte=arte,
        irt=irt,
        base_adapter=base_adapter,
    )


def _labels(field: str, labels: list[str]) -> list[str]:
    if not labels:
        raise InvalidRequest(field, "required (the label set, at least one label)")
    for i, label in enumerate(labels):
        if not label.strip():
            raise InvalidRequest(f"{field}[{i}]", "must be a non-empty string")
        if label in labels[:i]:
            raise InvalidRequest(f"{field}[{i}]", f"duplicate label {label!r}")
    return labels


def parse_evaluate_request(request: student_pb2.EvaluateRequest) -> EvaluateJob:
    """Validate an EvaluateRequest (raises InvalidRequest)."""
    _finite(request)
    base = _base(request.model)
    if (kind := pb.kind_from_pb(request.kind)) is None:
        raise InvalidRequest("kind", f"{request.kind} is not a TaskKind" if request.kind else "required (e.g. TASK_KIND_CLASSIFICATION)")
    if request.scorer != student_pb2.EVAL_SCORER_UNSPECIFIED and request.scorer not in SCORERS:
        raise InvalidRequest("scorer", f"{request.scorer} is not an EvalScorer")
    scorer = SCORERS.get(request.scorer) or kind.evaluator
    eval_set = pb.ref_from_pb(request.eval_set)
    if eval_set is None:
        raise InvalidRequest("eval_set", "required (an ArtifactRef with a uri)")
    labels = list(request.labels)
    if scorer in (LABEL_LIKELIHOOD, LABEL_GENERATION) or labels:
        labels = _labels("labels", labels)
    _non_negative("max_new_tokens", request.max_new_tokens)
    return EvaluateJob(
        base=base,
        adapter=pb.ref_from_pb(request.model.adapter),
        eval_set=eval_set,
        labels=tuple(labels),
        batch_size=_batch_size(request.batch_size),
        output_key=_output_key(request.output_key),
        scorer=scorer,
        max_new_tokens=request.max_new_tokens or evaluation.DEFAULT_MAX_NEW_TOKENS,
        dtype=_precision("precision", request.precision),
    )


@dataclass(frozen=True)
class SelectJob:
    base: str
    adapter: ArtifactRef | None
    dataset: ArtifactRef
    scores: ArtifactRef
    column: str
    policy: str
    k: int
    ratio: float
    threshold: float
    ascending: bool
    ifd_filter: bool
    ifd_column: str
    n_clusters: int
    quota: str
    temperature: float
    seed: int
    output_key: str
    gap_column: str = ""
    """diversity: the reward-gap column that reweights the clusters (Diversify and Conquer); empty: off."""
    gap_temperature: float = 1.0


POLICIES = {
    student_pb2.SELECT_POLICY_TOP_K: "top_k",
    student_pb2.SELECT_POLICY_RATIO: "ratio",
    student_pb2.SELECT_POLICY_THRESHOLD: "threshold",
    student_pb2.SELECT_POLICY_DIVERSITY: "diversity",
}


def parse_select_request(request: student_pb2.SelectRequest) -> SelectJob:
    """Validate a SelectRequest (raises InvalidRequest)."""
    _finite(request)
    if request.policy not in POLICIES:
        raise InvalidRequest("policy", "required: SELECT_POLICY_TOP_K, _RATIO, _THRESHOLD or _DIVERSITY")
    policy = POLICIES[request.policy]
    dataset, scores = pb.ref_from_pb(request.dataset), pb.ref_from_pb(request.scores)
    if dataset is None:
        raise InvalidRequest("dataset", "required (an ArtifactRef with a uri)")
    if scores is None:
        raise InvalidRequest("scores", "required (an ArtifactRef with a uri)")
    if policy != "diversity" and not request.column:
        raise InvalidRequest("column", f"required for {policy} (e.g. learnability, ifd_ppl)")
    if policy in ("top_k", "diversity") and request.k <= 0:
        raise InvalidRequest("k", f"must be > 0, got {request.k}")
    if policy == "ratio" and not 0 <= request.ratio <= 1:
        raise InvalidRequest("ratio", f"must be in [0, 1], got {request.ratio}")
    if policy == "diversity" and request.n_clusters <= 0:
        raise InvalidRequest("n_clusters", f"must be > 0, got {request.n_clusters}")
    _non_negative("temperature", request.temperature)
    _non_negative("gap_temperature", request.gap_temperature)
    if request.gap_column and policy != "diversity":
        raise InvalidRequest("gap_column", f"reweights diversity clusters; policy {policy} has none")
    quotas = {student_pb2.QUOTA_MODE_UNSPECIFIED: "proportional", student_pb2.QUOTA_MODE_PROPORTIONAL: "proportional", student_pb2.QUOTA_MODE_EQUAL: "equal"}
    if request.quota not in quotas:
        raise InvalidRequest("quota", f"{request.quota} is not a QuotaMode")
    base = _base(request.model) if policy == "diversity" else request.model.base
    return SelectJob(
        base=base,
        adapter=pb.ref_from_pb(request.model.adapter),
        dataset=dataset,
        scores=scores,
        column=request.column,
        policy=policy,
        k=request.k,
        ratio=request.ratio,
        threshold=request.threshold,
        ascending=request.ascending,
        ifd_filter=request.ifd_filter,
        ifd_column=request.ifd_column or "ifd_ppl",
        n_clusters=request.n_clusters,
        quota=quotas[request.quota],
        temperature=request.temperature or 1.0,
        gap_column=request.gap_column,
        gap_temperature=request.gap_temperature or 1.0,
        seed=request.seed,
        output_key=_output_key(request.output_key),
    )


def check_records(records: object, field: str, required: Sequence[str]) -> list[dict]:
    """Each record must be an object with string values for `required` (raises InvalidRequest)."""
    if not isinstance(records, list):
        raise InvalidRequest(field, "expected JSONL records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise InvalidRequest(field, f"record {i} is not a JSON object")
        for key in required:
            if not isinstance(r.get(key), str):
                raise InvalidRequest(
                    field, f"record {i} lacks a string {key!r} (records need {', '.join(required)})"
                )
    return records


class StudentServicer(student_pb2_grpc.StudentServiceServicer):
    """Score and Evaluate on a cached student; one request's model work at a time."""

    def __init__(
        self, store: ArtifactStore, models: ModelCache, adapter_cache: Path
    ) -> None:
        self.store = store
        self.models = models
        self.adapter_cache = Path(adapter_cache)
        self._lock = asyncio.Lock()

    def preload(self, base: str) -> None:
        """Load a base model ahead of the first request (the `--preload` flag)."""
        self.models.get(base)

    # -- RPCs ---------------------------------------------------------------------------------

    async def _serve(self, context: grpc.aio.ServicerContext, parse: Callable, request, work: Callable):
        """Validate `request` with `parse`, run `work(job)` in the worker thread under the model lock;
        a RequestFailed from either becomes its status code."""
        try:
            job = parse(request)
            async with model_turn("student", self._lock):
                return await in_model_thread(work, job)
        except RequestFailed as e:
            await e.abort(context)
            raise  # unreachable: abort raises

    async def Score(
        self, request: student_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> student_pb2.ScoreResponse:
        return await self._serve(context, parse_score_request, request, self._score)

    async def ScoreStream(
        self, request: student_pb2.ScoreStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[student_pb2.ScoreStreamResponse]:
        """Score, streaming ScoreProgress events from the worker thread, then the result."""
        try:
            job = parse_score_request(request.request)
        except RequestFailed as e:
            await e.abort(context)
            raise
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def progress(stage: str, done: int, total: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, student_pb2.ScoreProgress(stage=stage, done=done, total=total))

        async def work() -> student_pb2.ScoreResponse:
            async with model_turn("student", self._lock):
                return await in_model_thread(self._score, job, progress)

        task = asyncio.create_task(work())
        while True:
            getter = asyncio.create_task(events.get())
            done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield student_pb2.ScoreStreamResponse(progress=getter.result())
                continue
            getter.cancel()
            while not events.empty():
                yield student_pb2.ScoreStreamResponse(progress=events.get_nowait())
            try:
                result = task.result()
            except RequestFailed as e:
                await e.abort(context)
                raise
            yield student_pb2.ScoreStreamResponse(result=result)
            return

    async def Select(
        self, request: student_pb2.SelectRequest, context: grpc.aio.ServicerContext
    ) -> student_pb2.SelectResponse:
        ref, count = await self._serve(context, parse_select_request, request, self._select)
        return student_pb2.SelectResponse(selected=pb.ref_to_pb(ref), count=count)

    async def Sample(
        self, request: student_pb2.SampleRequest, context: grpc.aio.ServicerContext
    ) -> student_pb2.SampleResponse:
        ref, count = await self._serve(context, parse_sample_request, request, self._sample)
        return student_pb2.SampleResponse(samples=pb.ref_to_pb(ref), count=count)

    async def Evaluate(
        self, request: student_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> student_pb2.EvaluateResponse:
        ref, summary = await self._serve(context, parse_evaluate_request, request, self._evaluate)
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
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise InvalidRequest(field, f"not JSONL: {type(e).__name__}") from None
        return check_records(records, field, required)

    def _get(self, field: str, ref: ArtifactRef) -> bytes:
        with reading(field):
            return self.store.get_bytes(ref)

    def _stat_output(self, key: str) -> ArtifactRef | None:
        """The published output under key (a retried request), or None; InvalidRequest if the key is a
        directory-like prefix of other artifacts or lies under an existing one."""
        try:
            return self.store.stat(key)
        except InvalidKey as e:
            raise InvalidRequest("output_key", str(e)) from None

    def _adapter_dir(self, ref: ArtifactRef) -> Path:
        try:
            with reading("model.adapter"):
                path = fetch_adapter(self.store, ref, self.adapter_cache)
        except tarfile.TarError as e:
            raise InvalidRequest("model.adapter", f"not a tar of a peft adapter directory: {e}") from None
        except ValueError as e:
            raise InvalidRequest("model.adapter", str(e)) from None
        if not (path / "adapter_config.json").is_file():
            shutil.rmtree(path, ignore_errors=True)  # our cache: do not keep a useless unpacked dir
            raise InvalidRequest(
                "model.adapter", "the archive holds no adapter_config.json (not a peft adapter)"
            )
        return path

    def _with_model(
        self, base: str, adapter: ArtifactRef | None, work: Callable[..., T], base_adapter: ArtifactRef | None = None
    ) -> T:
        """Run `work(model, tokenizer)` on the base, wrapped with the adapter if one is given (and the
        current student's `base_adapter`, which the "base" losses are then taken under)."""
        adapter_dir = self._adapter_dir(adapter) if adapter is not None else None
        student_dir = self._adapter_dir(base_adapter) if base_adapter is not None else None
        try:
            _, tokenizer = self.models.get(base)
            ctx = (
                self.models.with_adapter(base, adapter_dir, student_dir) if adapter_dir is not None else nullcontext(None)
            )
            with ctx as wrapped:
                model = wrapped if wrapped is not None else self.models.get(base)[0]
                return work(model, tokenizer)
        except ModelNotFound as e:
            raise Unloadable(f"model.base: {e}") from None
        except AdapterMismatch as e:
            raise Unloadable(f"model.adapter: {e}") from None

    def _score(self, job: ScoreJob, progress: StageProgress | None = None) -> student_pb2.ScoreResponse:
        existing = self._stat_output(job.output_key)
        if existing is not None:
            rows = loads_jsonl(self._get("output_key", existing))
            return self._score_response(job, existing, rows, None)
        required = ["id", "prompt", "response"]
        if scoring.REFLECTION in job.metrics:
            from student_svc.reflection import FIELDS

            required += [f for f in FIELDS if f not in required]
        records = self._read_records("dataset", job.dataset, required)
        if CAR in job.metrics:
            for i, r in enumerate(records):
                if not isinstance(r.get("teacher"), str) or not isinstance(r.get("reward"), (int, float)):
                    raise InvalidRequest("dataset", f"record {i} lacks a string 'teacher' or numeric 'reward' (METRIC_CAR)")
        nll_metrics = [m for m in job.metrics if m in scoring.NLL_METRICS]
        if CAR in job.metrics and scoring.LOSS_BASE not in nll_metrics:
            nll_metrics.append(scoring.LOSS_BASE)
        # The adapter is wrapped only if some metric reads the model as given.
        base_only = {scoring.LOSS_BASE, CAR, IRT_DIFFICULTY}
        uses_adapter = job.adapter is not None and any(m not in base_only for m in job.metrics)
        probes = self._probes(job.arte) if job.arte is not None else None

        def work(model, tok) -> list[dict]:
            rows = [{"id": r["id"]} for r in records]
            if nll_metrics:
                forward = (lambda d, t: progress("forward", d, t)) if progress else None
                for row, scored in zip(
                    rows, scoring.score_records(model, tok, records, nll_metrics, options=job.options, progress=forward), strict=True
                ):
                    row.update(scored)
            if probes is not None:
                from student_svc.arte import arte_preference

                if progress:
                    progress("generate", 0, len(records) * len(probes))
                for row, scored in zip(
                    rows,
                    arte_preference(
                        model, tok, records, probes, match=job.arte.match, max_new_tokens=job.arte.max_new_tokens,
                        batch_size=job.batch_size or 16, dtype=job.options.dtype,
                    ),
                    strict=True,
                ):
                    row.update({k: v for k, v in scored.items() if k != "id"})
                if progress:
                    progress("generate", len(records) * len(probes), len(records) * len(probes))
            return rows

        rows = self._with_model(
            job.base, job.adapter if uses_adapter else None, work, job.base_adapter if uses_adapter else None
        )
        if job.irt is not None:
            for row, scored in zip(rows, self._crowd_difficulty(job, records, progress), strict=True):
                row.update(scored)
        car = scoring.car_by_teacher(records, rows, job.car_beta) if CAR in job.metrics else None
        ref = self.store.put_bytes(job.output_key, dumps_jsonl(rows))
        SAMPLES_SCORED.inc(len(rows))
        log.info("scored %d samples (%s) -> %s", len(rows), ",".join(job.metrics), ref.uri)
        return self._score_response(job, ref, rows, car)

    def _score_response(self, job: ScoreJob, ref: ArtifactRef, rows: list[dict], car: list[dict] | None):
        if car is None and CAR in job.metrics:
            records = self._read_records("dataset", job.dataset, ("id",))
            car = scoring.car_by_teacher(records, rows, job.car_beta)
        return student_pb2.ScoreResponse(
            scores=pb.ref_to_pb(ref),
            count=len(rows),
            car=[student_pb2.TeacherCar(**g) for g in car or ()],
        )

    def _probes(self, arte: ArteJob) -> list[dict]:
        probes = self._read_records("arte.probe_set", arte.probe_set, ("id", "prompt", "answer"))
        if not probes:
            raise InvalidRequest("arte.probe_set", "holds no records")
        if arte.probe_responses is not None:
            from student_svc.arte import probe_set_by_discrimination

            responses = self._read_records("arte.probe_responses", arte.probe_responses, ("item_id", "subject"))
            try:
                probes = probe_set_by_discrimination(probes, responses, arte.probe_k, arte.fit.steps, arte.fit.lr)
            except ValueError as e:
                raise InvalidRequest("arte.probe_responses", str(e)) from None
        elif arte.probe_k:
            probes = probes[: arte.probe_k]
        return probes

    def _crowd_difficulty(self, job: ScoreJob, records: list[dict], progress: StageProgress | None) -> list[dict]:
        """Each crowd member's right/wrong by label likelihood, then an IRT fit (PUDF)."""
        import numpy as np

        from student_svc.irt import fit_irt

        irt = job.irt
        assert irt is not None
        for i, r in enumerate(records):
            if r["response"] not in irt.labels:
                raise InvalidRequest("dataset", f"record {i}: response {r['response']!r} is not in irt.labels")
        members: list[ArtifactRef | None] = ([None] if irt.include_base else []) + list(irt.crowd)
        labels = list(irt.labels)

        def correctness(model, tok) -> list[float]:
            lps = evaluation.label_logprobs_batch(model, tok, [r["prompt"] for r in records], labels, max_len=job.options.max_len)
            return [float(labels[max(range(len(labels)), key=lambda j: (lp[j], -j))] == r["response"]) for r, lp in zip(records, lps, strict=True)]

        matrix = []
        for k, member in enumerate(members):
            if progress:
                progress("crowd", k, len(members))
            matrix.append(self._with_model(job.base, member, correctness))
        if progress:
            progress("crowd", len(members), len(members))
        fit = fit_irt(np.array(matrix), irt.fit.model, steps=irt.fit.steps, lr=irt.fit.lr)
        right = np.array(matrix).sum(0)
        return [
            {"irt_difficulty": float(fit.difficulty[i]), "crowd_correct": int(right[i])} for i in range(len(records))
        ]

    def _select(self, job: SelectJob) -> tuple[ArtifactRef, int]:
        from student_svc import selection

        existing = self._stat_output(job.output_key)
        if existing is not None:
            return existing, len(loads_jsonl(self._get("output_key", existing)))
        dataset = self._read_records("dataset", job.dataset, ("id",))
        scores = {r["id"]: r for r in self._read_records("scores", job.scores, ("id",))}
        rows = []
        for i, r in enumerate(dataset):
            if r["id"] not in scores:
                raise InvalidRequest("scores", f"no scores for dataset record {i} ({r['id']!r})")
            rows.append({**scores[r["id"]], "id": r["id"]})
        try:
            if job.ifd_filter:
                rows = selection.ifd_filter(rows, job.ifd_column)
            if job.policy == "top_k":
                ids = selection.top_k(rows, job.column, job.k, job.ascending)
            elif job.policy == "ratio":
                ids = selection.top_ratio(rows, job.column, job.ratio, job.ascending)
            elif job.policy == "threshold":
                ids = selection.threshold(rows, job.column, job.threshold, job.ascending)
            else:
                by_id = {r["id"]: r for r in dataset}
                texts = [f"{by_id[r['id']].get('prompt', '')}\n{by_id[r['id']].get('response', '')}" for r in rows]
                embeddings = self._with_model(
                    job.base, job.adapter, lambda model, tok: selection.embed_records(model, tok, texts)
                )
                quality = None
                if job.column:
                    quality = [(-1 if job.ascending else 1) * float(r[job.column]) for r in rows]
                gap = [float(r[job.gap_column]) for r in rows] if job.gap_column else None
                ids = selection.diversity_first(
                    [r["id"] for r in rows], embeddings, job.k, job.n_clusters, quality,
                    job.temperature, job.quota, job.seed, gap, job.gap_temperature,
                )
        except (KeyError, ValueError) as e:
            raise InvalidRequest("column", f"{type(e).__name__}: {e}") from None
        by_id = {r["id"]: r for r in dataset}
        ref = self.store.put_bytes(job.output_key, dumps_jsonl(by_id[i] for i in ids))
        log.info("selected %d of %d (%s) -> %s", len(ids), len(dataset), job.policy, ref.uri)
        return ref, len(ids)

    def _sample(self, job: SampleJob) -> tuple[ArtifactRef, int]:
        """n completions per record's prompt from the student as given (its adapter applied)."""
        existing = self._stat_output(job.output_key)
        if existing is not None:
            return existing, len(loads_jsonl(self._get("output_key", existing)))
        records = self._read_records("dataset", job.dataset, ("id", "prompt"))
        if not records:
            raise InvalidRequest("dataset", "holds no records")
        convs = [[{"role": "user", "content": r["prompt"]}] for r in records for _ in range(job.n)]

        def work(model, tok) -> list[str]:
            return evaluation.generate_texts(model, tok, convs, max_new_tokens=job.max_new_tokens, temperature=job.temperature,
                                             top_p=job.top_p, seed=job.seed)  # fmt: skip

        texts = self._with_model(job.base, job.adapter, work)
        rows = [
            {"id": f"{r['id']}-s{j}", "source_id": r["id"], "prompt": r["prompt"], "response": texts[i * job.n + j],
             **({"category": r["category"]} if isinstance(r.get("category"), str) else {})}
            for i, r in enumerate(records) for j in range(job.n)
        ]  # fmt: skip
        ref = self.store.put_bytes(job.output_key, dumps_jsonl(rows))
        log.info("sampled %d completions of %d prompts -> %s", len(rows), len(records), ref.uri)
        return ref, len(rows)

    def _evaluate(self, job: EvaluateJob) -> tuple[ArtifactRef, evaluation.EvalSummary]:
        existing = self._stat_output(job.output_key)
        if existing is not None:
            rows = loads_jsonl(self._get("output_key", existing))
            return existing, evaluation.EvalSummary(
                correct=sum(bool(r["correct"]) for r in rows), total=len(rows)
            )
        records = self._read_records("eval_set", job.eval_set, ("id", "prompt", "label"))
        if not records:
            raise InvalidRequest("eval_set", "holds no records")
        if job.scorer in (LABEL_LIKELIHOOD, LABEL_GENERATION):
            for i, r in enumerate(records):
                if r["label"] not in job.labels:
                    raise InvalidRequest("eval_set", f"record {i}: label {r['label']!r} is not in labels")
        if job.scorer == LABEL_LIKELIHOOD:
            work = lambda model, tok: evaluation.evaluate_classification(
                model, tok, records, list(job.labels), batch_size=job.batch_size
            )
        else:
            match = {LABEL_GENERATION: answers.LABEL, NUMERIC_MATCH: answers.NUMERIC}.get(job.scorer, answers.EXACT)
            work = lambda model, tok: evaluation.evaluate_generation(
                model, tok, records, match, list(job.labels), max_new_tokens=job.max_new_tokens,
                batch_size=job.batch_size or 16, dtype=job.dtype,
            )
        rows, summary = self._with_model(job.base, job.adapter, work)
        ref = self.store.put_bytes(job.output_key, dumps_jsonl(rows))
        SAMPLES_EVALUATED.inc(summary.total)
        log.info("evaluated %d items: accuracy %.3f -> %s", summary.total, summary.accuracy, ref.uri)
        return ref, summary
