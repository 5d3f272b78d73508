"""Staged training recipes: a typed, validated config loaded from YAML.

    from syllabus.recipe import load_recipe
    recipe = load_recipe(open("recipes/chain_of_lora_2stage.yaml").read())

The format is a contract between the task spec (`train.recipe`) and the trainer, so it lives in the
shared library. A recipe is a list of stages run in order on one model. Each stage says which records it trains on
(score band, categories, replay of earlier stages), for how long (epochs or steps), with what
learning rate and schedule, which parameters (a LoRA, or the full model), in which order the data
comes (a curriculum policy; `shuffled` is the baseline) and what happens after it (`merge`: Chain
of LoRA — fold the adapter into the weights, start a fresh one and a fresh optimiser; `continue`:
keep adapter and optimiser). Shipped recipes live in `recipes/`; a test loads every one.

Validation errors name the field: "stages.1.lr: Input should be greater than 0".
"""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from syllabus import safe_yaml


class RecipeError(ValueError):
    """The recipe is not valid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LoraConfig(_Strict):
    """A LoRA adapter of one stage."""

    rank: int = Field(8, gt=0, le=512)
    """Rank of the update matrices."""
    alpha: float = Field(16.0, gt=0)
    """Scaling numerator: the update is scaled by alpha / rank."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    targets: tuple[str, ...] = Field(("q_proj", "k_proj", "v_proj", "o_proj"), min_length=1, max_length=64)
    """Module names that get LoRA updates."""


class DataFilter(_Strict):
    """Which records of the dataset a stage trains on (all filters must hold)."""

    score_key: str | None = None
    """Record field holding the score the band applies to (e.g. "difficulty")."""
    min_score: float | None = None
    """Keep records with score >= this."""
    max_score: float | None = None
    """Keep records with score < this (half-open bands tile without overlap)."""
    categories: tuple[str, ...] = ()
    """Keep records whose "category" is one of these; empty keeps all."""
    replay: float = Field(0.0, ge=0, le=1)
    """Add this share (of the stage's own size) of records drawn from earlier stages' data."""


class Curriculum(_Strict):
    """The order in which a stage sees its records."""

    policy: Literal["shuffled", "static", "sec", "adarft", "pudf"] = "shuffled"
    """shuffled: seeded shuffle (the baseline); static: ascending `score_key`; sec: bandit over
    categories (or score bins); adarft: batches nearest a moving target difficulty; pudf: each epoch
    the records with IRT difficulty <= the model's estimated ability."""
    score_key: str | None = None
    """Score for static order, AdaRFT difficulty (0..100) and PUDF difficulty (IRT b)."""
    descending: bool = False
    """static: hard to easy instead."""
    arm_key: str = "category"
    """sec: record field naming the arm; records without it are binned by `score_key`."""
    bins: int = Field(4, gt=0, le=1000)
    """sec: number of score bins when arms come from `score_key`."""
    sec_alpha: float = Field(0.5, gt=0, le=1)
    """sec: Q <- (1 - alpha) Q + alpha r."""
    sec_tau: float = Field(1.0, gt=0)
    """sec: p = softmax(Q / tau)."""
    adarft_eta: float = 50.0
    """adarft: step size of the target difficulty."""
    adarft_alpha: float = 2.0
    """adarft: sensitivity, T += eta * tanh(alpha * (R - beta))."""
    adarft_beta: float = 0.5
    """adarft: the reward the target difficulty aims for."""
    adarft_t0: float = 0.0
    """adarft: initial target difficulty."""
    adarft_range: tuple[float, float] = (0.0, 100.0)
    """adarft: (dmin, dmax)."""
    pudf_step: float = 0.1
    """pudf: how far the cap moves when the ability does not improve."""


class Schedule(_Strict):
    """Learning rate over one stage's steps, and optional averaging of its last checkpoints."""

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Share of the stage's steps spent in linear warm-up."""
    final_lr_ratio: float = Field(0.0, ge=0, le=1)
    """The decay ends at peak * this (moderate decay keeps curriculum gains, arXiv 2511.18903)."""
    average_last_k: int = Field(0, ge=0, le=1000)
    """If > 1, the stage ends with the weighted average of its last K checkpoints."""
    average_every: int = Field(1, gt=0, le=100_000)
    """Steps between the averaged checkpoints."""
    average_decay: float = Field(0.5, gt=0, le=1)
    """Weight of checkpoint i (0 = newest) is decay**i, normalised."""


class Distill(_Strict):
    """kd: forward KD on the teacher's stored top-k (Hinton et al. 2015; top-k capture as in Arcee
    DistillKit), or GKD's generalised JSD (arXiv 2306.13649) with `beta`. Per response token:
    `alpha * T^2 * D(p_T^k || p_S^k) + (1 - alpha) * CE(y_t)`, p^k both renormalised over the
    teacher's top-k ids at temperature T."""

    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of the divergence; the rest is the plain token cross-entropy."""
    temperature: float = Field(1.0, gt=0)
    """Softens both distributions; the divergence is scaled by T^2 (Hinton)."""
    divergence: Literal["forward_kl", "jsd"] = "forward_kl"
    """forward_kl: KL(teacher || student); jsd: generalised JSD with `beta`."""
    beta: float = Field(0.5, ge=0, le=1)
    """jsd: beta*KL(P||M) + (1-beta)*KL(Q||M), M = beta*P + (1-beta)*Q (0: forward KL, 1: reverse KL)."""
    top_k: int = Field(20, ge=1, le=100)
    """How many teacher log-probs per position the orchestrator captures for this stage."""


#: Objectives that learn from the teacher's log-probs of the records (the orchestrator captures them).
TEACHER_OBJECTIVES = frozenset({"kd", "opd"})


class OnPolicy(_Strict):
    """opd: how the orchestrator draws the student's own completions, in `chunks` per round: each
    chunk samples from the current adapter, the teacher scores the samples, the stage trains on them
    (on-policy distillation, Thinking Machines 2025 / Qwen3)."""

    temperature: float = Field(1.0, gt=0, le=2)
    """The student's sampling temperature."""
    max_new_tokens: int = Field(64, ge=1, le=2048)
    """Tokens per completion."""
    samples_per_prompt: int = Field(1, ge=1, le=16)
    """Completions per training prompt and chunk."""
    chunks: int = Field(1, ge=1, le=20)
    """sample -> teacher log-probs -> update cycles per round, each from the adapter the last left."""


class Stage(_Strict):
    """One stage of a recipe."""

    name: str = Field("", max_length=64)
    """Shown in progress events and logs; defaults to "stage-N"."""
    objective: Literal["sft", "dpo", "cft", "kd", "opd", "dft", "anchored"] = "sft"
    """sft: completion-only loss; dpo: preference pairs {prompt, chosen, rejected}, reference = the
    model with the adapter disabled; cft: critique fine-tuning, records {question, solution, critique};
    kd: token-level distillation to the teacher's top-k log-probs (`distill`); opd: on-policy
    distillation on the student's own samples, per-token reverse KL to the teacher (`on_policy`,
    `distill.top_k` for the capture); dft: each token's NLL
    scaled by its detached probability (arXiv 2508.05629); anchored: dft plus `anchor_lambda` *
    KL(p_ref || p_theta), the reference = the model with the adapter disabled (Anchored SFT)."""
    data: DataFilter = DataFilter()
    """Which records this stage trains on."""
    epochs: float = Field(1.0, gt=0, le=1000)
    """Passes over the stage's records (ignored when `steps` is set)."""
    steps: int | None = Field(None, gt=0, le=1_000_000)
    """Optimiser steps (overrides `epochs`)."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    schedule: Schedule = Schedule()
    """Learning-rate schedule and checkpoint averaging."""
    lora: LoraConfig | None = LoraConfig()
    """The stage's adapter; null trains the full model."""
    after: Literal["merge", "continue"] = "continue"
    """merge: Chain of LoRA (fold into the weights, fresh adapter and optimiser next stage)."""
    reset_optimizer: bool = False
    """With after=continue: start the next stage with a fresh optimiser anyway."""
    curriculum: Curriculum = Curriculum()
    """Data order."""
    hft: bool = False
    """Half fine-tuning: freeze a random half of the trainable modules per layer and category
    (attention / MLP / norm) for this stage — a forgetting guard."""
    dpo_beta: float = Field(0.1, gt=0)
    """dpo: temperature of the implicit reward."""
    distill: Distill = Distill()
    """kd: the divergence and its settings."""
    on_policy: OnPolicy = OnPolicy()
    """opd: the student's sampling."""
    anchor_lambda: float = Field(0.1, ge=0)
    """anchored: weight of the KL to the reference (ALGORITHMS.md default 0.1)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""


class Recipe(_Strict):
    """A staged training run. What costs the trainer time or memory (rank, targets, epochs, steps,
    sequence and row lengths, batch sizes, stages) is bounded, so one tenant's inline recipe cannot
    hold the single trainer for days; the rest (rates, weights) is any finite positive value."""

    name: str = Field("recipe", max_length=64)
    """For logs."""
    seed: int = Field(0, ge=0, le=2**31 - 1000)
    """Seeds adapter init, data order, curriculum sampling and HFT choices."""
    max_seq_len: int = Field(512, gt=0, le=32768)
    """Samples are truncated to this many tokens (the prompt from the left)."""
    packing: bool = True
    """Several samples per row, attention isolated per sample (padding-free)."""
    row_tokens: int = Field(1024, gt=0, le=131072)
    """Tokens per packed row (>= max_seq_len)."""
    rows_per_step: int = Field(2, gt=0, le=1024)
    """Packed rows per optimiser step (shuffled/static policies)."""
    batch_size: int = Field(8, gt=0, le=4096)
    """Samples per step without packing, and for sampling policies (sec, adarft)."""
    samples_per_step: int = Field(0, ge=0, le=16384)
    """With packing and the shuffled/static policies: exactly this many samples per optimiser step,
    packed into rows of `row_tokens` (the batch of unpacked training, without its padding); 0: whole
    rows per step (`rows_per_step`)."""
    share_prefix: bool = True
    """Packed rows lay out the prefix their samples share once (the same logits and gradients, for
    fewer tokens: a classification prompt's instructions and label list, a DPO pair's prompt)."""
    bf16: bool = True
    """bfloat16 autocast for forward passes (weights and optimiser stay fp32) where the hardware runs
    it natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX); the trainer service runs fp32
    elsewhere, where emulated bf16 is several times slower."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Global gradient-norm clip; 0 disables."""
    checkpoint_every: int = Field(0, ge=0, le=1_000_000)
    """Save a resumable checkpoint every N steps (and at each stage end); 0: only at stage ends."""
    log_batches: bool = False
    """Publish each stage's batches in the run's metrics (`stages[i].batches`: per step, the records'
    "id" — or index, for a record without one — in training order) and the adaptive curriculum's
    per-step state and feedback (`stages[i].trace`: SEC's Q and p, AdaRFT's target, the per-record
    losses), so what a curriculum chose can be checked on what the trainer saw. Off by default: a
    long run's lists are large."""
    stages: tuple[Stage, ...] = Field(min_length=1, max_length=16)
    """Run in order."""

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.packing and self.row_tokens < self.max_seq_len:
            raise ValueError(f"row_tokens ({self.row_tokens}) must be >= max_seq_len ({self.max_seq_len})")
        for i, st in enumerate(self.stages):
            where = f"stages.{i}"
            if st.objective in ("dpo", "anchored") and st.lora is None:
                raise ValueError(f"{where}.lora: {st.objective} needs a LoRA (its reference is the adapter disabled)")
            if st.after == "merge" and st.lora is None:
                raise ValueError(f"{where}.after: merge needs a LoRA stage")
            if st.curriculum.policy in ("static", "adarft", "pudf") and not st.curriculum.score_key:
                raise ValueError(f"{where}.curriculum.score_key: policy {st.curriculum.policy} needs a score")
            if i > 0 and (st.lora is None) != (self.stages[i - 1].lora is None) and self.stages[i - 1].after == "continue":
                raise ValueError(f"{where}.lora: cannot continue from a full fine-tuning stage into LoRA or back")
            lo, hi = st.curriculum.adarft_range
            if not lo < hi:
                raise ValueError(f"{where}.curriculum.adarft_range: need dmin < dmax, got {lo}, {hi}")
        return self

    def stage_name(self, i: int) -> str:
        return self.stages[i].name or f"stage-{i + 1}"

    @property
    def teacher_top_k(self) -> int:
        """Teacher log-probs per position the kd / opd stages need (0: no stage reads the teacher)."""
        return max((st.distill.top_k for st in self.stages if st.objective in TEACHER_OBJECTIVES), default=0)

    @property
    def on_policy(self) -> bool:
        """An opd stage: the loop trains on the student's own samples."""
        return any(st.objective == "opd" for st in self.stages)


def load_recipe(text: str) -> Recipe:
    """Parse and validate a recipe YAML; raise RecipeError naming the first bad field."""
    try:
        raw = safe_yaml.load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"not valid YAML: {' '.join(str(getattr(e, 'problem', None) or e).split())[:200]}") from None
    except (RecursionError, ValueError, OverflowError) as e:
        raise RecipeError(f"not valid YAML ({type(e).__name__}: nested too deeply or a number out of range)") from None
    if not isinstance(raw, dict):
        raise RecipeError("a recipe is a mapping with at least `stages`")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p)[:80] for p in err["loc"])
        msg = " ".join(err["msg"].split())[:300]
        raise RecipeError(f"{loc}: {msg}" if loc else msg) from None
    except RecursionError:
        raise RecipeError("nested too deeply") from None


def recipe_models() -> tuple[type[BaseModel], ...]:
    """Every pydantic model a Recipe is built of (what a training checkpoint may rebuild on load)."""
    return tuple(v for v in globals().values() if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == __name__)
