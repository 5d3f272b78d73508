"""Task specs: what the user wants distilled, as a validated YAML file.

See docs/task-format.md for the format; examples/banking77/task.yaml is a complete example.
`load_task(path)` resolves `seeds`/`eval` file references relative to the YAML file and returns a
fully inline `TaskSpec`; any problem raises `TaskSpecError` with a one-line message naming it.
`parse_task(text, inline_only=True)` is what the gateway uses: a task sent to a server must carry its
examples inline (`syllabus run` inlines files on the client), so a file reference is rejected without
opening anything on the server. No float may be inf or NaN.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from syllabus import kinds, safe_yaml
from syllabus.baselines import TOKEN_OBJECTIVES
from syllabus.models import DEFAULT_MODEL
from syllabus.recipe import Recipe


class TaskSpecError(ValueError):
    """A task spec is invalid; the message is one line naming the problem."""


MAX_NESTING = 50  # deeper YAML is rejected before validation (no RecursionError anywhere)
MAX_TASK_BYTES = 32 * 2**20  # a task file with its examples inline; larger is refused before parsing


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Example(_Strict):
    """A labelled example: an input and its label (classification) or answer (the other kinds; the
    key `answer` is accepted for `label`)."""

    input: str = Field(min_length=1, description="The input text (a message, a question, a problem).")
    label: str = Field(
        min_length=1, validation_alias=AliasChoices("label", "answer"),
        description="classification: one of the task's labels; exact_answer / numeric: the gold answer; "
        "open_ended: a reference answer.",
    )  # fmt: skip
    solution: str | None = Field(
        None, min_length=1, max_length=4000,
        description="numeric seeds only: a worked solution (e.g. the equation); the seed trains on it, then its "
        "Answer: line, so the student learns to reason before it answers.",
    )  # fmt: skip


class ModelSpec(_Strict):
    """A model the task names (`student`, `score.model`); the teacher's adds its privileged context."""

    model: str = Field(
        DEFAULT_MODEL, min_length=1, max_length=1024,
        description="bundled:smollm2-135m-instruct, a local HF model directory, or (teacher) openai:<name> of an "
        "endpoint configured on the server (SYLLABUS_TEACHER_ENDPOINTS); never a URL.",
    )

    @field_validator("model")
    @classmethod
    def _not_a_url(cls, model: str) -> str:
        if "://" in model.lower() or "@http" in model.lower():
            raise ValueError("name a configured endpoint, not a URL")
        if "\x00" in model:
            raise ValueError("must not contain NUL characters")
        return model


class TeacherSpec(ModelSpec):
    context: ContextSpec | None = Field(None, description="Context distillation: the teacher's privileged context "
                                        "when it scores records for a kd stage; off when absent.")  # fmt: skip


class TeacherEntry(TeacherSpec):
    """One of several teachers (`teachers:`): its model, context and initial share of the expansion."""

    share: float = Field(1.0, gt=0, le=100, description="Initial share of the seed expansion (relative to the others').")


#: What budget and CAR entries of a teacher are named (RoundResult.car, .budget): beside the methods'.
TEACHER_KEY = "teacher:"


class ContextSpec(_Strict):
    """Context distillation (Snell et al. 2022; "Knowledge Injection via Prompt Distillation", arXiv
    2412.14964): what the teacher sees before every record's prompt when it scores the student's
    training records for a kd stage, and the student never does. A same-model teacher with this
    context is still a teacher: the kd stage teaches the student to answer without it."""

    seeds: int = Field(0, ge=0, le=20, description="Demonstrations per label (classification) or in all (the other "
                       "kinds), taken from the seeds in order, a numeric seed with its worked solution.")  # fmt: skip
    rubric: bool = Field(False, description="open_ended: the task's rubric.")
    text: str = Field("", max_length=4000, description="Any further privileged instructions, verbatim.")

    @model_validator(mode="after")
    def _something(self) -> ContextSpec:
        if not (self.seeds or self.rubric or self.text.strip()):
            raise ValueError("give seeds, rubric or text (an empty context is no privileged information)")
        return self


STYLES = ("step_by_step", "eli5", "symbolic", "concise")  # the teacher's reasoning styles (teacher_svc.reasoning)
Style = Literal["step_by_step", "eli5", "symbolic", "concise"]


class ExpandMode(_Strict):
    """Self-Instruct seed expansion: new labelled examples from the seeds."""

    mode: Literal["expand"]
    per_label: int | None = Field(None, ge=1, le=1000, description="Generation prompts per label and round; default generate.per_label.")


class RationalesMode(_Strict):
    """Fine-tune-CoT / Distilling step-by-step: the teacher writes a rationale per (question, style) for
    the seeds and this round's kept examples; a rationale whose final answer is not the example's
    label is dropped. Kept rationales train the student as a second task (rationale, then answer)."""

    mode: Literal["rationales"]
    styles: list[Style] = Field(default_factory=lambda: ["step_by_step", "concise"], min_length=1)
    per_style: int = Field(1, ge=1, le=16, description="Rationales per (question, style).")
    max_questions: int = Field(16, ge=1, le=10000, description="Questions per round (seeds first, then kept examples).")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_new_tokens: int = Field(96, ge=8, le=2048)
    retries: int = Field(1, ge=0, le=5, description="Retries of a reply without an answer line.")


class RftMode(_Strict):
    """Rejection-sampling fine-tuning (RFT): k samples per question, kept when the verifier accepts the
    answer, deduplicated by reasoning path."""

    mode: Literal["rft"]
    k: int = Field(4, ge=1, le=100, description="Samples per question.")
    style: Style = "step_by_step"
    max_questions: int = Field(16, ge=1, le=10000, description="Questions per round (seeds first, then kept examples).")
    temperature: float = Field(0.7, gt=0.0, le=2.0)
    max_new_tokens: int = Field(96, ge=8, le=2048)


class TargetedMode(_Strict):
    """Error-driven generation (arXiv 2412.15652): from round 2, new examples for each confusion the
    student showed on the validation split after the previous round."""

    mode: Literal["targeted"]
    per_skill: int = Field(2, ge=1, le=100, description="Examples per confusion.")


GenerateMode = Annotated[ExpandMode | RationalesMode | RftMode | TargetedMode, Field(discriminator="mode")]


class GenerateSpec(_Strict):
    """What the teacher generates each round: `modes`, each with its own budget. The sampling fields
    below are those of `expand` and `targeted`."""

    modes: list[GenerateMode] | None = Field(
        None, min_length=1, description="Default: [expand], plus targeted when targeted_per_skill > 0."
    )
    per_label: int = Field(4, ge=1, le=1000, description="Generation prompts per label and round.")
    n: int = Field(1, ge=1, le=16, description="Completions per prompt.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling cut-off.")
    max_new_tokens: int = Field(40, ge=4, le=1024, description="Tokens per completion.")
    batch_size: int = Field(16, ge=1, le=512, description="Prompts per generation batch.")
    seed: int = Field(0, ge=0, le=2**31 - 1000, description="Sampling seed (a round's seed is seed + round).")
    targeted_per_skill: int = Field(
        0, ge=0, le=100,
        description="Shorthand for a `targeted` mode with this per_skill; 0 = off.",
    )
    budget: Literal["fixed", "car"] = Field(
        "fixed",
        description="fixed: every mode's own budget each round; car: from round 2, the modes' budgets are split in "
        "proportion to the previous round's CAR per generation method (needs score.metrics compatibility).",
    )

    @model_validator(mode="after")
    def _modes(self) -> GenerateSpec:
        modes = list(self.modes) if self.modes is not None else [ExpandMode(mode="expand")]
        names = [m.mode for m in modes]
        if dupes := sorted(n for n, k in Counter(names).items() if k > 1):
            raise ValueError(f"modes: {', '.join(dupes)} given twice")
        if self.targeted_per_skill:
            if "targeted" not in names:
                modes.append(TargetedMode(mode="targeted", per_skill=self.targeted_per_skill))
            elif self.mode_in(modes, "targeted").per_skill != self.targeted_per_skill:
                raise ValueError("targeted_per_skill and the targeted mode's per_skill disagree; give one")
        self.modes = modes
        return self

    @staticmethod
    def mode_in(modes, name: str):
        return next((m for m in modes if m.mode == name), None)

    def mode(self, name: str):
        """The mode named `name` (expand, rationales, rft, targeted), or None when it is off."""
        return self.mode_in(self.modes or (), name)



# Cherry_LLM's newer code ranks by the PPL ratio, its older code by the mean-NLL (loss) ratio: they
# agree on the threshold 1 but rank differently, so the task chooses (ALGORITHMS.md).
IfdRatio = Literal["ppl", "loss"]


class CritiqueSpec(_Strict):
    """How the teacher vets the round's generated examples (expand and targeted).

    rules: a rule filter, no model (label in the set, sane length, not a copy of a seed, no duplicate);
    judge: the rules, then the teacher's verdict ("Conclusion: right/wrong") with its reason;
    cft: as judge, and the teacher's critiques also become training records (Critique Fine-Tuning);
    rubric: the rules, then CITING — a rubric per label, the answer revised against it (relabelled
        when the revision names another label, dropped when it names none);
    reflection: the rules, then Reflection-Tuning — a better instruction and answer per example.
    An unparseable reply is retried, then dropped with its raw text kept; it never fails the batch.
    In an answer kind (exact_answer, numeric, open_ended) the rules vet the generated questions and
    judge, cft and rubric read the verified solutions (rationales, RFT samples) after the reasoning
    steps; a rubric revision replaces its rationale only when it reaches the same answer."""

    mode: Literal["rules", "judge", "cft", "rubric", "reflection"] = "rules"
    retries: int = Field(1, ge=0, le=5, description="Retries of a model reply that does not parse.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature of model-based modes.")
    max_new_tokens: int = Field(128, ge=8, le=2048, description="Tokens per model reply.")
    reflection_ratio: IfdRatio | None = Field(
        None, description="reflection: the IFD / r-IFD form the Selective Reflection-Tuning rule compares (ppl or "
        "loss); default score.ifd_ratio.",
    )


# "car" stays a name the schema knows only to say it was renamed (`_renamed_car`): the per-record score
# is 1 / (1 + beta * L), no reward, so it is `compatibility`; CAR itself is per generation method.
Metric = Literal["learnability", "ifd", "rifd", "preference", "compatibility", "car", "difficulty", "agreement"]
CAR_RENAMED = ("car was renamed compatibility: the per-record 1 / (1 + car_beta * L) has no reward in it; the round's "
               "CAR per generation method (reward / (1 + car_beta * L)) is in the report whenever compatibility is scored")  # fmt: skip
# The score column each metric contributes to records (what select.metric, select.weights and
# recipe score_key name), beside "<column>_pct", its percentile rank in [0, 1) within the round.
METRIC_COLUMNS: dict[str, str] = {
    "learnability": "learnability",
    "ifd": "ifd_ppl",
    "rifd": "rifd_ppl",
    "preference": "arte_s_r",
    "compatibility": "compatibility",
    "car": "compatibility",
    "difficulty": "irt_difficulty",
    "agreement": "agreement",
}
# The other IFD form's columns, also in every score table (a recipe's score_key may name them).
OTHER_RATIO_COLUMNS: dict[str, str] = {"ifd": "ifd_loss", "rifd": "rifd_loss"}
# The generation modes `generate.budget: car` sizes (each makes the records of its own category).
BUDGETED_MODES = ("expand", "targeted", "rationales", "rft")
# Columns the loop derives from `difficulty` for the trainer's curricula.
DIFFICULTY_COLUMNS = ("irt_b", "difficulty100", "success_rate")
# Further columns a metric writes that a recipe's score_key may name: learnability's L0 under the
# current student (`loss_base`, a difficulty measure: an easy -> hard recipe bands on its "_pct"),
# and the curriculum difficulties.
RECIPE_COLUMNS: dict[str, tuple[str, ...]] = {"learnability": ("loss_base",), "difficulty": DIFFICULTY_COLUMNS}


class ScoreSpec(_Strict):
    """What the student scores each round's candidates with (one batched pass where passes are shared)."""

    metrics: list[Metric] = Field(default_factory=lambda: ["learnability"], min_length=1)
    car_beta: float = Field(
        1.0, ge=0.0, le=1000.0,
        description="compatibility 1 / (1 + beta * L) and CAR reward / (1 + beta * L), L the base student's loss.",
    )  # fmt: skip
    probe_k: int = Field(8, ge=1, le=1000, description="preference: the probe set's size (most discriminative by 2PL).")
    probe_max_new_tokens: int = Field(16, ge=1, le=512, description="preference: greedy tokens per probe answer.")
    ifd_ratio: IfdRatio = Field(
        "ppl", description="ifd / rifd: the form selection ranks by and the IFD > 1 filter reads: ppl "
        "(PPL(cond) / PPL(uncond), Cherry_LLM's newer code) or loss (mean NLL ratio, its older code).",
    )
    model: ModelSpec | None = Field(
        None, description="ifd / rifd and the reflection rule: a (smaller) model that scores them instead of the "
        "student (Superfiltering); default: the current student.",
    )

    @field_validator("metrics")
    @classmethod
    def _unique(cls, metrics: list[str]) -> list[str]:
        if "car" in metrics:
            raise ValueError(CAR_RENAMED)
        return list(dict.fromkeys(metrics))

    @field_validator("model")
    @classmethod
    def _local_scorer(cls, model: ModelSpec | None) -> ModelSpec | None:
        if model is not None and model.model.startswith("openai:"):
            raise ValueError("a scorer computes token losses: name a bundled model or a local HF model directory, not an endpoint")
        return model

    def column(self, metric: str) -> str:
        """The score column `metric` ranks by (ifd and rifd in the chosen `ifd_ratio` form)."""
        if self.ifd_ratio == "loss" and metric in OTHER_RATIO_COLUMNS:
            return OTHER_RATIO_COLUMNS[metric]
        return METRIC_COLUMNS[metric]


class SelectSpec(_Strict):
    """Which scored candidates train the student (the seeds always do).

    policy: top_fraction | top_k | threshold (on `metric` or the weighted mix), diversity (k-means
    quotas, sampling by the metric inside a cluster), reflection (the Selective Reflection-Tuning rule;
    needs critique.mode reflection), random (a seeded sample of top_fraction)."""

    policy: Literal["top_fraction", "top_k", "threshold", "diversity", "reflection", "random"] = "top_fraction"
    metric: Metric = Field("learnability", description="The metric policies rank by (it must be scored).")
    weights: dict[Metric, float] | None = Field(
        None, description="Rank by sum(w * z-score of the metric) instead of `metric`.",
    )
    top_fraction: float = Field(0.5, gt=0.0, le=1.0, description="Share of the candidates selected.")
    k: int | None = Field(None, ge=1, le=10**6, description="top_k, diversity and random: how many (default: top_fraction of them).")
    threshold: float | None = Field(None, description="threshold: keep scores >= this (<= when ascending).")
    ascending: bool = Field(False, description="Lower scores first (e.g. difficulty easy first).")
    ifd_filter: bool | None = Field(
        None, description="Drop candidates with IFD > 1 first (needs ifd scored). Default: on when the selection ranks "
        "by IFD (metric ifd, or ifd among the weights), as Cherry LLM does; off otherwise.",
    )
    min_agreement: float | None = Field(
        None, description="Drop candidates whose agreement margin (log-prob of the intended label minus the best other "
        "label's, under a judge trained on the seeds) is below this before any policy; 0 keeps those the judge labels as "
        "intended. Needs agreement scored. Off: nothing dropped.",
    )
    n_clusters: int = Field(4, ge=1, le=1000, description="diversity: k-means clusters.")
    quota: Literal["proportional", "equal"] = "proportional"
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="diversity: sampling temperature in a cluster.")
    reweight: Literal["success_gap", "loss_base"] | None = Field(
        None, description="diversity: from round 2, Diversify and Conquer's iterative reweighting: cluster quotas "
        "follow softmax(mean reward gap per cluster / reweight_temperature), the gap measured under the student "
        "trained on the earlier rounds. success_gap: 1 - success_rate (the gold answer's reward 1 minus the share "
        "of the student's checkpoints that answer right; needs difficulty scored); loss_base: the current "
        "student's loss on the gold answer (needs learnability). Off: quotas by `quota`.",
    )
    reweight_temperature: float = Field(1.0, gt=0.0, le=100.0, description="diversity: softmax temperature of `reweight`.")
    seed: int = Field(0, ge=0, le=2**31 - 1000)

    @model_validator(mode="after")
    def _policy(self) -> SelectSpec:
        if self.metric == "car" or "car" in (self.weights or {}):
            raise ValueError(CAR_RENAMED)
        if self.policy == "threshold" and self.threshold is None:
            raise ValueError("policy threshold needs `threshold`")
        if self.weights is not None and not self.weights:
            raise ValueError("weights: give at least one metric")
        return self

    def _ranks(self) -> list[str]:
        return [] if self.policy in ("random", "reflection") else list(self.weights) if self.weights else [self.metric]

    @property
    def filters_ifd(self) -> bool:
        """Whether IFD > 1 candidates are dropped before ranking: `ifd_filter`, else whether IFD ranks
        (Cherry LLM: an instruction that makes the answer harder to predict is not a learnable pair)."""
        return self.ifd_filter if self.ifd_filter is not None else "ifd" in self._ranks()

    def ranked_metrics(self) -> list[str]:
        """The metrics this selection reads."""
        used = self._ranks()
        used += ["ifd"] if self.filters_ifd and "ifd" not in used else []
        return used + (["agreement"] if self.min_agreement is not None and "agreement" not in used else [])


class TrainSpec(_Strict):
    """The round's training: one LoRA SFT stage from these fields, or a staged `recipe` (then the
    fields below shape only the LoBaSS reference adapter)."""

    epochs: int = Field(2, ge=1, le=100)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=1024)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    lora_rank: int = Field(8, ge=1, le=512)
    lora_alpha: float = Field(16.0, gt=0.0, le=65536.0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)
    max_seq_len: int = Field(256, ge=16, le=8192)
    seed: int = Field(0, ge=0, le=2**31 - 1000)
    reference_epochs: int = Field(1, ge=1, le=100, description="Epochs of the brief LoBaSS reference adapter trained from the current student each round.")
    recipe: Recipe | None = Field(
        None, description="A staged recipe (syllabus.recipe), inline or a path to a recipe YAML file.",
    )


class TailorSpec(_Strict):
    """ARTE (arXiv 2406.19227): align the teacher to the student's preferences with DPO; later rounds
    generate with the aligned teacher."""

    every: int = Field(1, ge=1, le=100, description="Tailor after rounds every, 2*every, ... (never after the last).")
    questions: int = Field(6, ge=1, le=1000, description="Draft questions (seeds first, then kept examples).")
    styles: list[Style] = Field(default_factory=lambda: ["step_by_step", "eli5"], min_length=2)
    draft_temperature: float = Field(0.7, gt=0.0, le=2.0)
    draft_max_new_tokens: int = Field(64, ge=8, le=2048)
    probe_k: int = Field(
        8, ge=1, le=1000,
        description="Dpref: the probe_k most discriminative validation items (2PL IRT on the student's checkpoints).",
    )  # fmt: skip
    probe_max_new_tokens: int = Field(16, ge=1, le=512)
    regenerate_temperature: float = Field(
        0.0, ge=0.0, le=2.0,
        description="Sampling temperature of the aligned teacher's expand, targeted and rationales (ARTE: 0, greedy).",
    )  # fmt: skip
    lora_rank: int = Field(8, ge=1, le=512)
    lora_alpha: float = Field(16.0, gt=0.0, le=65536.0)
    epochs: int = Field(1, ge=1, le=100)
    learning_rate: float = Field(5e-4, gt=0.0, le=1.0)
    batch_size: int = Field(4, ge=1, le=1024)
    beta: float = Field(0.1, gt=0.0, le=100.0, description="DPO temperature.")


class EvaluateSpec(_Strict):
    """How the student answers the eval set (the answer kinds generate; classification scores labels)."""

    max_new_tokens: int = Field(128, ge=1, le=2048, description="Greedy tokens per answer (exact_answer, numeric, open_ended), and per student answer CITING revises (critique.mode: rubric).")


class BaselinesSpec(_Strict):
    """Counterfactual arms trained beside the loop each round, on the same eval set, so the report can
    say what each part of the method bought (docs/task-format.md, "Baselines"). Off when absent.

    seeds_only: the seeds alone; all_kept: every kept candidate and the seeds (no selection); random: a
    random subset of the kept candidates the size of the selection, and the seeds; shuffled: the
    loop's own training set with every recipe stage's curriculum replaced by a seeded shuffle; sft: the
    loop's own training set with every kd / dft / anchored stage trained by plain SFT. Each arm trains with the loop's train spec or recipe (same epochs), from its own previous-round adapter."""

    arms: list[Literal["seeds_only", "all_kept", "random", "shuffled", "sft"]] = Field(min_length=1)
    repeats: int = Field(1, ge=1, le=20, description="Training seeds per arm (seed, seed+1, ...); accuracies pool over them.")

    @model_validator(mode="before")
    @classmethod
    def _arm_list(cls, data: object) -> object:
        """`baselines: [seeds_only, random]` is `baselines: {arms: [seeds_only, random]}`."""
        return {"arms": data} if isinstance(data, list) else data

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: list[str]) -> list[str]:
        if dupes := sorted({a for a in arms if arms.count(a) > 1}):
            raise ValueError(f"{', '.join(dupes)} given twice")
        return arms


Kind = Literal["classification", "exact_answer", "numeric", "open_ended"]


class TaskSpec(_Strict):
    """A distillation task. Every field is documented in docs/task-format.md."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Kind
    instructions: str = Field(min_length=1)
    labels: list[str] = Field(default_factory=list, description="classification: the label set (at least 2).")
    rubric: str | None = Field(None, min_length=1, description="open_ended: what the teacher's judge grades answers by.")
    seeds: list[Example] = Field(min_length=1)
    eval: list[Example] = Field(min_length=1)
    # Error analysis reads the student's mistakes here, never on `eval`: the teacher sees these inputs.
    # Never defaulted to the seeds: a probe set or error analysis on training data measures nothing.
    validation: list[Example] = Field(
        default_factory=list,
        description="Validation split; required by tailor, preference, targeted and pudf (none otherwise).",
    )
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    teachers: list[TeacherEntry] | None = Field(
        None, min_length=2, max_length=4,
        description="Several teachers: each expands its share of the seeds (reallocated each round by its CAR), and a kd "
        "stage learns each record from the teacher that wrote it. The first is also `teacher` (critique, reasoning).",
    )  # fmt: skip
    student: ModelSpec = Field(default_factory=ModelSpec)
    rounds: int = Field(2, ge=1, le=100)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    critique: CritiqueSpec = Field(default_factory=CritiqueSpec)
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    select: SelectSpec = Field(default_factory=SelectSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    tailor: TailorSpec | None = Field(None, description="ARTE teacher tailoring; off when absent.")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    baselines: BaselinesSpec | None = Field(None, description="Counterfactual baseline arms; off when absent.")

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        dupes = sorted(x for x, n in Counter(labels).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate labels: {', '.join(dupes[:10])}" + (f" and {len(dupes) - 10} more" if len(dupes) > 10 else ""))
        return labels

    @model_validator(mode="before")
    @classmethod
    def _default_modes(cls, data: object) -> object:
        """The answer kinds' default generation: new questions, answered with rationales."""
        if isinstance(data, dict) and data.get("kind") in kinds.KINDS and kinds.get(data["kind"]).reasons:
            gen = data.get("generate")
            if gen is None or (isinstance(gen, dict) and "modes" not in gen and not gen.get("targeted_per_skill")):
                data = {**data, "generate": {**(gen or {}), "modes": [{"mode": "expand"}, {"mode": "rationales"}]}}
        return data

    @model_validator(mode="after")
    def _baselines_fit(self) -> TaskSpec:
        if self.baselines is not None and self.kind_spec.judged:
            raise ValueError("baselines: the arms are compared item by item on right/wrong answers; an open_ended "
                             "task's answers are graded by the judge, so it has none")
        if self.baselines is not None and "sft" in self.baselines.arms:
            recipe = self.train.recipe
            if recipe is None or not any(st.objective in TOKEN_OBJECTIVES for st in recipe.stages):
                raise ValueError("baselines.arms: sft compares a distillation objective (kd, dft, anchored) with plain SFT, but "
                                 "train.recipe has none (the arm would repeat the loop's own training); drop sft")  # fmt: skip
        if self.baselines is not None and "shuffled" in self.baselines.arms:
            recipe = self.train.recipe
            if recipe is None or all(st.curriculum.policy == "shuffled" for st in recipe.stages):
                raise ValueError("baselines.arms: shuffled compares a curriculum with a shuffled order, but train.recipe "
                                 "has no curriculum (the arm would repeat the loop's own training); drop shuffled")
        return self

    @model_validator(mode="after")
    def _labels_known(self) -> TaskSpec:
        self._check_kind()
        if not self.kind_spec.has_labels:
            self._check_method()
            return self
        known = set(self.labels)
        for field in ("seeds", "eval", "validation"):
            for i, ex in enumerate(getattr(self, field)):
                if ex.label not in known:
                    raise ValueError(f"{field}[{i}].label {ex.label!r} is not in labels")
        # Seed expansion works per label: a label without seeds could never get generated examples.
        seeded = {ex.label for ex in self.seeds}
        missing = [label for label in self.labels if label not in seeded]
        if missing:
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise ValueError(f"seeds: no seed example for label(s) {', '.join(missing[:10])}{more}")
        self._check_method()
        return self

    @property
    def teacher_list(self) -> list[TeacherSpec]:
        """Every teacher: `teachers`, or the one `teacher`."""
        return list(self.teachers) if self.teachers else [self.teacher]

    def _check_kind(self) -> None:
        """What each kind needs, and what only classification has (a label set to score and confuse)."""
        kind = self.kind_spec
        for field in ("eval", "validation") if kind.solution_seeds else ("seeds", "eval", "validation"):
            for i, ex in enumerate(getattr(self, field)):
                if ex.solution is not None:
                    raise ValueError(f"{field}[{i}].solution: only the seeds of a numeric task carry a worked solution")
        if kind.has_labels:
            if len(self.labels) < 2:
                raise ValueError(f"labels: {kind.name} needs at least 2 labels")
            return
        if self.labels:
            raise ValueError(f"labels: only classification tasks have labels; a {kind.name} task gives each example's answer")
        if kind.judged and self.rubric is None:
            raise ValueError(f"rubric: {kind.name} tasks need a rubric (what the teacher's judge grades answers by)")
        for field in ("seeds", "eval", "validation"):
            for i, ex in enumerate(getattr(self, field)):
                if (why := kind.gold_error(ex.label)) is not None:
                    raise ValueError(f"{field}[{i}].label: {why}")
        if self.critique.mode == "reflection":
            raise ValueError(f"critique.mode: reflection rewrites the question, and nothing would verify the new question's answer; "
                             f"a {self.kind} task can use rules, judge, cft or rubric")  # fmt: skip
        if self.critique.mode != "rules" and not (self.generate.mode("rationales") or self.generate.mode("rft")):
            raise ValueError(f"critique.mode: {self.critique.mode} critiques the teacher's solutions in a {self.kind} task; "
                             "add a rationales or rft mode to generate.modes")  # fmt: skip
        for metric, what in (("difficulty", "the crowd's label choice"), ("agreement", "a judge's label likelihood")):
            if metric in self.score.metrics:
                raise ValueError(f"score.metrics: {metric} scores {what} over a label set (classification only)")
        if self.kind_spec.judged and self.generate.mode("rft") is not None:
            raise ValueError(f"generate.modes: rft needs a gold answer to verify (not {self.kind})")
        if self.generate.mode("expand") is not None and self.generate.mode("rationales") is None:
            raise ValueError(f"generate.modes: expand writes {self.kind} questions without answers; add a rationales mode to answer them")

    def _check_method(self) -> None:
        """Cross-field rules of the method: what selection and the recipe read must be scored."""
        scored = self.score.metrics
        if "metric" not in self.select.model_fields_set and self.select.metric not in scored:
            self.select.metric = scored[0]  # unset: rank by the first metric scored
        for m in self.select.ranked_metrics():
            if m not in scored:
                raise ValueError(f"select: ranks by {m}, which is not in score.metrics {scored}")
        if (gap := self.select.reweight) is not None:
            if self.select.policy != "diversity":
                raise ValueError(f"select.reweight: reweights diversity clusters; policy {self.select.policy} has none")
            needs = {"success_gap": "difficulty", "loss_base": "learnability"}[gap]
            if needs not in scored:
                raise ValueError(f"select.reweight: {gap} is read from the {needs} metric: add {needs} to score.metrics")
        if self.select.policy == "reflection" and self.critique.mode != "reflection":
            raise ValueError("select.policy reflection needs critique.mode reflection (the reflected versions)")
        if self.critique.reflection_ratio is not None and self.select.policy != "reflection":
            raise ValueError("critique.reflection_ratio: only the reflection rule (select.policy reflection) reads it")
        if self.score.model is not None and not ({"ifd", "rifd"} & set(scored) or self.select.policy == "reflection"):
            raise ValueError("score.model scores ifd, rifd and the reflection rule: none is used here; drop it")
        if self.teachers is not None:
            first = self.teachers[0]
            if "teacher" in self.model_fields_set and (self.teacher.model, self.teacher.context) != (first.model, first.context):
                raise ValueError("give teacher or teachers, not both (the first of teachers is the teacher)")
            models = [t.model for t in self.teachers]
            if len(set(models)) != len(models):
                raise ValueError("teachers: each model at most once (a record is routed to its teacher by model)")
            if self.generate.mode("expand") is None:
                raise ValueError("teachers: several teachers share the seed expansion; add the expand mode")
            if "compatibility" not in {m for m in self.score.metrics}:
                raise ValueError("teachers: each round reallocates the teachers' shares by their CAR, which needs the base "
                                 "student's loss: add compatibility to score.metrics")  # fmt: skip
            if self.tailor is not None:
                raise ValueError("tailor: aligns one teacher; with several teachers drop it")
            self.teacher = TeacherSpec(model=first.model, context=first.context)
        if self.tailor is not None and self.rounds < 2:
            raise ValueError("tailor: needs rounds >= 2 (the aligned teacher generates in the rounds after tailoring)")
        if self.tailor is not None and self.teacher.model.startswith("openai:"):
            raise ValueError("tailor: trains a LoRA on the teacher's weights; an openai: endpoint has none here")
        recipe = self.train.recipe
        distils = recipe is not None and recipe.teacher_top_k > 0
        if recipe is not None and recipe.on_policy:
            if len(recipe.stages) != 1:
                raise ValueError("train.recipe: an opd stage trains on the student's own samples; it must be the recipe's only stage")
            if self.baselines is not None and set(self.baselines.arms) - {"sft"}:
                raise ValueError("baselines.arms: with an opd stage only the sft arm runs (the other arms would need on-policy "
                                 "samples of their own)")  # fmt: skip
        if self.teacher.context is not None:
            if not distils:
                raise ValueError("teacher.context: only a kd or opd stage reads the teacher's privileged context; add one to train.recipe")
            if self.teacher.context.rubric and not self.rubric:
                raise ValueError("teacher.context.rubric: the task has no rubric")
        if self.generate.budget == "car":
            if "compatibility" not in scored:
                raise ValueError("generate.budget: car splits the next round's generation by each method's CAR, which needs "
                                 "the base student's loss: add compatibility to score.metrics")  # fmt: skip
            if len([m for m in self.generate.modes or () if m.mode in BUDGETED_MODES]) < 2:
                raise ValueError("generate.budget: car splits the generation across modes by their CAR; give at least two "
                                 "of expand, targeted, rationales, rft")  # fmt: skip
        if not self.validation and (needs := self.needs_validation()):
            raise ValueError(f"validation: {needs[0]} reads the student on a validation split (never the seeds, which it "
                             "trains on): give the task a validation split")  # fmt: skip
        if (recipe := self.train.recipe) is None:
            return
        both = [*(METRIC_COLUMNS[m] for m in scored), *(OTHER_RATIO_COLUMNS[m] for m in scored if m in OTHER_RATIO_COLUMNS),
                *(x for m in scored for x in RECIPE_COLUMNS.get(m, ()))]
        columns = {c for col in both for c in (col, col + "_pct")}
        for i, st in enumerate(recipe.stages):
            where = f"train.recipe.stages[{i}]"
            for key in (st.data.score_key, st.curriculum.score_key):
                if key is not None and key not in columns:
                    needs = [m for m, cs in RECIPE_COLUMNS.items() if key.removesuffix("_pct") in cs]
                    hint = f" (add {needs[0]} to score.metrics)" if needs else ""
                    raise ValueError(f"{where}: score_key {key!r} is not a scored column; scored: {sorted(columns)}{hint}")
            if st.objective == "dpo":
                raise ValueError(f"{where}.objective: dpo needs preference pairs; the loop trains on sft or cft records")
            if st.objective == "cft" and (self.critique.mode != "cft" or st.data.categories != ("cft",)):
                raise ValueError(f"{where}.objective: cft trains on critique records: needs critique.mode cft and data.categories [cft]")
            if st.curriculum.policy == "pudf" and not self.validation:
                raise ValueError(f"{where}.curriculum: pudf estimates the ability on a held-out split: give the task a validation split")

    @property
    def kind_spec(self) -> kinds.TaskKind:
        """The task kind's rules (syllabus.kinds): prompts, seed responses, the answer checker."""
        return kinds.get(self.kind)

    def needs_validation(self) -> list[str]:
        """The methods on that read the validation split (ARTE's probe set, error analysis)."""
        needs = ["tailor"] if self.tailor is not None else []
        needs += ["score.metrics: preference"] if "preference" in self.score.metrics else []
        needs += ["generate.modes: targeted"] if self.generate.mode("targeted") is not None else []
        return needs

    @property
    def reflection_ratio(self) -> str:
        """The IFD form the Selective Reflection-Tuning rule compares: critique.reflection_ratio, else score.ifd_ratio."""
        return self.critique.reflection_ratio or self.score.ifd_ratio

    def prompt_for(self, text: str) -> str:
        """The student's prompt for one input."""
        return self.kind_spec.prompt(self.instructions, self.labels, text)

    def rationale_prompt_for(self, text: str) -> str:
        """The prompt a rationale trains on (`TaskKind.rationale_prompt`)."""
        return self.kind_spec.rationale_prompt(self.instructions, self.labels, text)

    def response_for(self, answer: str, solution: str | None = None) -> str:
        """A seed's training response (`TaskKind.seed_response`)."""
        return self.kind_spec.seed_response(answer, solution)


def _format_error(source: str, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p)[:80] if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
    msg = " ".join(e["msg"].removeprefix("Value error, ").split())[:300]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "missing (required)"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc + ': ' if loc else ''}{msg}{more}"


def _read_examples(base: Path, value: object, field: str, source: str) -> object:
    """Inline a `seeds:`/`eval:` file reference (JSONL, or CSV with text/input and label columns)."""
    if not isinstance(value, str):
        return value
    path = (base / value).resolve()
    if not path.is_file():
        raise TaskSpecError(f"{source}: {field}: file {value[:200]!r} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskSpecError(f"{source}: {field}: {value[:200]} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise TaskSpecError(f"{source}: {field}: cannot read {value[:200]} ({e.strerror or type(e).__name__})") from None
    if path.suffix == ".csv":
        import csv
        import io

        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise TaskSpecError(f"{source}: {field}: {value[:200]}: invalid CSV ({e})") from None
        return [{"input": r.get("input") or r.get("text", ""), "label": r.get("label") or r.get("category", "")} for r in rows]
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line, parse_constant=_reject_constant))
        except (ValueError, RecursionError):
            raise TaskSpecError(f"{source}: {field}: {value[:200]} line {lineno}: invalid JSON") from None
    return records


def _read_recipe(base: Path, value: str, source: str) -> object:
    """Inline a `train.recipe` file reference: relative to the task file, else to the working directory
    (so `recipes/chain_of_lora_2stage.yaml` works from the repository root)."""
    path = next((p for p in ((base / value).resolve(), (Path.cwd() / value).resolve()) if p.is_file()), None)
    if path is None:
        raise TaskSpecError(f"{source}: train.recipe: file {value[:200]!r} not found")
    try:
        data = safe_yaml.load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError, OverflowError) as e:
        raise TaskSpecError(f"{source}: train.recipe: cannot read {value[:200]} ({type(e).__name__})") from None
    if not isinstance(data, dict) or not _depth_ok(data):
        raise TaskSpecError(f"{source}: train.recipe: {value[:200]} is not a recipe mapping")
    return data


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _depth_ok(value: object, limit: int = MAX_NESTING) -> bool:
    """Whether `value` nests at most `limit` levels (iterative: deep input cannot overflow the stack)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                return False
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def parse_task(
    text: str | bytes, source: str = "task", base_dir: Path | None = None, *, inline_only: bool = False
) -> TaskSpec:
    """Parse YAML text into a TaskSpec. File references resolve against base_dir, unless
    `inline_only` (a task sent to a server), where any file reference is an error."""
    if len(text) > MAX_TASK_BYTES:  # characters or bytes: either way before any parsing
        raise TaskSpecError(f"{source}: {len(text)} bytes; a task file is at most {MAX_TASK_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TaskSpecError(f"{source}: not UTF-8 text (byte {e.start})") from None
    try:
        data = safe_yaml.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())[:200]
        raise TaskSpecError(f"{source}:{where} invalid YAML: {problem}") from None
    except RecursionError:
        raise TaskSpecError(f"{source}: nested too deeply (at most {MAX_NESTING} levels)") from None
    except (ValueError, OverflowError) as e:  # e.g. a number YAML cannot represent
        raise TaskSpecError(f"{source}: invalid YAML: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise TaskSpecError(f"{source}: expected a mapping of task fields at the top level")
    if not _depth_ok(data):
        raise TaskSpecError(f"{source}: nested too deeply (at most {MAX_NESTING} levels)")
    for field in ("seeds", "eval", "validation"):
        if field in data:
            if inline_only and isinstance(data[field], str):
                raise TaskSpecError(
                    f"{field}: a task sent to the gateway must carry its examples inline; `syllabus run` inlines files"
                )
            data[field] = _read_examples(base_dir or Path.cwd(), data[field], field, source)
    train = data.get("train")
    if isinstance(train, dict) and isinstance(train.get("recipe"), str):
        if inline_only:
            raise TaskSpecError("train.recipe: a task sent to the gateway must carry its recipe inline; `syllabus run` inlines files")
        train["recipe"] = _read_recipe(base_dir or Path.cwd(), train["recipe"], source)
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as e:
        raise TaskSpecError(_format_error(source, e)) from None
    except RecursionError:
        raise TaskSpecError(f"{source}: nested too deeply (at most {MAX_NESTING} levels)") from None


def load_task(path: str | Path) -> TaskSpec:
    path = Path(path)
    if not path.is_file():
        raise TaskSpecError(f"{path}: task file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TaskSpecError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    return parse_task(raw, source=str(path), base_dir=path.parent)


def dump_task(task: TaskSpec) -> str:
    """The task as self-contained YAML (seeds and eval inline), as sent to the gateway."""
    return yaml.safe_dump(task.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
