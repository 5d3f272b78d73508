"""TailorTeacherWorkflow: ARTE (arXiv 2406.19227) as orchestrated steps, a child workflow of the loop.

    drafts (teacher Generate, rationales mode)
        -> the crowd's answers on the validation bank (student Evaluate: the base student and each
           round's adapter so far) -> Dpref = the probe_k most discriminative items under 2PL IRT
        -> preference on Dpref (student Score, METRIC_ARTE_PREFERENCE, graded against the gold answers)
        -> question- and rationale-level pairs (teacher Tailor)
        -> DPO on the teacher (trainer StartTraining, OBJECTIVE_DPO) -> the teacher adapter

The paper fits its 2PL model on several small models' correctness; here the crowd is the student
itself at its base and at every round's adapter (the checkpoints the loop has, no extra model to
load). With no adapter yet (a crowd of one, which never happens in the loop: it tailors after a
round) there is nothing to fit and Dpref is the bank's first probe_k items.

The services never call each other: each step is one activity in `orchestrator.activities.tailoring`
that calls one service, and data moves between them as `ArtifactRef`s. The aligned teacher is the
task's teacher base plus the returned adapter (`ModelRef.adapter`); regenerating with it is a plain
Generate call of the caller's next step.

Run it as a child workflow (`workflow.execute_child_workflow(TailorTeacherWorkflow.run, inp)`) or on
its own; `orchestrator.worker` registers it and its activities.

Its types, its activities' declarations and the workflow live here; the implementations in
`orchestrator.activities.tailoring` (typed clients, one error mapping, `_train` for a watched
training run, with the rest of the loop's activities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow

# The main loop's timeouts and retry policy: transient failures retry for about 5 minutes, bad input fails at once.
from orchestrator.policies import RETRY, START_TO_CLOSE

with workflow.unsafe.imports_passed_through():
    from orchestrator import calls
    from orchestrator.activity_io import ArteSettings, EvaluateInput
    from orchestrator.scores import crowd_stage
    from syllabus.artifacts import ArtifactRef



@dataclass
class TailorTeacherInput:
    """Input of TailorTeacherWorkflow."""

    job_id: str
    # The task spec (teacher, student, instructions, labels, kind).
    task_ref: ArtifactRef
    round: int
    # Draft questions: JSONL with "id", "input" (or "question"), the gold "label" (or "answer"), and
    # optionally "prompt" + "completion" (the generation prompt and the teacher's reply that made the
    # question; with them Tailor also builds question-level pairs).
    questions: ArtifactRef
    # The validation bank Dpref is chosen from: JSONL with "id", "prompt" (the student's prompt) and
    # "answer" (gold). Never the eval split.
    probe_set: ArtifactRef
    # The current student (base = the task's student model); None: the base student.
    student_adapter: ArtifactRef | None = None
    # The teacher to align (base = the task's teacher model); None: the base teacher.
    teacher_adapter: ArtifactRef | None = None
    settings: ArteSettings = field(default_factory=ArteSettings)
    heartbeat_timeout_s: float = 120.0
    # The validation split (eval-set JSONL: "id", "input", "label", "prompt") the crowd answers,
    # the bank's items by id; None: no 2PL selection.
    validation: ArtifactRef | None = None
    # The IRT crowd beside the base student: the student's adapters so far (each round's).
    crowd: list[ArtifactRef] = field(default_factory=list)


@dataclass
class CrowdInput:
    job_id: str
    round: int
    # Each crowd member's predictions on the validation split ("id", "correct"), the base first.
    predictions: list[ArtifactRef]


@dataclass
class CrowdOutput:
    # ArteSettings.probe_responses: "item_id", "subject", "correct" per member and item.
    responses: ArtifactRef
    members: int


@dataclass
class DraftInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    questions: ArtifactRef
    teacher_adapter: ArtifactRef | None
    settings: ArteSettings


@dataclass
class DraftOutput:
    # Tailor's drafts: one record per rationale ("id", "question_id", "question", "rationale",
    # "answer", optional "prompt" + "completion").
    drafts: ArtifactRef
    # The student's demonstrations, one per draft: "id", "question_id", "prompt", "response".
    demos: ArtifactRef
    rationales: int
    # Of `rationales`, replies without an "Answer:" line (kept: the raw reply is the rationale).
    failed: int


@dataclass
class PreferenceInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    demos: ArtifactRef
    probe_set: ArtifactRef
    student_adapter: ArtifactRef | None
    settings: ArteSettings
    # The crowd's answers on the bank: Dpref = the probe_k most discriminative items (2PL); None:
    # the bank's first probe_k items.
    probe_responses: ArtifactRef | None = None


@dataclass
class PreferenceOutput:
    # Rows "id", "question_id", "arte_s_r", "arte_s_q".
    scores: ArtifactRef
    count: int


@dataclass
class PairsInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    drafts: ArtifactRef
    scores: ArtifactRef


@dataclass
class PairsOutput:
    # DPO records "prompt", "chosen", "rejected", "level", "margin", "question_id"; None: no pair.
    pairs: ArtifactRef | None
    question_pairs: int
    rationale_pairs: int
    skipped: str = ""  # why there is no pair (the teacher's FAILED_PRECONDITION message)


@dataclass
class DpoInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    pairs: ArtifactRef
    teacher_adapter: ArtifactRef | None
    settings: ArteSettings


@dataclass
class DpoOutput:
    adapter: ArtifactRef
    steps: int
    mean_loss: float


@dataclass
class TailorTeacherOutput:
    """The aligned teacher (the task's teacher base + `adapter`) and what each step produced. With no
    preference pair to train on, `adapter` is the teacher given (None: the base) and `skipped` says why."""

    adapter: ArtifactRef | None
    pairs: ArtifactRef | None
    question_pairs: int
    rationale_pairs: int
    drafts: ArtifactRef
    scores: ArtifactRef
    dpo_steps: int
    dpo_mean_loss: float
    skipped: str = ""


# -- the activities this flow declares (its types live here; implemented in orchestrator.activities) --


@activity.defn(name="draft_rationales")
async def draft_rationales(inp: DraftInput) -> DraftOutput:
    """TeacherService.Generate (rationales mode): one rationale per (question, style); writes
    Tailor's drafts and the student's one-shot demonstrations (answer first, so the student's greedy
    answer starts with the label it copies) (`TailoringActivities.draft_rationales`)."""
    raise NotImplementedError(calls.DECLARATION)


@activity.defn(name="score_preference")
async def score_preference(inp: PreferenceInput) -> PreferenceOutput:
    """StudentService.Score (METRIC_ARTE_PREFERENCE): s_r per demonstration on Dpref
    (`TailoringActivities.score_preference`)."""
    raise NotImplementedError(calls.DECLARATION)


@activity.defn(name="crowd_responses")
async def crowd_responses(inp: CrowdInput) -> CrowdOutput:
    """The crowd's right/wrong on the validation bank as ArteSettings.probe_responses rows
    (`TailoringActivities.crowd_responses`)."""
    raise NotImplementedError(calls.DECLARATION)


@activity.defn(name="build_pairs")
async def build_pairs(inp: PairsInput) -> PairsOutput:
    """TeacherService.Tailor: the question- and rationale-level DPO pairs
    (`TailoringActivities.build_pairs`)."""
    raise NotImplementedError(calls.DECLARATION)


@activity.defn(name="train_teacher_dpo")
async def train_teacher_dpo(inp: DpoInput) -> DpoOutput:
    """TrainerService.StartTraining (OBJECTIVE_DPO) on the teacher + WatchTraining to completion
    (`TailoringActivities.train_teacher_dpo`)."""
    raise NotImplementedError(calls.DECLARATION)


@workflow.defn
class TailorTeacherWorkflow:
    """Align the task's teacher to the current student (ARTE); returns the teacher adapter."""

    @workflow.run
    async def run(self, inp: TailorTeacherInput) -> TailorTeacherOutput:
        s = inp.settings
        opts = {
            "start_to_close_timeout": START_TO_CLOSE,
            "heartbeat_timeout": timedelta(seconds=inp.heartbeat_timeout_s),
            "retry_policy": RETRY,
        }
        drafted = await workflow.execute_activity(
            draft_rationales,
            DraftInput(inp.job_id, inp.task_ref, inp.round, inp.questions, inp.teacher_adapter, s),
            **opts,
        )
        responses = None
        if inp.validation is not None and inp.crowd:
            members = [None, *inp.crowd]  # the base student, then each round's adapter
            answered = []
            for m in members:
                answered.append(
                    await workflow.execute_activity(
                        calls.evaluate_student,
                        EvaluateInput(inp.job_id, inp.task_ref, inp.round, crowd_stage(m), inp.validation, adapter=m),
                        **opts,
                    )
                )
            crowd = await workflow.execute_activity(
                crowd_responses,
                CrowdInput(inp.job_id, inp.round, [a.predictions for a in answered]),
                **opts,
            )
            responses = crowd.responses
        preference = await workflow.execute_activity(
            score_preference,
            PreferenceInput(inp.job_id, inp.task_ref, inp.round, drafted.demos, inp.probe_set, inp.student_adapter, s,
                            responses),
            **opts,
        )
        pairs = await workflow.execute_activity(
            build_pairs,
            PairsInput(inp.job_id, inp.task_ref, inp.round, drafted.drafts, preference.scores),
            **opts,
        )
        if pairs.pairs is None:
            return TailorTeacherOutput(
                adapter=inp.teacher_adapter, pairs=None, question_pairs=0, rationale_pairs=0, drafts=drafted.drafts,
                scores=preference.scores, dpo_steps=0, dpo_mean_loss=0.0, skipped=pairs.skipped,
            )  # fmt: skip
        dpo = await workflow.execute_activity(
            train_teacher_dpo,
            DpoInput(inp.job_id, inp.task_ref, inp.round, pairs.pairs, inp.teacher_adapter, s),
            **opts,
        )
        return TailorTeacherOutput(
            adapter=dpo.adapter,
            pairs=pairs.pairs,
            question_pairs=pairs.question_pairs,
            rationale_pairs=pairs.rationale_pairs,
            drafts=drafted.drafts,
            scores=preference.scores,
            dpo_steps=dpo.steps,
            dpo_mean_loss=dpo.mean_loss,
        )
