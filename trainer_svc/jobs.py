"""Training jobs of one TrainerService process: validation, idempotency, one run at a time, events.

- `plan_from_request` turns a `StartTrainingRequest` into a validated `TrainingPlan` or raises
  `syllabus.serving.InvalidRequest` naming the field.
- `TrainingJobs.start` is idempotent on `job_key`: a known key returns its job (unless that job
  FAILED: then a retry starts a new attempt). If the adapter already exists at `output_key` the job
  succeeds at once without training, with the step count and losses recorded beside the adapter —
  how a retried orchestrator activity avoids recomputing and still reports the truth.
- Every job runs through the staged trainer (`trainer_svc.staged`; a plain request is a one-stage
  recipe) and checkpoints every `checkpoint_every` steps to `<output_key>.ckpt`: a job started again
  after this process died (SIGKILL, node loss) resumes there and ends with the same weights.
- Jobs run one at a time (FIFO) in a worker thread; their events (PENDING, RUNNING per optimiser
  step, then SUCCEEDED, FAILED or CANCELLED) stay in memory, and `Job.follow` streams them.

All job state is touched on the event loop only; the training thread hands events over with
`call_soon_threadsafe`, so no locks guard it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from syllabus.artifacts import ArtifactRef, ArtifactStore, InvalidKey, validate_key
from syllabus.models import check_model_ref, fetch_adapter
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.progress import PROGRESS
from syllabus.recipe import Recipe, RecipeError, load_recipe
from syllabus.serving import InvalidRequest, reading
from syllabus.telemetry import model_turn
from syllabus.topk import TopKError, TopKSet, record_digest
from syllabus.topk import loads as topk_loads
from syllabus_sdk.trainer.v1 import trainer_pb2

log = logging.getLogger(__name__)

State = trainer_pb2.TrainingState
TERMINAL = (State.TRAINING_STATE_SUCCEEDED, State.TRAINING_STATE_FAILED, State.TRAINING_STATE_CANCELLED)
Objective = trainer_pb2.Objective
DEFAULT_MAX_SEQ_LEN = 512  # TrainingSpec.max_seq_len 0 means this
# rate() of it is the trainer's training tokens per second (real tokens, padding excluded).
TRAINED_TOKENS = Counter("syllabus_trainer_tokens", "Tokens the trainer trained on (every optimiser step, all ranks).")


@dataclass(frozen=True)
class SFTConfig:
    """The validated LoRA and optimisation settings of a request (`LoraSpec` and `TrainingSpec`,
    defaults filled in); `recipe_from_request` turns them into a one-stage recipe."""

    epochs: int = 1
    """Passes over the dataset."""
    learning_rate: float = 1e-3
    """Peak learning rate (after warm-up, before cosine decay)."""
    batch_size: int = 8
    """Examples per optimiser step (packed into rows); the last step of an epoch may have fewer."""
    warmup_ratio: float = 0.0
    """Share of the steps spent in linear warm-up; 0 starts at the peak rate."""
    seed: int = 0
    """Seeds the LoRA initialisation, dropout and the data order of every epoch."""
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    """Examples are truncated to this many tokens (the prompt from the left; see encode_example)."""
    lora_rank: int = 8
    """Rank of the LoRA update matrices (ignored when continuing from an adapter: its own is used)."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator; the update is scaled by alpha / rank."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names that get LoRA updates."""


class DatasetError(ValueError):
    """The dataset is not JSONL records with string "prompt" and "response"; the message says where."""


def read_dataset(data: bytes) -> list[tuple[str, str]]:
    """Parse plain SFT JSONL bytes into (prompt, response) pairs; raise DatasetError naming the bad line."""
    pairs = []
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"line {lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"line {lineno} is not a JSON object")
        for key in ("prompt", "response"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise DatasetError(f"line {lineno}: {key!r} must be a non-empty string")
        pairs.append((record["prompt"], record["response"]))
    if not pairs:
        raise DatasetError("no records")
    return pairs


@dataclass(frozen=True)
class TrainingPlan:
    """A validated StartTrainingRequest."""

    job_key: str
    base: str
    dataset: ArtifactRef
    init_adapter: ArtifactRef | None
    output_key: str
    config: SFTConfig
    recipe: Recipe
    """What the staged trainer runs: recipe_yaml, or one stage built from lora/training/objective."""
    merged_key: str | None = None
    pairs_only: bool = False
    """A plain SFT request: every record needs a non-empty prompt and response (checked up front)."""
    teacher_logprobs: ArtifactRef | None = None
    """The teacher's top-k of the records (`syllabus.topk`), for the recipe's kd stages."""


def bf16_supported() -> bool:
    """bfloat16 autocast pays off: a GPU with bf16, or a CPU with AVX512-BF16/AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def recipe_from_request(req: trainer_pb2.StartTrainingRequest, config: SFTConfig) -> Recipe:
    """The staged recipe of a request: its recipe_yaml, or one SFT/DPO/CFT stage from lora/training.

    SFT and CFT steps take `batch_size` samples, packed padding-free into rows; bf16 autocast where
    the hardware has it (`bf16_supported`); the loss head runs at completion positions only."""
    if req.recipe_yaml:
        try:
            return load_recipe(req.recipe_yaml)
        except RecipeError as e:
            raise InvalidRequest("recipe_yaml", str(e)) from None
    objective = {Objective.OBJECTIVE_DPO: "dpo", Objective.OBJECTIVE_CFT: "cft"}.get(req.objective, "sft")
    if req.dpo.beta < 0:
        raise InvalidRequest("dpo.beta", f"must be >= 0 (0: 0.1), got {req.dpo.beta:g}")
    return Recipe.model_validate(
        {
            "seed": config.seed,
            "max_seq_len": config.max_seq_len,
            # padding-free: each step's batch_size samples packed into rows (DPO pairs stay unpacked)
            "packing": objective != "dpo",
            "samples_per_step": config.batch_size,
            "row_tokens": max(1024, config.max_seq_len),
            "batch_size": config.batch_size,
            "bf16": bf16_supported(),
            "stages": [
                {
                    "objective": objective,
                    "epochs": config.epochs,
                    "lr": config.learning_rate,
                    "dpo_beta": req.dpo.beta or 0.1,
                    "schedule": {"kind": "cosine", "warmup_ratio": config.warmup_ratio},
                    "lora": {
                        "rank": config.lora_rank,
                        "alpha": config.lora_alpha,
                        "dropout": config.lora_dropout,
                        "targets": list(config.target_modules),
                    },
                }
            ],
        }
    )


def plan_from_request(req: trainer_pb2.StartTrainingRequest) -> TrainingPlan:
    """Validate a request; raise InvalidRequest for the first malformed field.

    Unset (0) fields with a documented default: `training.max_seq_len` (512), `training.warmup_ratio`
    (no warm-up), `lora.dropout` (none), `training.seed` (0). Everything else must be given.
    """
    lora, training = req.lora, req.training
    if req.recipe_yaml:  # the recipe carries LoRA and optimisation settings; fill what it ignores
        lora = trainer_pb2.LoraSpec(rank=lora.rank or 8, alpha=lora.alpha or 16.0, dropout=lora.dropout,
                                    target_modules=list(lora.target_modules) or ["q_proj"])
        training = trainer_pb2.TrainingSpec(epochs=training.epochs or 1, learning_rate=training.learning_rate or 1e-4,
                                            batch_size=training.batch_size or 8, warmup_ratio=training.warmup_ratio,
                                            seed=training.seed, max_seq_len=training.max_seq_len)

    def require(ok: bool, field: str, problem: str) -> None:
        if not ok:
            raise InvalidRequest(field, problem)

    require(bool(req.job_key.strip()), "job_key", "must not be empty")
    require(bool(req.model.base), "model.base", "must name a model, e.g. bundled:smollm2-135m-instruct")
    require(req.HasField("dataset") and bool(req.dataset.uri), "dataset", "must reference a JSONL artifact")
    require(lora.rank > 0, "lora.rank", f"must be > 0, got {lora.rank}")
    require(lora.alpha > 0, "lora.alpha", f"must be > 0, got {lora.alpha:g}")
    require(0 <= lora.dropout < 1, "lora.dropout", f"must be in [0, 1), got {lora.dropout:g}")
    require(len(lora.target_modules) > 0, "lora.target_modules", "must name at least one module, e.g. q_proj")
    require(
        all(m.strip() for m in lora.target_modules), "lora.target_modules", "must not contain empty names"
    )
    require(training.epochs > 0, "training.epochs", f"must be > 0, got {training.epochs}")
    require(
        training.learning_rate > 0, "training.learning_rate", f"must be > 0, got {training.learning_rate:g}"
    )
    require(training.batch_size > 0, "training.batch_size", f"must be > 0, got {training.batch_size}")
    require(
        0 <= training.warmup_ratio < 1,
        "training.warmup_ratio",
        f"must be in [0, 1), got {training.warmup_ratio:g}",
    )
    require(
        training.max_seq_len >= 0,
        "training.max_seq_len",
        f"must be >= 0 (0: {DEFAULT_MAX_SEQ_LEN}), got {training.max_seq_len}",
    )
    if req.model.adapter.uri:
        # The adapter is unpacked into a cache directory named by its sha256: it must be one.
        require(
            re.fullmatch(r"[0-9a-f]{64}", req.model.adapter.sha256) is not None,
            "model.adapter.sha256",
            f"must be 64 lower-case hex digits, got {req.model.adapter.sha256!r}",
        )
    require(bool(req.output_key), "output_key", "must not be empty")
    try:
        output_key = validate_key(req.output_key)
    except InvalidKey as e:
        raise InvalidRequest("output_key", str(e)) from None
    merged_key = None
    if req.merged_output_key:
        try:
            merged_key = validate_key(req.merged_output_key)
        except InvalidKey as e:
            raise InvalidRequest("merged_output_key", str(e)) from None
    config = SFTConfig(
            epochs=training.epochs,
            learning_rate=training.learning_rate,
            batch_size=training.batch_size,
            warmup_ratio=training.warmup_ratio,
            seed=training.seed,
            max_seq_len=training.max_seq_len or DEFAULT_MAX_SEQ_LEN,
            lora_rank=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=tuple(lora.target_modules),
    )
    recipe = recipe_from_request(req, config)
    teacher_logprobs = ref_from_pb(req.teacher_logprobs) if req.HasField("teacher_logprobs") else None
    if teacher_logprobs is None and recipe.teacher_top_k:
        raise InvalidRequest("teacher_logprobs", "required: the recipe has a kd or opd stage (TeacherService.TopLogprobs)")
    return TrainingPlan(
        job_key=req.job_key,
        base=req.model.base,
        dataset=ref_from_pb(req.dataset),
        init_adapter=ref_from_pb(req.model.adapter) if req.model.HasField("adapter") else None,
        output_key=output_key,
        config=config,
        recipe=recipe,
        merged_key=merged_key,
        teacher_logprobs=teacher_logprobs,
        pairs_only=not req.recipe_yaml and req.objective in (Objective.OBJECTIVE_UNSPECIFIED, Objective.OBJECTIVE_SFT),
    )


class Job:
    """One training job and its events; lives on the event loop."""

    def __init__(self, job_key: str) -> None:
        self.training_id = uuid.uuid4().hex
        self.job_key = job_key
        self.events: list[trainer_pb2.WatchTrainingResponse] = []
        self._changed = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.cancel_requested = False  # read by the training thread between steps
        self.watchers = 0
        self.unwatched_since = time.monotonic()
        self.abandoned = False  # set by the training thread: no watcher for the orphan timeout

    def orphaned(self, timeout: float) -> bool:
        """Nobody has followed this job for `timeout` seconds (read from the training thread: the
        two fields are plain values the event loop replaces)."""
        return self.watchers == 0 and time.monotonic() - self.unwatched_since > timeout

    @property
    def state(self) -> int:
        return self.events[-1].state if self.events else State.TRAINING_STATE_UNSPECIFIED

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def publish(self, event: trainer_pb2.WatchTrainingResponse) -> None:
        """Append an event and wake the watchers (call on the event loop)."""
        if self.done:
            return  # nothing follows a terminal event
        self.events.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self) -> AsyncIterator[trainer_pb2.WatchTrainingResponse]:
        """The latest event, then every following one, until SUCCEEDED or FAILED."""
        i = max(0, len(self.events) - 1)
        self.watchers += 1
        try:
            while True:
                while i < len(self.events):
                    event = self.events[i]
                    i += 1
                    yield event
                    if event.state in TERMINAL:
                        return
                await self._changed.wait()
        finally:
            self.watchers -= 1
            self.unwatched_since = time.monotonic()


class TrainingJobs:
    """The job registry of one service process."""

    def __init__(self, store: ArtifactStore, adapter_cache: Path, checkpoint_every: int = 20, orphan_timeout: float = 20.0) -> None:
        self.store = store
        self.adapter_cache = Path(adapter_cache)
        self.checkpoint_every = checkpoint_every
        self.orphan_timeout = orphan_timeout
        self._jobs: dict[str, Job] = {}
        self._by_key: dict[str, Job] = {}
        self._start_lock = asyncio.Lock()  # makes check-then-create on job_key atomic
        self._run_lock = asyncio.Lock()  # one training at a time, FIFO
        self._stopping = False

    def get(self, training_id: str) -> Job | None:
        return self._jobs.get(training_id)

    async def start(self, plan: TrainingPlan) -> tuple[Job, bool]:
        """Return (job, existing). Raises RequestFailed (InvalidRequest, NOT_FOUND, DATA_LOSS), ModelNotFound."""
        async with self._start_lock:
            job = self._by_key.get(plan.job_key)
            if job is not None and job.abandoned and job.task is not None:
                await asyncio.gather(job.task, return_exceptions=True)  # it stops at its next step
            elif job is not None and job.state not in (State.TRAINING_STATE_FAILED, State.TRAINING_STATE_CANCELLED):
                job.unwatched_since = time.monotonic()  # re-attached: its watcher gets the whole orphan timeout to follow
                return job, True
            done = await asyncio.to_thread(self._finished, plan.output_key)
            if done is not None:
                log.info("job %s: adapter already at %s, not training", plan.job_key, plan.output_key)
                job = self._add(plan.job_key)
                job.publish(done)
                return job, False
            check_model_ref(plan.base)
            records, init_dir, topk = await asyncio.to_thread(self._fetch_inputs, plan)
            job = self._add(plan.job_key)
            job.publish(trainer_pb2.WatchTrainingResponse(state=State.TRAINING_STATE_PENDING))
            job.task = asyncio.create_task(self._run(job, plan, records, init_dir, topk))
            return job, False

    def cancel(self, training_id: str) -> bool | None:
        """Ask a job to stop at its next step; None if unknown, False if it already ended."""
        job = self._jobs.get(training_id)
        if job is None:
            return None
        if job.done:
            return False
        job.cancel_requested = True  # a queued job sees it when its turn comes
        return True

    async def close(self) -> None:
        """Stop the running job at its next step, fail the queued ones and wait for them."""
        self._stopping = True
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, output_key: str) -> trainer_pb2.WatchTrainingResponse | None:
        """The SUCCEEDED event of a run that already published `output_key`, with its true metrics."""
        from trainer_svc.staged import read_metrics

        ref = self.store.stat(output_key)
        metrics = read_metrics(self.store, output_key) if ref is not None else None
        if metrics is None:  # no adapter, or one from before metrics were kept: train (same bytes)
            return None
        return _succeeded(ref, metrics["mean_loss"], metrics["steps"], metrics["losses"])

    def _add(self, job_key: str) -> Job:
        job = Job(job_key)
        self._jobs[job.training_id] = job
        self._by_key[job_key] = job
        return job

    def _fetch_inputs(self, plan: TrainingPlan) -> tuple[list[dict], Path | None, TopKSet | None]:
        """Read and check the dataset and the init adapter before accepting the job (worker thread).

        Returns the dataset's records (dicts); a plain SFT request's must each have a non-empty
        prompt and response (`read_dataset`)."""
        from trainer_svc.staged import read_records

        with reading("dataset"):
            data = self.store.get_bytes(plan.dataset)
        try:
            if plan.pairs_only:
                read_dataset(data)
            records = read_records(data)
        except (DatasetError, ValueError) as e:
            raise InvalidRequest("dataset", str(e)) from None
        init_dir = None
        if plan.init_adapter is not None:
            with reading("model.adapter"):
                init_dir = fetch_adapter(self.store, plan.init_adapter, self.adapter_cache)
        topk = None
        if plan.teacher_logprobs is not None:
            with reading("teacher_logprobs"):
                data = self.store.get_bytes(plan.teacher_logprobs)
            try:
                topk = topk_loads(data)
            except TopKError as e:
                raise InvalidRequest("teacher_logprobs", str(e)) from None
            missing = sum(
                record_digest(str(r.get("prompt")), str(r.get("response"))) not in topk.rows for r in records
                if not r.get("heldout")
            )  # fmt: skip
            if missing:
                raise InvalidRequest("teacher_logprobs", f"{missing} of the dataset's records have no teacher log-probs")
        return records, init_dir, topk

    async def _run(
        self, job: Job, plan: TrainingPlan, records: list[dict], init_dir: Path | None, topk: TopKSet | None = None
    ) -> None:
        from trainer_svc.staged import TrainingStopped  # staged imports torch: load it only to train

        loop = asyncio.get_running_loop()

        def on_progress(p) -> None:
            TRAINED_TOKENS.inc(p.tokens)
            event = trainer_pb2.WatchTrainingResponse(
                state=State.TRAINING_STATE_RUNNING,
                step=p.global_step,
                total_steps=p.global_total,
                loss=p.loss,
                learning_rate=p.lr,
                stage=p.stage,
                stage_name=p.stage_name,
                stage_count=p.stage_count,
                tokens_per_second=p.tokens_per_s,
                eta_seconds=p.eta_s,
            )
            loop.call_soon_threadsafe(job.publish, event)

        def stop() -> bool:
            if not (self._stopping or job.cancel_requested) and job.orphaned(self.orphan_timeout):
                job.abandoned = True  # its worker is gone: a retry may be training it elsewhere soon
            return self._stopping or job.cancel_requested or job.abandoned

        def train() -> trainer_pb2.WatchTrainingResponse:
            from trainer_svc.staged import run_recipe

            # Another job may have published this output while we queued.
            done = self._finished(plan.output_key)
            if done is not None:
                return done
            recipe = plan.recipe
            if not recipe.checkpoint_every:
                recipe = recipe.model_copy(update={"checkpoint_every": self.checkpoint_every})
            if recipe.bf16 and not bf16_supported():
                # emulated bf16 runs ~10x slower than fp32 on such a CPU (seen on an AMD EPYC without
                # AVX512-BF16: a 135M-model kd stage took 276 s in bf16, 30 s in fp32)
                log.info("job %s: no native bf16 here; the recipe's bf16 autocast runs in fp32", plan.job_key)
                recipe = recipe.model_copy(update={"bf16": False})
            ref, res = run_recipe(
                plan.base, records, recipe, self.store, plan.output_key, init_adapter=init_dir,
                merged_key=plan.merged_key, on_step=on_progress, should_stop=stop, teacher_topk=topk,
            )  # fmt: skip
            final = _succeeded(ref, res.mean_loss, len(res.losses), res.losses)
            if res.merged_ref is not None:
                final.merged.CopyFrom(ref_to_pb(res.merged_ref))
            return final

        async with model_turn("trainer", self._run_lock):  # the training queue, in the metrics
            try:
                if self._stopping:
                    raise TrainingStopped("the service is shutting down")
                if job.cancel_requested:
                    raise TrainingStopped("cancelled before it started")
                if stop():
                    raise TrainingStopped(f"nobody watched it for {self.orphan_timeout:g} s (its worker is gone)")
                log.info("job %s (%s): training", job.training_id, plan.job_key)
                with PROGRESS.busy():  # the watchers' heartbeats follow the training thread
                    succeeded = await asyncio.to_thread(train)
            except TrainingStopped as e:
                if job.abandoned:
                    log.warning("job %s (%s): abandoned, no watcher for %g s; its checkpoint stays for a retry",
                                job.training_id, plan.job_key, self.orphan_timeout)  # fmt: skip
                if job.cancel_requested:
                    log.info("job %s (%s): cancelled", job.training_id, plan.job_key)
                    job.publish(trainer_pb2.WatchTrainingResponse(state=State.TRAINING_STATE_CANCELLED, message=str(e)))
                else:
                    job.publish(
                        trainer_pb2.WatchTrainingResponse(
                            state=State.TRAINING_STATE_FAILED, message=f"{type(e).__name__}: {e}"
                        )
                    )
            except Exception as e:  # the job fails; the service keeps serving
                log.exception("job %s (%s) failed", job.training_id, plan.job_key)
                job.publish(
                    trainer_pb2.WatchTrainingResponse(
                        state=State.TRAINING_STATE_FAILED, message=f"{type(e).__name__}: {e}"
                    )
                )
            else:
                log.info(
                    "job %s (%s): succeeded, mean loss %.4f",
                    job.training_id,
                    plan.job_key,
                    succeeded.mean_loss,
                )
                job.publish(succeeded)


def _succeeded(
    ref: ArtifactRef, mean_loss: float, steps: int, losses: list[float]
) -> trainer_pb2.WatchTrainingResponse:
    """The final event: the adapter and the run's true step count and loss curve."""
    return trainer_pb2.WatchTrainingResponse(
        state=State.TRAINING_STATE_SUCCEEDED,
        step=steps,
        total_steps=steps,
        adapter=ref_to_pb(ref),
        mean_loss=mean_loss,
        losses=losses,
    )
