"""The activities as the workflows call them: each one's name and typed input and output, no body.

The workflows (`orchestrator.workflows`, and the child flows' own declarations in
`orchestrator.baselines` and `orchestrator.tailoring`, whose types live there) run an activity as
`workflow.execute_activity(calls.train_adapter, TrainInput(...))`; the worker registers the
implementations of `orchestrator.activities` under the same names. So a workflow module imports no
grpc, SQLAlchemy or torch (the house rule, tests/orchestrator/test_calls.py), and the test also
checks every declaration against its implementation: the same name, input and output types.
"""

from __future__ import annotations

from temporalio import activity

from orchestrator.activity_io import (
    AnalyzeInput,
    AnalyzeOutput,
    CompareInput,
    CompareOutput,
    CritiqueInput,
    CritiqueOutput,
    EvaluateInput,
    EvaluateOutput,
    FinishJobInput,
    FinishJobOutput,
    GenerateInput,
    GenerateOutput,
    LogprobsInput,
    LogprobsOutput,
    PrepareJobInput,
    PrepareJobOutput,
    ReasonInput,
    ReasonOutput,
    SampleInput,
    SampleOutput,
    ScoreInput,
    ScoreOutput,
    SelectInput,
    SelectOutput,
    TailorInputsInput,
    TailorInputsOutput,
    TrainInput,
    TrainOutput,
)
from orchestrator.judging import JudgeInput, JudgeOutput

#: What a declaration raises if called: the worker runs `orchestrator.activities`, never these.
DECLARATION = "an activity declaration: the worker runs the implementation in orchestrator.activities"


@activity.defn(name="prepare_job")
async def prepare_job(inp: PrepareJobInput) -> PrepareJobOutput:
    """Write the seed, eval and validation sets as JSONL and record their samples
    (`DataActivities.prepare_job`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="tailor_inputs")
async def tailor_inputs(inp: TailorInputsInput) -> TailorInputsOutput:
    """ARTE's inputs: draft questions (this round's generated questions, then the seeds, up to
    tailor.questions) and the validation bank the student's probe set Dpref is chosen from (the
    tailor.probe_k most discriminative items, chosen by the StudentService)
    (`DataActivities.tailor_inputs`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="finish_job")
async def finish_job(inp: FinishJobInput) -> FinishJobOutput:
    """Mark the job's row completed / failed / cancelled with its accuracies
    (`DataActivities.finish_job`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="sample_student")
async def sample_student(inp: SampleInput) -> SampleOutput:
    """StudentService.Sample: the current student's own completions of the training set's prompts
    (an opd chunk); held-out records are left out (`StudentActivities.sample_student`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="evaluate_student")
async def evaluate_student(inp: EvaluateInput) -> EvaluateOutput:
    """StudentService.Evaluate on the eval set; records the evaluation, and the round's row when
    `round_counts` is given (a round's final evaluation) (`StudentActivities.evaluate_student`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="score_samples")
async def score_samples(inp: ScoreInput) -> ScoreOutput:
    """StudentService.Score: the task's `score.metrics` on the round's candidates and the seeds
    (and, for a PUDF recipe, the held-out validation items); one scores artifact with every column,
    its percentile rank ("<column>_pct") and the curriculum difficulties; records scores
    (`StudentActivities.score_samples`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="select_samples")
async def select_samples(inp: SelectInput) -> SelectOutput:
    """Select the candidates that train (the task's `select`), and write the training set: the
    selected candidates by rank, then the seeds, then any held-out records, each carrying its score
    columns and category (what a recipe's stage filters and curricula read)
    (`StudentActivities.select_samples`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="generate_examples")
async def generate_examples(inp: GenerateInput) -> GenerateOutput:
    """TeacherService.Generate: seed expansion (`expand`) and, with skills from the previous round,
    targeted generation, as one examples artifact; records the samples
    (`TeacherActivities.generate_examples`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="analyze_errors")
async def analyze_errors(inp: AnalyzeInput) -> AnalyzeOutput:
    """TeacherService.AnalyzeErrors: name the student's confusions on the validation split
    (`TeacherActivities.analyze_errors`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="teacher_logprobs")
async def teacher_logprobs(inp: LogprobsInput) -> LogprobsOutput:
    """TeacherService.TopLogprobs: the teacher's top-k at every response token of a training set,
    for the recipe's kd stages (content-addressed by the teacher: a retry or a rerun finds them)
    (`TeacherActivities.teacher_logprobs`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="critique_examples")
async def critique_examples(inp: CritiqueInput) -> CritiqueOutput:
    """TeacherService.Critique: the rule filter, then (judge, cft, rubric, reflection) the teacher
    model on what the rules kept; records one critique per example and the repaired samples
    (`TeacherActivities.critique_examples`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="critique_solutions")
async def critique_solutions(inp: CritiqueInput) -> CritiqueOutput:
    """An answer kind's model-based critique (judge, cft, rubric) of its verified solutions, the
    rationale and RFT candidates (`inp.examples`), after the reasoning steps
    (`TeacherActivities.critique_solutions`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="reason_examples")
async def reason_examples(inp: ReasonInput) -> ReasonOutput:
    """TeacherService.Generate in RATIONALES or REJECTION_SAMPLING mode on the seeds and the kept
    examples: rationales whose final answer is not the example's label are dropped (Fine-tune-CoT),
    RFT keeps verified samples on distinct reasoning paths (`TeacherActivities.reason_examples`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="train_adapter")
async def train_adapter(inp: TrainInput) -> TrainOutput:
    """TrainerService.StartTraining + WatchTraining: the LoBaSS reference, agreement's judge, the
    round's SFT stage, or the task's staged recipe (Chain of LoRA, curricula, replay, HFT,
    checkpoint averaging) as one checkpointed run; records the training run
    (`TrainerActivities.train_adapter`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="compare_baselines")
async def compare_baselines(inp: CompareInput) -> CompareOutput:
    """The loop's lift over each arm in this round: paired over eval items, pooled over the arm's
    repeats, with the percentile-bootstrap 95% interval (`syllabus.stats`)
    (`BaselineActivities.compare_baselines`)."""
    raise NotImplementedError(DECLARATION)


@activity.defn(name="judge_answers")
async def judge_answers(inp: JudgeInput) -> JudgeOutput:
    """TeacherService.Critique (CFT judge) on the student's answers; records the Evaluation
    (`JudgingActivities.judge_answers`)."""
    raise NotImplementedError(DECLARATION)
