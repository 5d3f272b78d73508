"""The activities' inputs and outputs: one typed dataclass each way per activity (`orchestrator.calls`
declares which activity takes which). Plain data (no heavy imports): the workflow sandbox imports it.
Data moves by `ArtifactRef`, never as sample lists, so payloads and histories stay small.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.types import LoopPlan, MethodCar
from syllabus.artifacts import ArtifactRef


@dataclass
class PrepareJobInput:
    job_id: str
    task_ref: ArtifactRef
    rounds: int


@dataclass
class PrepareJobOutput:
    # JSONL: id, input, label, prompt, response (= label), parent_id (null), provenance {"method": "seed"}.
    seeds: ArtifactRef
    # JSONL: id, input, label, prompt.
    eval_set: ArtifactRef
    seed_count: int
    eval_count: int
    artifacts_uri: str
    # JSONL like eval_set: the validation split (empty when the task has none: no method then reads it).
    validation: ArtifactRef | None = None
    plan: LoopPlan = field(default_factory=LoopPlan)


@dataclass
class RoundCounts:
    """Every counter of a round, as the `rounds` row records it (with the round's accuracy)."""

    generated: int
    kept: int
    selected: int
    trained: int
    leaked: int = 0
    targeted: int = 0
    train_loss: float | None = None


@dataclass
class EvaluateInput:
    job_id: str
    task_ref: ArtifactRef
    round: int  # 0 = baseline
    stage: str  # "baseline" or "sft"
    eval_set: ArtifactRef
    adapter: ArtifactRef | None = None
    # Set for a round's final evaluation: the round's row (these counters, the accuracy and the
    # adapter) is written with it, the accuracy being the round's last counter.
    round_counts: RoundCounts | None = None


@dataclass
class EvaluateOutput:
    accuracy: float
    correct: int
    total: int
    predictions: ArtifactRef


@dataclass
class GenerateInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    seeds: ArtifactRef
    # The eval set: the teacher drops generated examples that overlap it (exact or n-gram).
    eval_set: ArtifactRef | None = None
    # AnalyzeErrors output of the previous round: also generate targeted examples for these skills.
    skills: ArtifactRef | None = None
    # The tailored teacher's adapter (ARTE); None: the task's teacher as is.
    teacher_adapter: ArtifactRef | None = None
    # generate.budget car: mode ("expand", "targeted") -> the factor its per_label / per_skill is
    # multiplied by (orchestrator.budget.scaled); absent: 1.
    budget: dict[str, float] = field(default_factory=dict)


@dataclass
class GenerateOutput:
    examples: ArtifactRef | None  # JSONL: id, input, label, prompt, response, parent_id, provenance; None: nothing ran
    generated: int
    leaked: int = 0  # dropped by the leakage guard
    targeted: int = 0  # of `generated`, made by targeted generation
    # Several teachers: expansion records each teacher wrote, by "teacher:<model>".
    by_teacher: dict[str, int] = field(default_factory=dict)


@dataclass
class CritiqueInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    examples: ArtifactRef
    seeds: ArtifactRef
    teacher_adapter: ArtifactRef | None = None
    # The student as it stands (the previous round's adapter; None: the base student): CITING's
    # rubric mode revises this student's own answers.
    student_adapter: ArtifactRef | None = None


@dataclass
class CritiqueOutput:
    # The kept examples (relabelled or reflected by rubric/reflection), then any critique records (cft).
    kept: ArtifactRef
    critiques: ArtifactRef  # JSONL: the model's critiques (model-based modes), else the rules' id, keep, reason
    kept_count: int
    dropped_count: int
    dropped: dict[str, int] = field(default_factory=dict)  # by reason code
    extra_count: int = 0  # cft critique records among `kept`
    # Per model step (cft_critique, rubric, rubric_revision, reflection): its replies, parsed, retried
    # (parsed on a later attempt), unparsable (never parsed: the example dropped).
    parsing: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class ReasonInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    mode: str  # "rationales" or "rft"
    seeds: ArtifactRef
    # The round's candidates so far (kept examples, earlier reasoning records); None: the seeds only.
    candidates: ArtifactRef | None = None
    teacher_adapter: ArtifactRef | None = None
    # generate.budget car: max_questions is multiplied by this (orchestrator.budget.scaled).
    budget_scale: float = 1.0


@dataclass
class ReasonOutput:
    candidates: ArtifactRef  # the input candidates followed by the kept rationale records
    count: int
    counts: dict[str, int] = field(default_factory=dict)  # written, wrong, failed, duplicate_paths, kept


@dataclass
class TrainInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    # "reference" (LoBaSS reference adapter), "agreement" (agreement's judge: train.* on the seeds),
    # "sft" (one stage from train.*) or "recipe" (train.recipe)
    stage: str
    dataset: ArtifactRef  # JSONL with prompt and response
    # Adapter to continue from (the previous round's); None trains a fresh adapter.
    init_adapter: ArtifactRef | None = None
    # A baseline arm's run (orchestrator.baselines): recorded as the stage `arm_stage(arm, repeat)`,
    # trained with seed + repeat; "shuffled" trains the recipe with every curriculum shuffled.
    arm: str = ""
    repeat: int = 0
    # The teacher's top-k log-probs of `dataset` (a recipe with a kd stage) and the teacher behind
    # them (id, model, revision, backend), recorded with the run.
    teacher_logprobs: ArtifactRef | None = None
    teacher: dict[str, str] = field(default_factory=dict)
    # opd: a round trains in chunks; every chunk but the last is recorded as "<stage>-chunk-<n>".
    chunk_label: str = ""


@dataclass
class SampleInput:
    """StudentService.Sample of a training set's prompts from the current student (opd)."""

    job_id: str
    task_ref: ArtifactRef
    round: int
    chunk: int
    dataset: ArtifactRef
    adapter: ArtifactRef | None = None


@dataclass
class SampleOutput:
    samples: ArtifactRef
    count: int


@dataclass
class LogprobsInput:
    """TeacherService.TopLogprobs of a training set; `dataset` None: only the teacher/student
    tokenizer check (the job's first step when a recipe distils)."""

    job_id: str
    task_ref: ArtifactRef
    round: int
    dataset: ArtifactRef | None = None


@dataclass
class LogprobsOutput:
    logprobs: ArtifactRef | None
    records: int
    tokens: int
    teacher: dict[str, str] = field(default_factory=dict)
    existing: bool = False


@dataclass
class StageResult:
    """One recipe stage of a training run, as the trainer measured it."""

    name: str
    steps: int
    seconds: float
    mean_loss: float | None = None
    samples: int = 0


@dataclass
class TrainOutput:
    adapter: ArtifactRef  # tar of a peft adapter directory
    samples: int
    steps: int
    mean_loss: float
    stages: list[StageResult] = field(default_factory=list)


@dataclass
class ScoreInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    dataset: ArtifactRef | None  # the round's candidates (scored with the seeds); None: the seeds only
    seeds: ArtifactRef
    # The validation split: ARTE's probe set (preference).
    validation: ArtifactRef
    reference: ArtifactRef | None = None  # the LoBaSS reference adapter (trained from the current student)
    student: ArtifactRef | None = None  # the current student's adapter (None in round 1: the base)
    # The student's checkpoints so far (each round's adapter, this round's reference): the IRT crowd.
    crowd: list[ArtifactRef] = field(default_factory=list)
    # The validation split scored too as held-out records (PUDF's ability probe); None: not needed.
    heldout: ArtifactRef | None = None
    # Generation method -> responses it produced this round (CAR's reward denominator).
    produced: dict[str, int] = field(default_factory=dict)
    # agreement's judge: an adapter trained on the seeds in round 1, the current student after.
    judge: ArtifactRef | None = None


@dataclass
class ScoreOutput:
    # JSONL: "id" and every score column (loss_base, loss_ref, learnability, ifd_ppl, ..., "<col>_pct",
    # irt_b, difficulty100) of each candidate, seed and held-out record.
    scores: ArtifactRef
    count: int
    # With compatibility scored: CAR per generation method of `produced`, best first.
    car: list[MethodCar] = field(default_factory=list)


@dataclass
class SelectInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    candidates: ArtifactRef | None  # None: no candidates this round (the training set is the seeds)
    scores: ArtifactRef
    seeds: ArtifactRef
    # Held-out records join the training set flagged `heldout` (PUDF's probe; never trained on).
    heldout: ArtifactRef | None = None
    student: ArtifactRef | None = None  # the current student (diversity embeds with it)


@dataclass
class SelectOutput:
    # The selected candidates (by rank), then the seeds, then held-out records; each with its score
    # columns and category, as the trainer's recipe filters and curricula read them.
    train_set: ArtifactRef
    selected: int
    trained: int
    dropped: dict[str, int] = field(default_factory=dict)  # candidates not selected, by reason


@dataclass
class FinishJobInput:
    job_id: str
    status: str  # completed | failed | cancelled
    baseline_accuracy: float | None = None
    final_accuracy: float | None = None


@dataclass
class FinishJobOutput:
    status: str


@dataclass
class AnalyzeInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    predictions: ArtifactRef  # the student's predictions on the validation split
    validation: ArtifactRef


@dataclass
class AnalyzeOutput:
    skills: ArtifactRef  # JSONL skill records (AnalyzeErrors)
    skill_count: int
    wrong: int


@dataclass
class TailorInputsInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    seeds: ArtifactRef
    validation: ArtifactRef
    candidates: ArtifactRef | None = None


@dataclass
class TailorInputsOutput:
    # ARTE draft questions: "id", "input", "label", and for a generated question its generation
    # "prompt", "completion" and "group" (question-level pairs); this round's generated questions
    # first, then the seeds.
    questions: ArtifactRef
    # The validation bank Dpref is chosen from: "id", "prompt", "answer" (the gold answer the student's
    # one-shot answers are graded against), every validation item.
    probe_set: ArtifactRef
    # The task's tailor settings.
    settings: ArteSettings


@dataclass
class ArteSettings:
    """The ARTE knobs (docs/ALGORITHMS: lr 1e-7 for full models; a LoRA needs a larger one)."""

    # Reasoning styles of the draft rationales (teacher_svc.reasoning.STYLES); two at least.
    styles: list[str] = field(default_factory=lambda: ["step_by_step", "eli5"])
    # Temperature and length of the draft rationales.
    draft_temperature: float = 0.7
    draft_max_new_tokens: int = 64
    # Greedy tokens of each of the student's probe answers.
    probe_max_new_tokens: int = 16
    # |Dpref|: the probe_k most discriminative bank items under a 2PL fit of the crowd's answers.
    probe_k: int = 8
    # DPO on the teacher: LoRA and optimisation.
    lora_rank: int = 8
    lora_alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    epochs: int = 1
    learning_rate: float = 5e-4
    batch_size: int = 4
    max_seq_len: int = 384
    beta: float = 0.1
    seed: int = 0


@dataclass
class CompareInput:
    job_id: str
    round: int
    loop_predictions: ArtifactRef  # the loop's evaluation of this round
    # Arm -> its repeats' predictions on the same eval set.
    arms: dict[str, list[ArtifactRef]] = field(default_factory=dict)


@dataclass
class ArmLift:
    lift: float
    ci_low: float
    ci_high: float
    items: int  # eval items paired
    verdict: str


@dataclass
class CompareOutput:
    lifts: dict[str, ArmLift] = field(default_factory=dict)  # by arm
