"""The TeacherService servicer: validate the request, read inputs, run the teacher, publish outputs.

The logic lives elsewhere (`generation`, `critique`, `backend`); this module only maps between the
protos, the artifact store and those modules, and maps every failure to a specific status code:
INVALID_ARGUMENT naming the field, NOT_FOUND for a missing input artifact, DATA_LOSS for a checksum
mismatch, FAILED_PRECONDITION for an unknown model.

Both RPCs are idempotent: an output key that already exists is returned as is (docs/contracts.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format

from syllabus import kinds
from syllabus.artifacts import (
    ArtifactRef,
    ArtifactStore,
    InvalidKey,
    generate_stats_key,
    validate_output_key,
    validate_sha256,
)
from syllabus.models import ModelNotFound, check_model_ref, fetch_adapter
from syllabus.pb import first_nonfinite, kind_from_pb, ref_from_pb, ref_to_pb
from syllabus.records import content_id, dumps_jsonl, loads_jsonl
from syllabus.serving import InvalidRequest, RequestFailed, in_model_thread, reading
from syllabus.telemetry import model_turn
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from teacher_svc.backend import (
    Backend,
    BackendRequestError,
    BackendUnavailable,
    Sampling,
    TransformersBackend,
    load_backend,
)
from teacher_svc.critics import RUBRIC_METHOD, cft_critique, reflect, rubric_revise
from teacher_svc.critique import judge
from teacher_svc.errors import DEFAULT_EXAMPLES_PER_SKILL, analyze_answers, analyze_confusions
from teacher_svc.generation import DEFAULT_BATCH_SIZE, ExpansionRequest, Seed, expand_seeds, parse_seeds
from teacher_svc.leakage import LeakageGuard
from teacher_svc.metering import MeteredBackend
from teacher_svc.openai_backend import is_url_like
from teacher_svc.reasoning import (
    STYLES,
    Question,
    RationaleResult,
    RejectionResult,
    rejection_sample,
    write_rationales,
)
from teacher_svc.tailor import build_pairs, drafts_from_records
from teacher_svc.targeted import Skill, expand_until_accepted, generate_targeted

MAX_PER_LABEL = 10_000
MAX_N = 64
MAX_BATCH_SIZE = 1024


#: Teacher backends with an adapter applied (each a whole model copy) kept loaded at most.
MAX_ADAPTER_BACKENDS = 2


class ModelCache:
    """Loaded teacher backends, one per (model base, adapter); thread-safe, loads each once. Base
    models stay; of the backends with an adapter (an ARTE-tailored teacher, one per job and round)
    only the `max_adapters` used last do, so a stream of tailored jobs cannot grow memory without
    bound. Eviction is safe: the service runs one model call at a time (its model lock), and a call
    holds its backend for as long as it runs."""

    def __init__(self, load: Callable[[str], Backend] = load_backend, *, load_adapter=None,
                 max_adapters: int = MAX_ADAPTER_BACKENDS) -> None:  # fmt: skip
        self._load = load
        self._load_adapter = load_adapter or TransformersBackend.load
        self.max_adapters = max_adapters
        self._backends: dict[tuple[str, str], Backend] = {}
        self._lock = threading.Lock()

    def get(self, base: str, adapter_dir: Path | None = None, adapter_sha256: str = "") -> Backend:
        """The backend for `base` (with the peft adapter in `adapter_dir` applied, transformers
        backends only), loading it on first use (raises ModelNotFound, or ValueError for an adapter
        on a backend that cannot apply one)."""
        key = (base, adapter_sha256 if adapter_dir is not None else "")
        with self._lock:
            if key in self._backends:
                self._backends[key] = self._backends.pop(key)  # most recently used last
            elif adapter_dir is None:
                self._backends[key] = self._load(base)
            else:
                if base.startswith(("openai:", "vllm:")):
                    raise ValueError("adapters are supported on transformers backends only")
                adapted = [k for k in self._backends if k[1]]
                for old in adapted[: max(0, len(adapted) - self.max_adapters + 1)]:
                    del self._backends[old]  # the least recently used first
                self._backends[key] = self._load_adapter(base, adapter_dir, adapter_sha256)
            return self._backends[key]

    def loaded(self) -> list[tuple[str, str]]:
        """(base, adapter sha256 or "") of the loaded backends, least recently used first."""
        with self._lock:
            return list(self._backends)


#: TopLogprobs' self-test: records scored again alone, and how far (nats) a token's log-prob may move.
SELF_TEST_RECORDS = 4
SELF_TEST_TOLERANCE = 0.05


class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    """grpc.aio servicer of syllabus.teacher.v1.TeacherService."""

    def __init__(
        self,
        store: ArtifactStore,
        models: ModelCache | None = None,
        *,
        adapter_cache: Path | None = None,
    ) -> None:
        self.store = store
        self.models = models or ModelCache()
        self.adapter_cache = adapter_cache or Path(tempfile.gettempdir()) / "syllabus-teacher-adapters"
        # One model job at a time: the model is the bottleneck, and the event loop stays free for
        # health checks while the job runs in a worker thread.
        self._model_lock = asyncio.Lock()

    async def Generate(self, request: teacher_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        return await self._serve(self._generate, request, context)

    async def Critique(self, request: teacher_pb2.CritiqueRequest, context: grpc.aio.ServicerContext):
        return await self._serve(self._critique, request, context)

    async def Tailor(self, request: teacher_pb2.TailorRequest, context: grpc.aio.ServicerContext):
        return await self._serve(self._tailor, request, context)

    async def AnalyzeErrors(self, request: teacher_pb2.AnalyzeErrorsRequest, context: grpc.aio.ServicerContext):
        return await self._serve(self._analyze_errors, request, context)

    async def TopLogprobs(self, request: teacher_pb2.TopLogprobsRequest, context: grpc.aio.ServicerContext):
        return await self._serve(self._top_logprobs, request, context)

    async def _serve(self, handler, request, context: grpc.aio.ServicerContext):
        """Run one RPC: non-finite numbers are refused up front, failures map to status codes; an
        InvalidKey not mapped by the input readers comes from an output key (a directory-like prefix)."""
        try:
            if bad := first_nonfinite(request):
                raise InvalidRequest(bad, "must be a finite number (no inf or NaN)")
            return await handler(request)
        except RequestFailed as e:
            await e.abort(context)
        except InvalidKey as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"output_key: {e}")

    # -- Generate ---------------------------------------------------------------------------------

    async def _generate(self, request: teacher_pb2.GenerateRequest) -> teacher_pb2.GenerateResponse:
        mode = request.mode or teacher_pb2.GENERATE_MODE_SEED_EXPANSION
        if mode not in teacher_pb2.GenerateMode.values():
            raise InvalidRequest("mode", f"unknown generate mode {request.mode}")
        _check_model(request.model)
        if not request.instructions.strip():
            raise InvalidRequest("instructions", "required")
        sampling = _sampling(request.sampling)
        if not 0 <= request.batch_size <= MAX_BATCH_SIZE:
            raise InvalidRequest("batch_size", f"must be in [0, {MAX_BATCH_SIZE}], got {request.batch_size}")
        if request.round < 0:
            raise InvalidRequest("round", f"must be >= 0, got {request.round}")
        key = _check_key("output_key", request.output_key)
        if mode == teacher_pb2.GENERATE_MODE_SEED_EXPANSION:
            return await self._seed_expansion(request, sampling, key)
        if existing := await asyncio.to_thread(self.store.stat, key):
            return await asyncio.to_thread(self._existing_generate, key, existing)
        batch_size = request.batch_size or DEFAULT_BATCH_SIZE
        params = {"mode": teacher_pb2.GenerateMode.Name(mode), "batch_size": batch_size}
        resp = teacher_pb2.GenerateResponse()
        if mode in (teacher_pb2.GENERATE_MODE_RATIONALES, teacher_pb2.GENERATE_MODE_REJECTION_SAMPLING):
            questions = await self._read_questions(
                _required_ref("questions", request.questions), mode == teacher_pb2.GENERATE_MODE_REJECTION_SAMPLING
            )
            styles = list(request.styles)
            unknown = [st for st in styles if st not in STYLES]
            if unknown:
                raise InvalidRequest("styles", f"unknown style(s) {', '.join(map(repr, unknown))}; known: {', '.join(STYLES)}")
            if request.retries < 0:
                raise InvalidRequest("retries", f"must be >= 0, got {request.retries}")
            if mode == teacher_pb2.GENERATE_MODE_RATIONALES:
                styles = styles or list(STYLES)
                if request.per_style < 0:
                    raise InvalidRequest("per_style", f"must be >= 0 (0 means 1), got {request.per_style}")
                per_style = request.per_style or 1
                if sampling.n != 1:
                    raise InvalidRequest("sampling.n", "must be 1 (0) for rationales; use per_style for more draws")
                params |= {"styles": styles, "per_style": per_style, "retries": request.retries}

                def run(backend: Backend):
                    return write_rationales(
                        backend,
                        request.instructions,
                        questions,
                        styles,
                        sampling,
                        per_style,
                        batch_size,
                        request.round,
                        request.retries,
                    )
            else:
                verifier = request.verifier or "classification"
                try:
                    kinds.by_verifier(verifier)
                except ValueError as e:
                    raise InvalidRequest("verifier", str(e)) from None
                if not 0 < request.rejection_k <= MAX_N:
                    raise InvalidRequest("rejection_k", f"must be in [1, {MAX_N}], got {request.rejection_k}")
                if sampling.temperature == 0 and request.rejection_k > 1:
                    raise InvalidRequest("sampling.temperature", "rejection_k > 1 needs temperature > 0")
                if len(styles) > 1:
                    raise InvalidRequest("styles", "rejection sampling takes at most one style")
                style = styles[0] if styles else "step_by_step"
                params |= {"rejection_k": request.rejection_k, "verifier": verifier, "style": style}

                def run(backend: Backend):
                    return rejection_sample(
                        backend,
                        request.instructions,
                        questions,
                        verifier,
                        request.rejection_k,
                        sampling,
                        style,
                        batch_size,
                        request.round,
                    )
        else:  # TARGETED
            labels = _kind_labels(request.kind, request.labels)  # []: new questions for the answer kinds
            if not 0 < request.per_skill <= MAX_PER_LABEL:
                raise InvalidRequest("per_skill", f"must be > 0 and <= {MAX_PER_LABEL}, got {request.per_skill}")
            skill_records = await asyncio.to_thread(self._records, "skills", _required_ref("skills", request.skills))
            try:
                skills = [Skill.from_record(r) for r in skill_records]
            except (KeyError, TypeError) as e:
                raise InvalidRequest("skills", f"a skill record lacks {e}") from e
            if labels and (bad := [sk.label for sk in skills if sk.label not in labels]):
                raise InvalidRequest("skills", f"skill label(s) not in labels: {', '.join(map(repr, bad))}")
            seeds = await self._read_seeds(ref) if (ref := ref_from_pb(request.seeds)) else []
            params |= {"per_skill": request.per_skill}

            def run(backend: Backend):
                return generate_targeted(
                    backend,
                    request.instructions,
                    labels,
                    skills,
                    request.per_skill,
                    sampling,
                    seeds,
                    batch_size,
                    request.round,
                )

        result = await self._run_model(request.model, run)
        records = _with_params(result.records, params)
        guard = None
        if eval_ref := ref_from_pb(request.eval):
            eval_items = await asyncio.to_thread(self._records, "eval", eval_ref)
            guard = LeakageGuard([str(r.get("input", "")) for r in eval_items])
            records = guard.filter(records)
        resp.generated = len(records)
        resp.tokens_generated = result.tokens_generated
        resp.leaked_removed = guard.total_dropped if guard else 0
        if isinstance(result, RationaleResult):
            resp.failed = result.failed
        elif isinstance(result, RejectionResult):
            resp.unparsable, resp.sampled = result.unparsable, result.sampled
            resp.incorrect, resp.duplicate_paths = result.incorrect, result.duplicate_paths
        else:
            resp.duplicates_removed, resp.unparsable = result.duplicates_removed, result.unparsable
        return await self._publish_generate(key, records, resp)

    async def _seed_expansion(
        self, request: teacher_pb2.GenerateRequest, sampling: Sampling, key: str
    ) -> teacher_pb2.GenerateResponse:
        labels = _kind_labels(request.kind, request.labels)  # [] for question kinds: question expansion
        exact = request.accept_exactly
        if exact and not labels:
            raise InvalidRequest("accept_exactly", "needs a classification task (the judge vets labels)")
        if exact < 0 or exact > MAX_PER_LABEL:
            raise InvalidRequest("accept_exactly", f"must be in [0, {MAX_PER_LABEL}], got {exact}")
        if exact and request.token_budget <= 0:
            raise InvalidRequest("token_budget", f"must be > 0 with accept_exactly, got {request.token_budget}")
        if not exact and not 0 < request.per_label <= MAX_PER_LABEL:
            raise InvalidRequest("per_label", f"must be > 0 and <= {MAX_PER_LABEL}, got {request.per_label}")
        seeds_ref = _required_ref("seeds", request.seeds)

        if existing := await asyncio.to_thread(self.store.stat, key):
            return await asyncio.to_thread(self._existing_generate, key, existing)

        seeds = await self._read_seeds(seeds_ref)
        missing = [label for label in labels if not any(s.label == label for s in seeds)]  # fmt: skip
        if missing:
            raise InvalidRequest("seeds", f"no seed example for label(s) {', '.join(map(repr, missing))}")
        req = ExpansionRequest(
            instructions=request.instructions,
            labels=labels,
            seeds=seeds,
            per_label=request.per_label or 1,
            sampling=sampling,
            batch_size=request.batch_size or DEFAULT_BATCH_SIZE,
            round=request.round,
        )
        guard = None
        if eval_ref := ref_from_pb(request.eval):
            eval_items = await asyncio.to_thread(self._records, "eval", eval_ref)
            guard = LeakageGuard([str(r.get("input", "")) for r in eval_items])
        if exact:
            report = await self._run_model(
                request.model, lambda b: expand_until_accepted(b, req, exact, request.token_budget, guard)
            )
            params = {"mode": "GENERATE_MODE_SEED_EXPANSION", "accept_exactly": exact,
                      "token_budget": request.token_budget, "batch_size": req.batch_size}  # fmt: skip
            records = _with_params(report.records, params)
            resp = teacher_pb2.GenerateResponse(
                generated=len(records),
                tokens_generated=report.tokens_spent,
                duplicates_removed=report.dropped.get("duplicate", 0),
                unparsable=report.dropped.get("unparsable", 0),
                leaked_removed=sum(v for k, v in report.dropped.items() if k.startswith("leak_")),
                passes=report.passes,
                budget_exhausted=report.budget_exhausted,
            )
            for reason, count in report.dropped.items():
                resp.dropped_by_reason[reason] = count
            return await self._publish_generate(key, records, resp)
        result = await self._run_model(request.model, lambda b: expand_seeds(b, req))
        records = guard.filter(result.records) if guard else result.records
        resp = teacher_pb2.GenerateResponse(
            generated=len(records),
            duplicates_removed=result.duplicates_removed,
            unparsable=result.unparsable,
            tokens_generated=result.tokens_generated,
            leaked_removed=guard.total_dropped if guard else 0,
        )
        return await self._publish_generate(key, records, resp)

    async def _publish_generate(
        self, key: str, records: list[dict], resp: teacher_pb2.GenerateResponse
    ) -> teacher_pb2.GenerateResponse:
        """Stats sidecar first, then the examples (so a retry finding the examples finds the counts)."""
        stats = json_format.MessageToDict(resp, preserving_proto_field_name=True)
        await asyncio.to_thread(self.store.put_bytes, generate_stats_key(key), json.dumps(stats, sort_keys=True).encode())
        ref = await asyncio.to_thread(self.store.put_bytes, key, dumps_jsonl(records))
        resp.examples.CopyFrom(ref_to_pb(ref))
        return resp

    async def _run_model(self, model: common_pb2.ModelRef, fn: Callable[[Backend], object]):
        """Run `fn(backend)` in a worker thread under the model lock, mapping backend failures."""
        async with model_turn("teacher", self._model_lock):  # queue depth and busy, in the metrics
            backend = await self._backend_for(model)
            try:
                return await in_model_thread(fn, MeteredBackend(backend))
            except BackendUnavailable as e:
                raise RequestFailed(grpc.StatusCode.UNAVAILABLE, f"model.base: {e}") from e
            except BackendRequestError as e:
                raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION, f"model.base: {e}") from e
            except ValueError as e:
                raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e

    async def _read_questions(self, ref: ArtifactRef, need_answer: bool) -> list[Question]:
        records = await asyncio.to_thread(self._records, "questions", ref)
        questions = []
        for i, r in enumerate(records):
            text = r.get("input") or r.get("question")
            answer = r.get("answer", r.get("label"))
            if not isinstance(text, str) or not text.strip():
                raise InvalidRequest("questions", f'record {i} needs a non-empty "input" (or "question")')
            if need_answer and not isinstance(answer, str | int | float):
                raise InvalidRequest("questions", f'record {i} needs a gold "answer" (or "label")')
            qid = str(r.get("id") or content_id(text))
            questions.append(Question(qid, text, None if answer is None else str(answer)))
        if not questions:
            raise InvalidRequest("questions", "no questions")
        return questions

    def _existing_generate(self, key: str, ref: ArtifactRef) -> teacher_pb2.GenerateResponse:
        """The response of the run that published `key` (counts from the file and its stats sidecar)."""
        resp = teacher_pb2.GenerateResponse(examples=ref_to_pb(ref), generated=len(self._records("output_key", ref)))
        if stats_ref := self.store.stat(generate_stats_key(key)):
            stats = json.loads(self.store.get_bytes(stats_ref))
            stats = {k: v for k, v in stats.items() if k not in ("examples", "generated")}
            json_format.ParseDict(stats, resp, ignore_unknown_fields=True)
        return resp

    async def _backend_for(self, model: common_pb2.ModelRef) -> Backend:
        """The backend of a ModelRef: its base, with its adapter (fetched and verified) applied."""
        base = _check_model(model)
        adapter_ref = ref_from_pb(model.adapter)
        adapter_dir = None
        if adapter_ref is not None:
            try:
                with reading("model.adapter"):
                    adapter_dir = await asyncio.to_thread(fetch_adapter, self.store, adapter_ref, self.adapter_cache)
            except ValueError as e:
                raise InvalidRequest("model.adapter", str(e)) from e
        try:
            return await in_model_thread(self.models.get, base, adapter_dir, adapter_ref.sha256 if adapter_ref else "")
        except (ModelNotFound, ValueError, ImportError) as e:
            raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION, f"model.base: {e}") from e

    async def _read_seeds(self, ref: ArtifactRef) -> list[Seed]:
        records = await asyncio.to_thread(self._records, "seeds", ref)
        try:
            return parse_seeds(records)
        except ValueError as e:
            raise InvalidRequest("seeds", str(e)) from e

    # -- Critique ---------------------------------------------------------------------------------

    async def _critique(self, request: teacher_pb2.CritiqueRequest) -> teacher_pb2.CritiqueResponse:
        mode = request.mode or teacher_pb2.CRITIQUE_MODE_RULES
        if mode not in teacher_pb2.CritiqueMode.values():
            raise InvalidRequest("mode", f"unsupported critique mode {request.mode}")
        if mode != teacher_pb2.CRITIQUE_MODE_RULES:
            return await self._model_critique(request, mode)
        labels = _kind_labels(request.kind, request.labels)  # []: answer kinds, no label rule
        examples_ref = _required_ref("examples", request.examples)
        seeds_ref = _required_ref("seeds", request.seeds)
        kept_key = _check_key("output_key", request.output_key + "-kept.jsonl" if request.output_key else "")
        critiques_key = _check_key("output_key", request.output_key + "-critiques.jsonl")

        if done := await self._existing_critique(kept_key, critiques_key):
            return done

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

    async def _existing_critique(self, kept_key: str, critiques_key: str, rubrics_key: str = ""):
        kept_ref = await asyncio.to_thread(self.store.stat, kept_key)
        critiques_ref = await asyncio.to_thread(self.store.stat, critiques_key)
        if not (kept_ref and critiques_ref):
            return None
        verdicts = await asyncio.to_thread(self._records, "output_key", critiques_ref)
        # The rubrics' own replies lead the critiques of the rubric mode; the counts are per example.
        verdicts = [v for v in verdicts if (v.get("provenance") or {}).get("method") != RUBRIC_METHOD]
        if "keep" in (verdicts[0] if verdicts else {"keep": 0}):
            kept_count = sum(1 for v in verdicts if v.get("keep"))
            failed = 0
        else:
            kept_count = sum(1 for v in verdicts if v.get("status") == "ok")
            failed = len(verdicts) - kept_count
        resp = teacher_pb2.CritiqueResponse(
            kept=ref_to_pb(kept_ref),
            critiques=ref_to_pb(critiques_ref),
            kept_count=kept_count,
            dropped_count=len(verdicts) - kept_count,
            failed_count=failed,
        )
        if rubrics_key and (rubrics_ref := await asyncio.to_thread(self.store.stat, rubrics_key)):
            resp.rubrics.CopyFrom(ref_to_pb(rubrics_ref))
        return resp

    async def _model_critique(self, request: teacher_pb2.CritiqueRequest, mode: int) -> teacher_pb2.CritiqueResponse:
        """CFT, rubric + revision, reflection: one record per example, "status" ok or failed; kept = ok."""
        _check_model(request.model)
        sampling = _sampling(request.sampling)
        if sampling.n != 1:
            raise InvalidRequest("sampling.n", "must be 1 (0) for critique modes")
        if not 0 <= request.batch_size <= MAX_BATCH_SIZE:
            raise InvalidRequest("batch_size", f"must be in [0, {MAX_BATCH_SIZE}], got {request.batch_size}")
        if request.retries < 0:
            raise InvalidRequest("retries", f"must be >= 0, got {request.retries}")
        examples_ref = _required_ref("examples", request.examples)
        prefix = request.output_key
        kept_key = _check_key("output_key", prefix + "-kept.jsonl" if prefix else "")
        critiques_key = _check_key("output_key", prefix + "-critiques.jsonl")
        rubrics_key = _check_key("output_key", prefix + "-rubrics.jsonl")
        is_rubric = mode == teacher_pb2.CRITIQUE_MODE_RUBRIC_REVISION
        if done := await self._existing_critique(kept_key, critiques_key, rubrics_key if is_rubric else ""):
            return done
        examples = await asyncio.to_thread(self._records, "examples", examples_ref)
        batch_size = request.batch_size or DEFAULT_BATCH_SIZE
        fn = {
            teacher_pb2.CRITIQUE_MODE_CFT: cft_critique,
            teacher_pb2.CRITIQUE_MODE_RUBRIC_REVISION: rubric_revise,
            teacher_pb2.CRITIQUE_MODE_REFLECTION: reflect,
        }[mode]
        try:
            out = await self._run_model(request.model, lambda b: fn(b, examples, sampling, batch_size, request.retries))
        except RequestFailed as e:
            if e.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidRequest("examples", e.message) from None
            raise
        params = {"mode": teacher_pb2.CritiqueMode.Name(mode), "batch_size": batch_size, "retries": request.retries}
        rubrics = None
        if is_rubric:
            rubrics, records = out
            rubrics = _with_params(rubrics, params)
        else:
            records = out
        records = _with_params(records, params)
        kept = [r for r in records if r.get("status") == "ok"]
        resp = teacher_pb2.CritiqueResponse(
            kept_count=len(kept), dropped_count=len(records) - len(kept), failed_count=len(records) - len(kept)
        )
        if rubrics is not None:
            resp.rubrics.CopyFrom(
                ref_to_pb(await asyncio.to_thread(self.store.put_bytes, rubrics_key, dumps_jsonl(rubrics)))
            )
        resp.kept.CopyFrom(ref_to_pb(await asyncio.to_thread(self.store.put_bytes, kept_key, dumps_jsonl(kept))))
        # Every reply the mode parsed, the rubrics first: one artifact tells how each step's replies parsed.
        replies = (rubrics or []) + records
        resp.critiques.CopyFrom(
            ref_to_pb(await asyncio.to_thread(self.store.put_bytes, critiques_key, dumps_jsonl(replies)))
        )
        return resp

    # -- Tailor (ARTE) ----------------------------------------------------------------------------

    async def _tailor(self, request: teacher_pb2.TailorRequest) -> teacher_pb2.TailorResponse:
        """The ARTE pairs only: training and regeneration are the orchestrator's steps."""
        if not request.instructions.strip():
            raise InvalidRequest("instructions", "required")
        drafts_ref = _required_ref("drafts", request.drafts)
        scores_ref = _required_ref("scores", request.scores)
        pairs_key = _check_key("output_key", request.output_key)
        drafts = await asyncio.to_thread(self._records, "drafts", drafts_ref)
        score_rows = await asyncio.to_thread(self._records, "scores", scores_ref)
        try:
            built = drafts_from_records(drafts, score_rows)
        except ValueError as e:
            raise InvalidRequest("drafts", str(e)) from e
        pairs = build_pairs(built, request.instructions)
        if not pairs.records:
            raise RequestFailed(
                grpc.StatusCode.FAILED_PRECONDITION,
                "scores: no preference pairs (every question's rationales scored alike and no question-level "
                "gap); nothing to align",
            )
        # The pairs are a pure function of the inputs: a retry finds them published and returns them.
        pairs_ref = await asyncio.to_thread(self.store.stat, pairs_key) or await asyncio.to_thread(
            self.store.put_bytes, pairs_key, dumps_jsonl(pairs.records)
        )
        return teacher_pb2.TailorResponse(
            question_pairs=pairs.question_level, rationale_pairs=pairs.rationale_level, pairs=ref_to_pb(pairs_ref)
        )

    # -- TopLogprobs (token-level distillation) ---------------------------------------------------

    async def _top_logprobs(self, request: teacher_pb2.TopLogprobsRequest) -> teacher_pb2.TopLogprobsResponse:
        """Check teacher and student tokenize alike, then (records given) write the teacher's top-k
        of every response target, content-addressed: an existing artifact is returned as it is."""
        from syllabus import topk
        from syllabus.models import load_tokenizer
        from teacher_svc.logprobs import PROBE_PROMPT, PROBE_RESPONSE, first_difference

        if not request.student.base:
            raise InvalidRequest("student.base", "required: the student the log-probs are for")
        student = _check_model(request.student)
        if student.startswith(("openai:", "vllm:")):
            raise InvalidRequest("student.base", "the student is a local model (bundled:... or a model directory)")
        k = request.top_k or topk.DEFAULT_TOP_K
        if not 0 < k <= topk.MAX_TOP_K:
            raise InvalidRequest("top_k", f"must be in [1, {topk.MAX_TOP_K}] (0: {topk.DEFAULT_TOP_K}), got {request.top_k}")
        max_len = request.max_len or 512
        if len(request.context) > 16000:
            raise InvalidRequest("context", f"at most 16000 characters, got {len(request.context)}")
        prefix_text = f"{request.context.strip()}\n\n" if request.context.strip() else ""
        if max_len < 16:
            raise InvalidRequest("max_len", f"must be 0 (512) or >= 16, got {request.max_len}")
        records_ref = ref_from_pb(request.records)
        if records_ref is not None:
            _check_ref("records", request.records)
            prefix = _check_key("output_prefix", request.output_prefix)
        try:
            student_tok = await in_model_thread(load_tokenizer, student)
        except (ModelNotFound, OSError, ValueError) as e:
            raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION, f"student.base: {e}") from e

        def check(backend: Backend) -> dict[str, str]:
            if not callable(getattr(backend, "top_logprobs", None)) or backend.tokenizer is None:
                raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"model.base: {request.model.base} gives no prompt log-probs: token-level distillation needs a "
                                    "local teacher (bundled:..., a model directory, vllm:...) or an endpoint configured with "
                                    "its `tokenizer` (SYLLABUS_TEACHER_ENDPOINTS)")  # fmt: skip
            if diff := first_difference(backend.tokenizer, student_tok):
                raise RequestFailed(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"teacher {request.model.base} and student {student} tokenize differently: {diff}",
                )
            if backend.name == "openai":  # a remote server's support is known only once it is asked
                backend.top_logprobs([(PROBE_PROMPT, PROBE_RESPONSE)], k, max_len)
            revision = str(backend.revision)
            manifest = {"id": f"{request.model.base}@{revision}", "model": request.model.base, "revision": revision,
                        "backend": str(backend.name)}  # fmt: skip
            if prefix_text:  # a privileged context makes another teacher of the same weights
                manifest["context_sha256"] = hashlib.sha256(prefix_text.encode()).hexdigest()
                manifest["id"] += f"+context:{manifest['context_sha256'][:12]}"
            return manifest

        teacher = await self._run_model(request.model, check)
        if records_ref is None:
            return teacher_pb2.TopLogprobsResponse(teacher=teacher)
        # The key is a function of everything the numbers depend on: a retry, or a rerun on the same
        # records, finds them published.
        digest = hashlib.sha256(
            json.dumps([teacher["id"], student, k, max_len, records_ref.sha256]).encode()
        ).hexdigest()[:32]
        key = f"{prefix}-{digest}.npz"
        if existing := await asyncio.to_thread(self.store.stat, key):
            rows = await asyncio.to_thread(lambda: topk.loads(self.store.get_bytes(existing)).rows)
            return teacher_pb2.TopLogprobsResponse(
                logprobs=ref_to_pb(existing), records=len(rows), tokens=sum(len(r) for r in rows.values()),
                existing=True, teacher=teacher,
            )  # fmt: skip
        records = await asyncio.to_thread(self._records, "records", records_ref)
        pairs = {}
        for i, r in enumerate(records):
            if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
                raise InvalidRequest("records", f'record {i} needs string "prompt" and "response"')
            # the teacher reads the privileged context first; the record is still the student's
            pairs[topk.record_digest(r["prompt"], r["response"])] = (prefix_text + r["prompt"], r["response"])
        if not pairs:
            raise InvalidRequest("records", "no records")
        digests = list(pairs)

        def score(backend: Backend) -> list:
            # the context must not push the record's own prompt out of the window: it gets its own room
            room = max_len + len(backend.tokenizer(prefix_text, add_special_tokens=False)["input_ids"]) if prefix_text else max_len
            rows = backend.top_logprobs([pairs[d] for d in digests], k, room)
            # Self-test: a few records scored again, each alone (other batch-mates, other padding), must
            # agree, or the stored targets would depend on how the teacher happened to batch them.
            probe = digests[:: max(1, len(digests) // SELF_TEST_RECORDS)][:SELF_TEST_RECORDS]
            for d in probe:
                (again,) = backend.top_logprobs([pairs[d]], k, room)
                i = digests.index(d)
                gap = float(np.abs(again.chosen.astype(np.float32) - rows[i].chosen.astype(np.float32)).max(initial=0.0))
                if gap > SELF_TEST_TOLERANCE:
                    raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION,
                                        f"model.base: teacher self-test failed: one record scored twice differs by {gap:.3g} nats "
                                        f"(tolerance {SELF_TEST_TOLERANCE}); the teacher's log-probs are not reproducible")  # fmt: skip
            return rows

        rows = await self._run_model(request.model, score)
        data = topk.dumps(dict(zip(digests, rows, strict=True)), k, teacher)
        ref = await asyncio.to_thread(self.store.put_bytes, key, data)
        return teacher_pb2.TopLogprobsResponse(
            logprobs=ref_to_pb(ref), records=len(digests), tokens=sum(len(r) for r in rows), teacher=teacher
        )

    # -- AnalyzeErrors ----------------------------------------------------------------------------

    async def _analyze_errors(self, request: teacher_pb2.AnalyzeErrorsRequest) -> teacher_pb2.AnalyzeErrorsResponse:
        labels = _kind_labels(request.kind, request.labels)
        if not labels:
            return await self._analyze_answers(request)
        predictions_ref = _required_ref("predictions", request.predictions)
        eval_ref = _required_ref("eval", request.eval)
        if request.examples_per_skill < 0:
            raise InvalidRequest("examples_per_skill", f"must be >= 0, got {request.examples_per_skill}")
        key = _check_key("output_key", request.output_key)
        predictions = await asyncio.to_thread(self._records, "predictions", predictions_ref)
        eval_items = await asyncio.to_thread(self._records, "eval", eval_ref)
        try:
            analysis = analyze_confusions(
                predictions, eval_items, labels, request.examples_per_skill or DEFAULT_EXAMPLES_PER_SKILL
            )
        except ValueError as e:
            raise InvalidRequest("predictions", str(e)) from e
        ref = await asyncio.to_thread(self.store.stat, key) or await asyncio.to_thread(
            self.store.put_bytes, key, dumps_jsonl(analysis.skills)
        )
        return teacher_pb2.AnalyzeErrorsResponse(
            skills=ref_to_pb(ref), evaluated=analysis.evaluated, wrong=analysis.wrong
        )

    async def _analyze_answers(self, request: teacher_pb2.AnalyzeErrorsRequest) -> teacher_pb2.AnalyzeErrorsResponse:
        """The answer kinds: the teacher names the skill each wrong answer misses (`analyze_answers`)."""
        _check_model(request.model)
        sampling = _sampling(request.sampling)
        predictions_ref = _required_ref("predictions", request.predictions)
        eval_ref = _required_ref("eval", request.eval)
        if request.examples_per_skill < 0:
            raise InvalidRequest("examples_per_skill", f"must be >= 0, got {request.examples_per_skill}")
        key = _check_key("output_key", request.output_key)
        if existing := await asyncio.to_thread(self.store.stat, key):
            skills = await asyncio.to_thread(self._records, "output_key", existing)
            return teacher_pb2.AnalyzeErrorsResponse(skills=ref_to_pb(existing), wrong=sum(int(s.get("count", 0)) for s in skills))
        predictions = await asyncio.to_thread(self._records, "predictions", predictions_ref)
        items = {str(r.get("id")): r for r in await asyncio.to_thread(self._records, "eval", eval_ref)}
        wrong = [
            {"id": str(p["id"]), "question": str(items[str(p["id"])].get("input", "")), "gold": str(p.get("label", "")),
             "prediction": str(p.get("generation", p.get("prediction", "")))}
            for p in predictions
            if not p.get("correct") and str(p.get("id")) in items
        ]  # fmt: skip
        analysis = await self._run_model(
            request.model,
            lambda b: analyze_answers(b, wrong, sampling, examples_per_skill=request.examples_per_skill or DEFAULT_EXAMPLES_PER_SKILL),
        )  # fmt: skip
        ref = await asyncio.to_thread(self.store.put_bytes, key, dumps_jsonl(analysis.skills))
        return teacher_pb2.AnalyzeErrorsResponse(skills=ref_to_pb(ref), evaluated=len(predictions), wrong=len(wrong))

    # -- artifacts --------------------------------------------------------------------------------

    def _records(self, field: str, ref: ArtifactRef) -> list[dict]:
        """JSONL records of an input artifact, with store failures mapped to status codes (blocking)."""
        with reading(field):
            data = self.store.get_bytes(ref)
        try:
            records = loads_jsonl(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise InvalidRequest(field, f"not a JSONL file: {type(e).__name__}") from e
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise InvalidRequest(field, f"record {i} is not a JSON object")
        return records


def _with_params(records: list[dict], params: dict) -> list[dict]:
    """Records with the request's mode-specific hyperparameters added to their provenance."""
    return [r | {"provenance": {**r.get("provenance", {}), "params": params}} for r in records]


# -- validation helpers ---------------------------------------------------------------------------


def _check_model(model: common_pb2.ModelRef) -> str:
    if not model.base:
        raise InvalidRequest("model.base", "required (bundled:smollm2-135m-instruct or a local HF model directory)")
    if is_url_like(model.base):
        raise InvalidRequest("model.base", "name a configured endpoint (openai:<name>), not a URL")
    if len(model.base) > 1024 or "\x00" in model.base:
        raise InvalidRequest("model.base", "not a model name")
    if model.adapter.uri or model.adapter.sha256:
        _check_ref("model.adapter", model.adapter)
    if model.adapter.uri and model.base.startswith(("openai:", "vllm:")):
        raise RequestFailed(
            grpc.StatusCode.UNIMPLEMENTED, "model.adapter: adapters are applied by the transformers backend only"
        )
    if model.base.startswith("openai:"):  # a remote endpoint: reachability is checked when it is used
        return model.base
    try:
        check_model_ref(model.base.removeprefix("vllm:"))
    except ModelNotFound as e:
        raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION, f"model.base: {e}") from e
    return model.base


def _kind_labels(value: int, labels) -> list[str]:
    """The label set of a labelled kind's request (classification); [] for the question kinds (exact
    answer, numeric, open-ended), which must not send labels."""
    if (kind := kind_from_pb(value)) is None:
        raise InvalidRequest("kind", f"must be a TaskKind, got {value}")
    if kind.has_labels:
        return _check_labels(labels)
    if labels:
        raise InvalidRequest("labels", f"only classification tasks have labels, not {common_pb2.TaskKind.Name(value)}")
    return []


def _check_labels(labels) -> list[str]:
    labels = list(labels)
    if len(labels) < 2:
        raise InvalidRequest("labels", f"at least 2 labels required, got {len(labels)}")
    if any(not label.strip() for label in labels):
        raise InvalidRequest("labels", "labels must be non-empty")
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise InvalidRequest("labels", f"duplicate labels: {', '.join(dupes)}")
    return labels


def _check_key(field: str, key: str) -> str:
    """An output key: a valid artifact key under a job prefix (jobs/<job id>/...)."""
    try:
        return validate_output_key(key)
    except InvalidKey as e:
        raise InvalidRequest(field, str(e)) from e


def _check_ref(field: str, msg: common_pb2.ArtifactRef) -> None:
    """A reference's form: a URI and a 64-hex sha256 (the URI is checked against the store on read)."""
    if not msg.uri:
        raise InvalidRequest(f"{field}.uri", "required")
    try:
        validate_sha256(msg.sha256)
    except InvalidKey as e:
        raise InvalidRequest(f"{field}.sha256", str(e)) from e


def _required_ref(field: str, msg: common_pb2.ArtifactRef) -> ArtifactRef:
    ref = ref_from_pb(msg)
    if ref is None:
        raise InvalidRequest(field, "required (an ArtifactRef to a JSONL artifact)")
    _check_ref(field, msg)
    return ref


def _sampling(msg: common_pb2.SamplingParams) -> Sampling:
    """Validated sampling parameters; float32 fields are rounded so provenance reads 0.9, not 0.899999976."""
    temperature, top_p = round(msg.temperature, 6), round(msg.top_p, 6)
    if not 0 <= temperature <= 5:
        raise InvalidRequest("sampling.temperature", f"must be in [0, 5], got {temperature}")
    if not 0 <= top_p <= 1:
        raise InvalidRequest("sampling.top_p", f"must be in (0, 1] (0 means 1), got {top_p}")
    if msg.max_new_tokens <= 0:
        raise InvalidRequest("sampling.max_new_tokens", f"must be > 0, got {msg.max_new_tokens}")
    n = msg.n or 1
    if not 0 < n <= MAX_N:
        raise InvalidRequest("sampling.n", f"must be in [0, {MAX_N}] (0 means 1), got {msg.n}")
    if temperature == 0 and n != 1:
        raise InvalidRequest("sampling.n", "must be 1 with temperature 0 (greedy decoding gives one answer)")
    return Sampling(temperature=temperature, top_p=top_p or 1.0, max_new_tokens=msg.max_new_tokens, n=n, seed=msg.seed)
