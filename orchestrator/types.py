"""The dataclasses that cross the workflow boundary: one input and one output per workflow and activity.

Only plain data lives here (no heavy imports), so the workflow sandbox and the gateway can import it
cheaply. Data moves by `ArtifactRef`, never as sample lists, so payloads and histories stay small.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syllabus.artifacts import ArtifactRef

# ---------------------------------------------------------------------------------------------------
# Workflow input / output (the gateway's contract)


@dataclass
class DistillationInput:
    """Input of DistillationWorkflow."""

    job_id: str
    # The task spec YAML (seeds/eval inline), stored by the gateway at jobs/<job_id>/task.yaml.
    task_ref: ArtifactRef
    rounds: int
    # select.top_fraction of the task: share of the kept examples selected by learnability.
    top_fraction: float
    # generate.targeted_per_skill of the task: > 0 turns on error analysis + targeted generation.
    targeted_per_skill: int = 0
    # How long a long activity may go without a heartbeat before Temporal retries it elsewhere
    # (a dead worker or service is detected this fast). From SYLLABUS_ACTIVITY_HEARTBEAT_TIMEOUT_S.
    heartbeat_timeout_s: float = 120.0


@dataclass
class StepTime:
    """Wall time of one step. Names: prepare, baseline-eval, generate, critique, reference-train,
    score, select, train, evaluate. Round 0 for steps outside rounds."""

    name: str
    round: int
    seconds: float


@dataclass
class RoundResult:
    """What one round did."""

    round: int
    generated: int
    kept: int
    selected: int
    trained: int
    accuracy: float
    train_loss: float
    adapter_uri: str
    # Generated examples the teacher dropped because they overlap the eval set (leakage guard).
    leaked: int = 0
    # Of `generated`, examples made by targeted generation for the previous round's errors.
    targeted: int = 0


@dataclass
class JobProgress:
    """The workflow's state, returned by the `progress` query and as the workflow result."""

    job_id: str
    rounds_total: int
    current_round: int = 0
    current_step: str = ""
    baseline_accuracy: float | None = None
    final_accuracy: float | None = None
    rounds: list[RoundResult] = field(default_factory=list)
    steps: list[StepTime] = field(default_factory=list)
    artifacts_uri: str = ""  # URI prefix of the job's artifacts


# ---------------------------------------------------------------------------------------------------
# Activities


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
    # JSONL like eval_set: the validation split error analysis reads (the seeds when the task has none).
    validation: ArtifactRef | None = None


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


@dataclass
class GenerateOutput:
    examples: ArtifactRef  # JSONL: id, input, label, prompt, response, parent_id, provenance
    generated: int
    leaked: int = 0  # dropped by the leakage guard
    targeted: int = 0  # of `generated`, made by targeted generation


@dataclass
class CritiqueInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    examples: ArtifactRef
    seeds: ArtifactRef


@dataclass
class CritiqueOutput:
    kept: ArtifactRef  # the kept examples, in the input format
    critiques: ArtifactRef  # JSONL: id, keep, reason
    kept_count: int
    dropped_count: int


@dataclass
class TrainInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    stage: str  # "reference" (LoBaSS reference adapter) or "sft"
    dataset: ArtifactRef  # JSONL with prompt and response
    # Adapter to continue from (the previous round's); None trains a fresh adapter.
    init_adapter: ArtifactRef | None = None


@dataclass
class TrainOutput:
    adapter: ArtifactRef  # tar of a peft adapter directory
    samples: int
    steps: int
    mean_loss: float


@dataclass
class ScoreInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    dataset: ArtifactRef  # the kept examples
    reference: ArtifactRef  # the LoBaSS reference adapter (trained from the current student)
    student: ArtifactRef | None = None  # the current student's adapter (None in round 1: the base)


@dataclass
class ScoreOutput:
    scores: ArtifactRef  # JSONL: id, loss_base, loss_ref, learnability
    count: int


@dataclass
class SelectInput:
    job_id: str
    round: int
    kept: ArtifactRef
    scores: ArtifactRef
    seeds: ArtifactRef
    top_fraction: float


@dataclass
class SelectOutput:
    train_set: ArtifactRef  # the selected examples (by rank) followed by the seeds
    selected: int
    trained: int


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
