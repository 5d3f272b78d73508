"""The TeacherService servicer: validate the request, read inputs, run the teacher, publish outputs.

The logic lives elsewhere (`generation`, `critique`, `backend`); this module only maps between the
protos, the artifact store and those modules, and maps every failure to a specific status code:
INVALID_ARGUMENT naming the field, NOT_FOUND for a missing input artifact, DATA_LOSS for a checksum
mismatch, FAILED_PRECONDITION for an unknown model.

Both RPCs are idempotent: an output key that already exists is returned as is (docs/contracts.md).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable

import grpc
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc

from syllabus.artifacts import (
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStore,
    ChecksumMismatch,
    InvalidKey,
    validate_key,
)
from syllabus.models import ModelNotFound, check_model_ref
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.records import dumps_jsonl, loads_jsonl
from teacher_svc.backend import Backend, BackendRequestError, BackendUnavailable, Sampling, load_backend
from teacher_svc.critique import judge
from teacher_svc.errors import DEFAULT_EXAMPLES_PER_SKILL, analyze_confusions
from teacher_svc.leakage import LeakageGuard
from teacher_svc.generation import DEFAULT_BATCH_SIZE, ExpansionRequest, Seed, expand_seeds, parse_seeds

MAX_PER_LABEL = 10_000
MAX_N = 64
MAX_BATCH_SIZE = 1024
STATS_SUFFIX = ".stats.json"  # Generate's counts, published before the examples so retries can return them


class RequestFailed(Exception):
    """A request that cannot be served, with the status code and message the client gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(field: str, problem: str) -> RequestFailed:
    """INVALID_ARGUMENT naming the field, in the `syllabus.serving.abort_invalid` format."""
    return RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


class ModelCache:
    """Loaded teacher backends, one per model base; thread-safe, loads each base once."""

    def __init__(self, load: Callable[[str], Backend] = load_backend) -> None:
        self._load = load
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def get(self, base: str) -> Backend:
        """The backend for `base`, loading it on first use (raises ModelNotFound)."""
        with self._lock:
            if base not in self._backends:
                self._backends[base] = self._load(base)
            return self._backends[base]


class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    """grpc.aio servicer of syllabus.teacher.v1.TeacherService."""

    def __init__(self, store: ArtifactStore, models: ModelCache | None = None) -> None:
        self.store = store
        self.models = models or ModelCache()
        # One model job at a time: the model is the bottleneck, and the event loop stays free for
        # health checks while the job runs in a worker thread.
        self._model_lock = asyncio.Lock()

    async def Generate(self, request: teacher_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            return await self._generate(request)
        except RequestFailed as e:
            await context.abort(e.code, e.message)

    async def Critique(self, request: teacher_pb2.CritiqueRequest, context: grpc.aio.ServicerContext):
        try:
            return await self._critique(request)
        except RequestFailed as e:
            await context.abort(e.code, e.message)

    async def AnalyzeErrors(self, request: teacher_pb2.AnalyzeErrorsRequest, context: grpc.aio.ServicerContext):
        try:
            return await self._analyze_errors(request)
        except RequestFailed as e:
            await context.abort(e.code, e.message)

    # -- Generate ---------------------------------------------------------------------------------

    async def _generate(self, request: teacher_pb2.GenerateRequest) -> teacher_pb2.GenerateResponse:
        base = _check_model(request.model)
        _check_kind(request.kind)
        if not request.instructions.strip():
            raise invalid("instructions", "required")
        labels = _check_labels(request.labels)
        if not 0 < request.per_label <= MAX_PER_LABEL:
            raise invalid("per_label", f"must be > 0 and <= {MAX_PER_LABEL}, got {request.per_label}")
        sampling = _sampling(request.sampling)
        if not 0 <= request.batch_size <= MAX_BATCH_SIZE:
            raise invalid("batch_size", f"must be in [0, {MAX_BATCH_SIZE}], got {request.batch_size}")
        if request.round < 0:
            raise invalid("round", f"must be >= 0, got {request.round}")
        key = _check_key("output_key", request.output_key)
        seeds_ref = _required_ref("seeds", request.seeds)

        if existing := await asyncio.to_thread(self.store.stat, key):
            return await asyncio.to_thread(self._existing_generate, key, existing)

        seeds = await self._read_seeds(seeds_ref)
        missing = [label for label in labels if not any(s.label == label for s in seeds)]
        if missing:
            raise invalid("seeds", f"no seed example for label(s) {', '.join(map(repr, missing))}")
        req = ExpansionRequest(
            instructions=request.instructions,
            labels=labels,
            seeds=seeds,
            per_label=request.per_label,
            sampling=sampling,
            batch_size=request.batch_size or DEFAULT_BATCH_SIZE,
            round=request.round,
        )
        guard = None
        if eval_ref := ref_from_pb(request.eval):
            eval_items = await asyncio.to_thread(self._records, "eval", eval_ref)
            guard = LeakageGuard([str(r.get("input", "")) for r in eval_items])
        async with self._model_lock:
            backend = await self._backend(base)
            try:
                result = await asyncio.to_thread(expand_seeds, backend, req)
            except BackendUnavailable as e:
                raise RequestFailed(grpc.StatusCode.UNAVAILABLE, f"model.base: {e}") from e
            except BackendRequestError as e:
                raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION, f"model.base: {e}") from e
        records = guard.filter(result.records) if guard else result.records
        resp = teacher_pb2.GenerateResponse(
            generated=len(records),
            duplicates_removed=result.duplicates_removed,
            unparsable=result.unparsable,
            tokens_generated=result.tokens_generated,
            leaked_removed=guard.total_dropped if guard else 0,
        )
        stats = {
            "duplicates_removed": resp.duplicates_removed,
            "unparsable": resp.unparsable,
            "tokens_generated": resp.tokens_generated,
            "leaked_removed": resp.leaked_removed,
        }
        await asyncio.to_thread(
            self.store.put_bytes, key + STATS_SUFFIX, json.dumps(stats, sort_keys=True).encode()
        )
        ref = await asyncio.to_thread(self.store.put_bytes, key, dumps_jsonl(records))
        resp.examples.CopyFrom(ref_to_pb(ref))
        return resp

    def _existing_generate(self, key: str, ref: ArtifactRef) -> teacher_pb2.GenerateResponse:
        """The response of the run that published `key` (counts from the file and its stats sidecar)."""
        resp = teacher_pb2.GenerateResponse(
            examples=ref_to_pb(ref), generated=len(self._records("output_key", ref))
        )
        if stats_ref := self.store.stat(key + STATS_SUFFIX):
            stats = json.loads(self.store.get_bytes(stats_ref))
            resp.duplicates_removed = stats["duplicates_removed"]
            resp.unparsable = stats["unparsable"]
            resp.tokens_generated = stats["tokens_generated"]
            resp.leaked_removed = stats.get("leaked_removed", 0)
        return resp

    async def _backend(self, base: str) -> Backend:
        try:
            return await asyncio.to_thread(self.models.get, base)
        except (ModelNotFound, ValueError, ImportError) as e:
            raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION, f"model.base: {e}") from e

    async def _read_seeds(self, ref: ArtifactRef) -> list[Seed]:
        records = await asyncio.to_thread(self._records, "seeds", ref)
        try:
            return parse_seeds(records)
        except ValueError as e:
            raise invalid("seeds", str(e)) from e

    # -- Critique ---------------------------------------------------------------------------------

    async def _critique(self, request: teacher_pb2.CritiqueRequest) -> teacher_pb2.CritiqueResponse:
        if request.mode not in (teacher_pb2.CRITIQUE_MODE_UNSPECIFIED, teacher_pb2.CRITIQUE_MODE_JUDGE):
            raise invalid("mode", f"unsupported critique mode {request.mode}")
        _check_kind(request.kind)
        labels = _check_labels(request.labels)
        examples_ref = _required_ref("examples", request.examples)
        seeds_ref = _required_ref("seeds", request.seeds)
        kept_key = _check_key("output_key", request.output_key + "-kept.jsonl" if request.output_key else "")
        critiques_key = _check_key("output_key", request.output_key + "-critiques.jsonl")

        kept_ref = await asyncio.to_thread(self.store.stat, kept_key)
        critiques_ref = await asyncio.to_thread(self.store.stat, critiques_key)
        if kept_ref and critiques_ref:
            verdicts = await asyncio.to_thread(self._records, "output_key", critiques_ref)
            kept_count = sum(1 for v in verdicts if v.get("keep"))
            return teacher_pb2.CritiqueResponse(
                kept=ref_to_pb(kept_ref),
                critiques=ref_to_pb(critiques_ref),
                kept_count=kept_count,
                dropped_count=len(verdicts) - kept_count,
            )

        examples = await asyncio.to_thread(self._records, "examples", examples_ref)
        seeds = await self._read_seeds(seeds_ref)
        verdicts = judge(examples, labels, seeds)
        kept = [ex for ex, v in zip(examples, verdicts, strict=True) if v.keep]
        # Critiques last: both outputs exist once the critiques do.
        kept_ref = await asyncio.to_thread(self.store.put_bytes, kept_key, dumps_jsonl(kept))
        critiques_ref = await asyncio.to_thread(
            self.store.put_bytes, critiques_key, dumps_jsonl(v.record() for v in verdicts)
        )
        return teacher_pb2.CritiqueResponse(
            kept=ref_to_pb(kept_ref),
            critiques=ref_to_pb(critiques_ref),
            kept_count=len(kept),
            dropped_count=len(verdicts) - len(kept),
        )

    # -- AnalyzeErrors ----------------------------------------------------------------------------

    async def _analyze_errors(self, request: teacher_pb2.AnalyzeErrorsRequest) -> teacher_pb2.AnalyzeErrorsResponse:
        _check_kind(request.kind)
        labels = _check_labels(request.labels)
        predictions_ref = _required_ref("predictions", request.predictions)
        eval_ref = _required_ref("eval", request.eval)
        if request.examples_per_skill < 0:
            raise invalid("examples_per_skill", f"must be >= 0, got {request.examples_per_skill}")
        key = _check_key("output_key", request.output_key)
        predictions = await asyncio.to_thread(self._records, "predictions", predictions_ref)
        eval_items = await asyncio.to_thread(self._records, "eval", eval_ref)
        try:
            analysis = analyze_confusions(
                predictions, eval_items, labels, request.examples_per_skill or DEFAULT_EXAMPLES_PER_SKILL
            )
        except ValueError as e:
            raise invalid("predictions", str(e)) from e
        ref = await asyncio.to_thread(self.store.stat, key) or await asyncio.to_thread(
            self.store.put_bytes, key, dumps_jsonl(analysis.skills)
        )
        return teacher_pb2.AnalyzeErrorsResponse(
            skills=ref_to_pb(ref), evaluated=analysis.evaluated, wrong=analysis.wrong
        )

    # -- artifacts --------------------------------------------------------------------------------

    def _records(self, field: str, ref: ArtifactRef) -> list[dict]:
        """JSONL records of an input artifact, with store failures mapped to status codes (blocking)."""
        try:
            data = self.store.get_bytes(ref)
        except ArtifactNotFound as e:
            raise RequestFailed(grpc.StatusCode.NOT_FOUND, f"{field}: {e}") from e
        except ChecksumMismatch as e:
            raise RequestFailed(grpc.StatusCode.DATA_LOSS, f"{field}: {e}") from e
        except InvalidKey as e:
            raise invalid(f"{field}.uri", str(e)) from e
        try:
            records = loads_jsonl(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise invalid(field, f"not a JSONL file: {e}") from e
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise invalid(field, f"record {i} is not a JSON object")
        return records


# -- validation helpers ---------------------------------------------------------------------------


def _check_model(model: common_pb2.ModelRef) -> str:
    if not model.base:
        raise invalid("model.base", "required (bundled:smollm2-135m-instruct or a local HF model directory)")
    if model.adapter.uri:
        raise RequestFailed(
            grpc.StatusCode.UNIMPLEMENTED, "model.adapter: teacher adapters are not supported yet"
        )
    if model.base.startswith("openai:"):  # a remote endpoint: reachability is checked when it is used
        return model.base
    try:
        check_model_ref(model.base.removeprefix("vllm:"))
    except ModelNotFound as e:
        raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION, f"model.base: {e}") from e
    return model.base


def _check_kind(kind: int) -> None:
    if kind != common_pb2.TASK_KIND_CLASSIFICATION:
        name = common_pb2.TaskKind.Name(kind) if kind in common_pb2.TaskKind.values() else str(kind)
        raise invalid("kind", f"must be TASK_KIND_CLASSIFICATION, got {name}")


def _check_labels(labels) -> list[str]:
    labels = list(labels)
    if len(labels) < 2:
        raise invalid("labels", f"at least 2 labels required, got {len(labels)}")
    if any(not label.strip() for label in labels):
        raise invalid("labels", "labels must be non-empty")
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise invalid("labels", f"duplicate labels: {', '.join(dupes)}")
    return labels


def _check_key(field: str, key: str) -> str:
    try:
        return validate_key(key)
    except InvalidKey as e:
        raise invalid(field, str(e)) from e


def _required_ref(field: str, msg: common_pb2.ArtifactRef) -> ArtifactRef:
    ref = ref_from_pb(msg)
    if ref is None:
        raise invalid(field, "required (an ArtifactRef to a JSONL artifact)")
    return ref


def _sampling(msg: common_pb2.SamplingParams) -> Sampling:
    """Validated sampling parameters; float32 fields are rounded so provenance reads 0.9, not 0.899999976."""
    temperature, top_p = round(msg.temperature, 6), round(msg.top_p, 6)
    if not 0 <= temperature <= 5:
        raise invalid("sampling.temperature", f"must be in [0, 5], got {temperature}")
    if not 0 <= top_p <= 1:
        raise invalid("sampling.top_p", f"must be in (0, 1] (0 means 1), got {top_p}")
    if msg.max_new_tokens <= 0:
        raise invalid("sampling.max_new_tokens", f"must be > 0, got {msg.max_new_tokens}")
    n = msg.n or 1
    if not 0 < n <= MAX_N:
        raise invalid("sampling.n", f"must be in [0, {MAX_N}] (0 means 1), got {msg.n}")
    if temperature == 0 and n != 1:
        raise invalid("sampling.n", "must be 1 with temperature 0 (greedy decoding gives one answer)")
    return Sampling(
        temperature=temperature, top_p=top_p or 1.0, max_new_tokens=msg.max_new_tokens, n=n, seed=msg.seed
    )
