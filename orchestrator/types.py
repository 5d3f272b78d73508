"""The dataclasses of the workflows: their inputs and outputs (the gateway's contract), the loop's
plan, its progress and its results. The activities' inputs and outputs are in `orchestrator.activity_io`.

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
    # How long a long activity may go without a heartbeat before Temporal retries it elsewhere
    # (a dead worker or service is detected this fast). From SYLLABUS_ACTIVITY_HEARTBEAT_TIMEOUT_S.
    heartbeat_timeout_s: float = 120.0


@dataclass
class LoopPlan:
    """Which steps the task turns on; decided by `prepare_job` from the task, so the workflow's
    choices are recorded in its history (deterministic on replay)."""

    expand: bool = True
    targeted: bool = False
    critique: str = "rules"
    # Reasoning modes run after the critique, in order: "rationales", "rft".
    reasoning: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["learnability"])
    select_policy: str = "top_fraction"
    # Recipe stage names ("" = the stage has no name); empty: one SFT stage from train.*.
    stages: list[str] = field(default_factory=list)
    # ARTE tailoring after rounds every, 2*every, ...; 0 = off.
    tailor_every: int = 0
    # A PUDF stage needs held-out records (the validation split with difficulties) in its dataset.
    heldout: bool = False
    # The answer kinds (exact_answer, numeric, open_ended): generated examples are questions; the
    # reasoning steps answer them, and only answered records are candidates.
    answers_by_reasoning: bool = False
    # generate.budget car: size the next round's modes by this round's CAR per method.
    budget_by_car: bool = False
    # open_ended: the teacher judges the student's answers against the rubric (the judge's mean
    # score is the accuracy, with a win rate against the base student).
    judge_eval: bool = False
    # Counterfactual baseline arms trained beside each round (the task's `baselines`), and the
    # training seeds per arm.
    baselines: list[str] = field(default_factory=list)
    baseline_repeats: int = 1
    # The recipe has kd stages: the teacher's top-k (this many per position) of every training set.
    distill_top_k: int = 0
    # An opd stage: each round runs this many sample -> teacher-logprobs -> train chunks (0: none).
    opd_chunks: int = 0
    # Several teachers (`teachers:`): their budget keys, "teacher:<model>"; empty with one teacher.
    teachers: list[str] = field(default_factory=list)

    @property
    def learnability(self) -> bool:
        return "learnability" in self.metrics

    @property
    def critiques_solutions(self) -> bool:
        """An answer kind's model critique (judge, cft, rubric): it reads the verified solutions."""
        return self.answers_by_reasoning and self.critique != "rules"


@dataclass
class StepTime:
    """Wall time of one step. Names: prepare, baseline-eval, generate, critique, reference-train,
    agreement-train, score, select, train, evaluate. Round 0 for steps outside rounds."""

    name: str
    round: int
    seconds: float


@dataclass
class PlannedStep:
    """A step the job expects to run (the ETA sums the remaining ones)."""

    name: str
    round: int


@dataclass
class ArmRun:
    """One repeat of one baseline arm in one round (its training seed is the loop's + repeat)."""

    repeat: int
    accuracy: float
    trained: int  # samples trained on
    mean_loss: float
    adapter: ArtifactRef
    predictions: ArtifactRef


@dataclass
class ArmRound:
    """A baseline arm in one round: its repeats, and the loop's lift over it (paired bootstrap over
    eval items, pooled over the repeats; fractions, 0.03 = 3 points). The lift is unset until compared."""

    round: int
    runs: list[ArmRun] = field(default_factory=list)
    lift: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    verdict: str = ""

    @property
    def accuracy(self) -> float:
        return sum(r.accuracy for r in self.runs) / len(self.runs) if self.runs else 0.0


@dataclass
class BaselineResult:
    """One baseline arm of the job (seeds_only, all_kept, random, shuffled, sft), round by round."""

    arm: str
    comparison: str  # what the loop's lift over it measures, e.g. "selection"
    rounds: list[ArmRound] = field(default_factory=list)


@dataclass
class MethodCar:
    """CAR of one generation method in one round (orchestrator.budget): reward / (1 + beta * loss)."""

    method: str  # expand, targeted, rationales, rft
    produced: int  # responses the method produced this round
    kept: int  # of them, accepted by the critique / verification (the scored records)
    reward: float  # kept / produced
    loss: float  # mean response NLL of the kept records under the base student
    car: float


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
    # Critique drops by reason code ("copies_seed", "judge_wrong", "unparsable", ...).
    dropped: dict[str, int] = field(default_factory=dict)
    # Reasoning modes: {"rationales": {"written": n, "wrong": n, "failed": n, "kept": n}, "rft": {...}}.
    reasoning: dict[str, dict[str, int]] = field(default_factory=dict)
    # Candidates scored (kept examples + rationales + RFT records) and what selection dropped.
    candidates: int = 0
    selection_dropped: dict[str, int] = field(default_factory=dict)
    # The teacher adapter that generated this round (after tailoring), if any.
    teacher_adapter_uri: str = ""
    # ARTE after this round: DPO pairs the teacher trained on, or why it did not (no preference).
    tailor_pairs: int = 0
    tailor_skipped: str = ""
    # open_ended: against the base student's judged answers (1 win, 0.5 tie per item); None otherwise.
    win_rate: float | None = None
    # The critique's model steps: replies, parsed, retried, unparsable (CritiqueOutput.parsing).
    parsing: dict[str, dict[str, int]] = field(default_factory=dict)
    # CAR per generation method (with score.metrics compatibility), best first.
    car: list[MethodCar] = field(default_factory=list)
    # generate.budget car: the factor each mode's budget was multiplied by this round.
    budget: dict[str, float] = field(default_factory=dict)


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
    # The task's baseline arms, as far as they ran.
    baselines: list[BaselineResult] = field(default_factory=list)
    # Every step the job expects to run, in order (the plan; some may be skipped at run time).
    planned: list[PlannedStep] = field(default_factory=list)
    # When the current step started (workflow time, seconds since the epoch), and a note on it.
    step_started_at: float = 0.0
    step_note: str = ""
