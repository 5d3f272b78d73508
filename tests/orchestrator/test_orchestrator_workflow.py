"""DistillationWorkflow's own logic, with the activities replaced by fakes registered under the same
names (no services, no models): step order, progress query, timings, LoBaSS reference per round."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError, is_cancelled_exception
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from orchestrator.activity_io import (
    ArteSettings,
    CritiqueInput,
    CritiqueOutput,
    EvaluateInput,
    EvaluateOutput,
    FinishJobInput,
    FinishJobOutput,
    GenerateInput,
    GenerateOutput,
    PrepareJobInput,
    PrepareJobOutput,
    ReasonInput,
    ReasonOutput,
    ScoreInput,
    ScoreOutput,
    SelectInput,
    SelectOutput,
    StageResult,
    TailorInputsInput,
    TailorInputsOutput,
    TrainInput,
    TrainOutput,
)
from orchestrator.tailoring import (
    CrowdInput,
    CrowdOutput,
    DpoInput,
    DpoOutput,
    DraftInput,
    DraftOutput,
    PairsInput,
    PairsOutput,
    PreferenceInput,
    PreferenceOutput,
    TailorTeacherWorkflow,
)
from orchestrator.types import DistillationInput, JobProgress, LoopPlan, MethodCar
from orchestrator.worker import run_worker
from orchestrator.workflows import DistillationWorkflow
from syllabus.artifacts import ArtifactRef
from syllabus.config import Config

pytestmark = pytest.mark.integration  # a real Temporal dev server, fake activities

ROUND_STEPS = {"generate", "critique", "reference-train", "score", "select", "train", "evaluate"}


def ref(name: str) -> ArtifactRef:
    return ArtifactRef(uri=f"file:///fake/{name}", sha256=name.replace("/", "-"), size_bytes=1)


@dataclass
class FakeServices:
    """Fake activities; `empty_rounds` are rounds whose critique keeps nothing."""

    empty_rounds: frozenset[int] = frozenset()
    fail_generate: bool = False
    plan: LoopPlan = field(default_factory=LoopPlan)
    calls: list[tuple[str, object]] = field(default_factory=list)
    # Set by the fake evaluate of round 1, then it waits for `release` (to query mid-step).
    in_evaluate: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    # Round -> the CAR per method its score step reports.
    cars: dict[int, list[MethodCar]] = field(default_factory=dict)

    def activities(self) -> list:
        @activity.defn(name="prepare_job")
        async def prepare_job(inp: PrepareJobInput) -> PrepareJobOutput:
            self.calls.append(("prepare_job", inp))
            return PrepareJobOutput(ref("seeds"), ref("eval"), 4, 6, f"file:///fake/jobs/{inp.job_id}", ref("val"), self.plan)

        @activity.defn(name="evaluate_student")
        async def evaluate_student(inp: EvaluateInput) -> EvaluateOutput:
            self.calls.append(("evaluate_student", inp))
            if inp.round == 1:
                self.in_evaluate.set()
                while not self.release.is_set():  # a long step heartbeats, and so hears a cancel
                    activity.heartbeat()
                    await asyncio.sleep(0.1)
            return EvaluateOutput(0.1 * (inp.round + 1), inp.round + 1, 10, ref(f"pred-{inp.round}"))

        @activity.defn(name="generate_examples")
        async def generate_examples(inp: GenerateInput) -> GenerateOutput:
            self.calls.append(("generate_examples", inp))
            if self.fail_generate:
                raise ApplicationError("teacher says no", type="INVALID_ARGUMENT", non_retryable=True)
            return GenerateOutput(ref(f"gen-{inp.round}"), 8)

        @activity.defn(name="critique_examples")
        async def critique_examples(inp: CritiqueInput) -> CritiqueOutput:
            self.calls.append(("critique_examples", inp))
            kept = 0 if inp.round in self.empty_rounds else 6
            return CritiqueOutput(ref(f"kept-{inp.round}"), ref(f"crit-{inp.round}"), kept, 8 - kept)

        @activity.defn(name="critique_solutions")
        async def critique_solutions(inp: CritiqueInput) -> CritiqueOutput:
            self.calls.append(("critique_solutions", inp))
            return CritiqueOutput(ref(f"solutions-kept-{inp.round}"), ref(f"solution-crit-{inp.round}"), 5, 3, {"judge_wrong": 3}, 2)

        @activity.defn(name="train_adapter")
        async def train_adapter(inp: TrainInput) -> TrainOutput:
            self.calls.append(("train_adapter", inp))
            stages = [StageResult(name, 2, 0.5 + i) for i, name in enumerate(self.plan.stages)] if inp.stage == "recipe" else []
            return TrainOutput(ref(f"{inp.stage}-{inp.round}"), samples=7, steps=3, mean_loss=1.5 / inp.round, stages=stages)

        @activity.defn(name="reason_examples")
        async def reason_examples(inp: ReasonInput) -> ReasonOutput:
            self.calls.append(("reason_examples", inp))
            counts = {"written": 4, "wrong": 1, "failed": 1, "duplicate_paths": 0, "kept": 2}
            return ReasonOutput(ref(f"{inp.mode}-{inp.round}"), 8, counts)

        @activity.defn(name="score_samples")
        async def score_samples(inp: ScoreInput) -> ScoreOutput:
            self.calls.append(("score_samples", inp))
            return ScoreOutput(ref(f"scores-{inp.round}"), 6, car=self.cars.get(inp.round, []))

        @activity.defn(name="select_samples")
        async def select_samples(inp: SelectInput) -> SelectOutput:
            self.calls.append(("select_samples", inp))
            return SelectOutput(ref(f"train-{inp.round}"), selected=3, trained=7)

        @activity.defn(name="finish_job")
        async def finish_job(inp: FinishJobInput) -> FinishJobOutput:
            self.calls.append(("finish_job", inp))
            return FinishJobOutput(inp.status)

        return [
            prepare_job,
            evaluate_student,
            generate_examples,
            critique_examples,
            critique_solutions,
            reason_examples,
            train_adapter,
            score_samples,
            select_samples,
            finish_job,
        ]

    def inputs(self, name: str) -> list:
        return [inp for n, inp in self.calls if n == name]


async def test_workflow_runs_rounds_and_reports_progress(temporal_env: WorkflowEnvironment) -> None:
    fakes = FakeServices(empty_rounds=frozenset({2}))
    task_queue = f"test-{uuid.uuid4()}"
    inp = DistillationInput(
        job_id=f"job-{uuid.uuid4().hex[:8]}", task_ref=ref("task"), rounds=3
    )
    async with Worker(
        temporal_env.client,
        task_queue=task_queue,
        workflows=[DistillationWorkflow],
        activities=fakes.activities(),
    ):
        handle = await temporal_env.client.start_workflow(
            DistillationWorkflow.run, inp, id=inp.job_id, task_queue=task_queue
        )
        await asyncio.wait_for(fakes.in_evaluate.wait(), 30)
        mid = await handle.query(DistillationWorkflow.progress)
        assert isinstance(mid, JobProgress)
        assert (mid.job_id, mid.rounds_total, mid.current_round, mid.current_step) == (
            inp.job_id,
            3,
            1,
            "evaluate",
        )
        assert mid.baseline_accuracy == pytest.approx(0.1)
        assert mid.final_accuracy is None and mid.rounds == []
        assert mid.artifacts_uri == f"file:///fake/jobs/{inp.job_id}"
        fakes.release.set()
        result = await handle.result()
        # A completed workflow still answers the query (the gateway reads finished jobs this way).
        assert result == await handle.query(DistillationWorkflow.progress)

    assert result.current_step == ""
    assert [r.round for r in result.rounds] == [1, 2, 3]
    assert [r.accuracy for r in result.rounds] == pytest.approx([0.2, 0.3, 0.4])
    assert result.final_accuracy == pytest.approx(0.4)
    r1, r2, _ = result.rounds
    assert (r1.generated, r1.kept, r1.selected, r1.trained) == (8, 6, 3, 7)
    assert (r2.kept, r2.selected) == (0, 0)  # nothing kept: trained on the seeds only
    assert r1.adapter_uri == ref("sft-1").uri and r1.train_loss == pytest.approx(1.5)

    # Step timings: one entry per step run, named as the gateway expects, never negative.
    names = [(s.round, s.name) for s in result.steps]
    assert names[:2] == [(0, "prepare"), (0, "baseline-eval")]
    assert [n for r, n in names if r == 1] == [
        "generate",
        "critique",
        "reference-train",
        "score",
        "select",
        "train",
        "evaluate",
    ]
    assert [n for r, n in names if r == 2] == ["generate", "critique", "train", "evaluate"]
    assert [n for r, n in names if r == 3] == [
        "generate", "critique", "reference-train", "score", "select", "train", "evaluate",
    ]  # fmt: skip
    assert {n for _, n in names} <= ROUND_STEPS | {"prepare", "baseline-eval"}
    assert all(s.seconds >= 0 for s in result.steps)

    # Data flows by reference. LoBaSS in every round with candidates: a reference trained from the
    # current student on them; L0 under the current student, Lref under that reference. Training
    # continues from the previous round's adapter.
    trains = fakes.inputs("train_adapter")
    assert [(t.round, t.stage) for t in trains] == [(1, "reference"), (1, "sft"), (2, "sft"), (3, "reference"), (3, "sft")]
    assert trains[0].dataset == ref("kept-1") and trains[0].init_adapter is None
    assert trains[1].dataset == ref("train-1") and trains[1].init_adapter is None
    assert trains[2].dataset == ref("seeds") and trains[2].init_adapter == ref("sft-1")
    assert trains[3].dataset == ref("kept-3") and trains[3].init_adapter == ref("sft-2")
    assert trains[4].dataset == ref("train-3") and trains[4].init_adapter == ref("sft-2")
    scores = fakes.inputs("score_samples")
    assert [(s.reference, s.student) for s in scores] == [(ref("reference-1"), None), (ref("reference-3"), ref("sft-2"))]
    # The IRT crowd is the student's own checkpoints: every round's adapter, then this round's reference.
    assert scores[1].crowd == [ref("sft-1"), ref("sft-2"), ref("reference-3")]
    evals = fakes.inputs("evaluate_student")
    assert [(e.round, e.stage, e.adapter) for e in evals] == [
        (0, "baseline", None),
        (1, "sft", ref("sft-1")),
        (2, "sft", ref("sft-2")),
        (3, "sft", ref("sft-3")),
    ]
    assert evals[0].round_counts is None and evals[2].round_counts.kept == 0
    (finish,) = fakes.inputs("finish_job")
    assert (finish.status, finish.baseline_accuracy, finish.final_accuracy) == ("completed", 0.1, 0.4)



async def run_one_round(temporal_env: WorkflowEnvironment, plan: LoopPlan) -> tuple[FakeServices, JobProgress]:
    """A one-round job of `plan` on fake activities: (the fakes with their calls, the result)."""
    fakes = FakeServices(plan=plan)
    fakes.release.set()
    task_queue = f"test-{uuid.uuid4()}"
    inp = DistillationInput(job_id=f"job-{uuid.uuid4().hex[:8]}", task_ref=ref("task"), rounds=1)
    async with Worker(temporal_env.client, task_queue=task_queue, workflows=[DistillationWorkflow], activities=fakes.activities()):
        return fakes, await temporal_env.client.execute_workflow(DistillationWorkflow.run, inp, id=inp.job_id, task_queue=task_queue)


async def test_the_plan_turns_on_reasoning_modes_and_recipe_stages(temporal_env: WorkflowEnvironment) -> None:
    """The task's plan decides the steps: rationales then RFT after the critique, each feeding the
    next the candidates so far; a recipe trains once and reports one step per stage."""
    plan = LoopPlan(reasoning=["rationales", "rft"], metrics=["ifd"], stages=["easy", "hard"])
    fakes, result = await run_one_round(temporal_env, plan)

    names = [s.name for s in result.steps if s.round == 1]
    # No learnability scored: no reference adapter is trained.
    assert names == ["generate", "critique", "rationales", "rft", "score", "select", "train-stage-1", "train-stage-2", "evaluate"]
    assert [s.seconds for s in result.steps if s.name.startswith("train-stage")] == [0.5, 1.5]
    rationales, rft = fakes.inputs("reason_examples")
    assert (rationales.mode, rationales.candidates) == ("rationales", ref("kept-1"))
    assert (rft.mode, rft.candidates) == ("rft", ref("rationales-1"))
    (score,) = fakes.inputs("score_samples")
    assert score.dataset == ref("rft-1") and score.reference is None
    (train,) = fakes.inputs("train_adapter")
    assert (train.stage, train.dataset) == ("recipe", ref("train-1"))
    (r1,) = result.rounds
    assert r1.reasoning["rationales"] == {"written": 4, "wrong": 1, "failed": 1, "duplicate_paths": 0, "kept": 2}
    assert r1.candidates == 8


async def test_an_answer_kind_critiques_its_solutions_after_the_reasoning_steps(temporal_env: WorkflowEnvironment) -> None:
    """numeric/exact_answer/open_ended with a model critique: the rules vet the questions, then the
    model mode reads what the reasoning steps verified; its keep (and cft records) are the candidates."""
    plan = LoopPlan(reasoning=["rationales", "rft"], metrics=["ifd"], critique="cft", answers_by_reasoning=True)
    fakes, result = await run_one_round(temporal_env, plan)

    names = [s.name for s in result.steps if s.round == 1]
    assert names == ["generate", "critique", "rationales", "rft", "critique-solutions", "score", "select", "train", "evaluate"]
    (crit,) = fakes.inputs("critique_solutions")
    assert crit.examples == ref("rft-1")
    (score,) = fakes.inputs("score_samples")
    assert score.dataset == ref("solutions-kept-1")
    (r1,) = result.rounds
    assert r1.candidates == 5 + 2 and r1.dropped == {"judge_wrong": 3}


def tailoring_fakes(calls: list) -> list:
    """Fake ARTE steps (and their inputs step): the DPO adapter of round r is "teacher-dpo-r"."""

    @activity.defn(name="tailor_inputs")
    async def tailor_inputs(inp: TailorInputsInput) -> TailorInputsOutput:
        calls.append(("tailor_inputs", inp))
        return TailorInputsOutput(ref(f"questions-{inp.round}"), ref(f"probe-{inp.round}"), ArteSettings())

    @activity.defn(name="draft_rationales")
    async def draft_rationales(inp: DraftInput) -> DraftOutput:
        calls.append(("draft_rationales", inp))
        return DraftOutput(ref("drafts"), ref("demos"), 4, 0)

    @activity.defn(name="crowd_responses")
    async def crowd_responses(inp: CrowdInput) -> CrowdOutput:
        calls.append(("crowd_responses", inp))
        return CrowdOutput(ref(f"crowd-{inp.round}"), len(inp.predictions))

    @activity.defn(name="score_preference")
    async def score_preference(inp: PreferenceInput) -> PreferenceOutput:
        calls.append(("score_preference", inp))
        return PreferenceOutput(ref("pref"), 4)

    @activity.defn(name="build_pairs")
    async def build_pairs(inp: PairsInput) -> PairsOutput:
        return PairsOutput(ref("pairs"), 1, 2)

    @activity.defn(name="train_teacher_dpo")
    async def train_teacher_dpo(inp: DpoInput) -> DpoOutput:
        calls.append(("train_teacher_dpo", inp))
        return DpoOutput(ref(f"teacher-dpo-{inp.round}"), 3, 0.6)

    return [tailor_inputs, draft_rationales, crowd_responses, score_preference, build_pairs, train_teacher_dpo]


async def test_tailoring_aligns_the_teacher_that_generates_the_later_rounds(temporal_env: WorkflowEnvironment) -> None:
    """tailor.every 1 over 3 rounds: ARTE after rounds 1 and 2 (never after the last), each aligning
    the current teacher to the current student; rounds 2 and 3 generate and critique with it."""
    fakes = FakeServices(plan=LoopPlan(tailor_every=1))
    fakes.release.set()
    task_queue = f"test-{uuid.uuid4()}"
    inp = DistillationInput(job_id=f"job-{uuid.uuid4().hex[:8]}", task_ref=ref("task"), rounds=3)
    async with Worker(temporal_env.client, task_queue=task_queue, workflows=[DistillationWorkflow, TailorTeacherWorkflow],
                      activities=fakes.activities() + tailoring_fakes(fakes.calls)):  # fmt: skip
        result = await temporal_env.client.execute_workflow(DistillationWorkflow.run, inp, id=inp.job_id, task_queue=task_queue)

    assert [s.round for s in result.steps if s.name == "tailor"] == [1, 2]
    assert [g.teacher_adapter for g in fakes.inputs("generate_examples")] == [None, ref("teacher-dpo-1"), ref("teacher-dpo-2")]
    assert [c.teacher_adapter for c in fakes.inputs("critique_examples")] == [None, ref("teacher-dpo-1"), ref("teacher-dpo-2")]
    # CITING revises the answers of the student as it stands: the base student, then each round's adapter.
    assert [c.student_adapter for c in fakes.inputs("critique_examples")] == [None, ref("sft-1"), ref("sft-2")]
    dpo = fakes.inputs("train_teacher_dpo")
    assert [d.teacher_adapter for d in dpo] == [None, ref("teacher-dpo-1")]  # each tailoring continues the last
    prefs = fakes.inputs("score_preference")
    assert [p.student_adapter for p in prefs] == [ref("sft-1"), ref("sft-2")]  # aligned to the current student
    # Dpref's 2PL crowd: the base student and every round's adapter so far, on the validation split.
    crowd = [(e.round, e.adapter, e.stage) for e in fakes.inputs("evaluate_student") if e.stage.startswith("arte-crowd")]
    assert crowd == [(1, None, "arte-crowd"), (1, ref("sft-1"), "arte-crowd-sft-1"), (2, None, "arte-crowd"),
                     (2, ref("sft-1"), "arte-crowd-sft-1"), (2, ref("sft-2"), "arte-crowd-sft-2")]  # fmt: skip
    assert all(e.eval_set == ref("val") for e in fakes.inputs("evaluate_student") if e.stage.startswith("arte-crowd"))
    assert [p.probe_responses for p in prefs] == [ref("crowd-1"), ref("crowd-2")]
    assert [r.teacher_adapter_uri for r in result.rounds] == ["", ref("teacher-dpo-1").uri, ref("teacher-dpo-2").uri]
    assert [r.tailor_pairs for r in result.rounds] == [3, 3, 0]


async def test_car_per_method_is_reported_and_sizes_the_next_rounds_budget(temporal_env: WorkflowEnvironment) -> None:
    """generate.budget car: round 1's CAR (expand 0.25, rationales 0.75; factors 2 * CAR / 1.0 = 0.5 and
    1.5) sizes round 2's expand and rationales; round 2 reports no CAR, so round 3 keeps those factors.
    The score step is told what each method produced (expand: the 8 generated, rationales: 4 written)."""
    fakes = FakeServices(plan=LoopPlan(reasoning=["rationales"], budget_by_car=True))
    fakes.release.set()
    fakes.cars[1] = [MethodCar("rationales", 4, 3, 0.75, 0.0, 0.75), MethodCar("expand", 8, 2, 0.25, 0.0, 0.25)]
    task_queue = f"test-{uuid.uuid4()}"
    inp = DistillationInput(job_id=f"job-{uuid.uuid4().hex[:8]}", task_ref=ref("task"), rounds=3)
    async with Worker(temporal_env.client, task_queue=task_queue, workflows=[DistillationWorkflow], activities=fakes.activities()):
        result = await temporal_env.client.execute_workflow(DistillationWorkflow.run, inp, id=inp.job_id, task_queue=task_queue)

    assert [s.produced for s in fakes.inputs("score_samples")] == [{"expand": 8, "targeted": 0, "rationales": 4}] * 3
    assert [g.budget for g in fakes.inputs("generate_examples")] == [{}, {"expand": 0.5}, {"expand": 0.5}]
    assert [r.budget_scale for r in fakes.inputs("reason_examples")] == [1.0, 1.5, 1.5]
    assert result.rounds[0].car == fakes.cars[1] and result.rounds[1].car == []
    assert [r.budget for r in result.rounds] == [{}, {"rationales": 1.5, "expand": 0.5}, {"rationales": 1.5, "expand": 0.5}]


async def test_workflow_failure_marks_the_job_failed(temporal_env: WorkflowEnvironment) -> None:
    fakes = FakeServices(fail_generate=True)
    task_queue = f"test-{uuid.uuid4()}"
    inp = DistillationInput(
        job_id=f"job-{uuid.uuid4().hex[:8]}", task_ref=ref("task"), rounds=2
    )
    async with Worker(
        temporal_env.client,
        task_queue=task_queue,
        workflows=[DistillationWorkflow],
        activities=fakes.activities(),
    ):
        with pytest.raises(WorkflowFailureError) as failure:
            await temporal_env.client.execute_workflow(
                DistillationWorkflow.run, inp, id=inp.job_id, task_queue=task_queue
            )
    cause = failure.value.cause.cause
    assert isinstance(cause, ApplicationError) and cause.type == "INVALID_ARGUMENT"
    assert len(fakes.inputs("generate_examples")) == 1  # non-retryable: tried once
    (finish,) = fakes.inputs("finish_job")
    assert finish.status == "failed" and finish.final_accuracy is None


async def test_cancelled_workflow_marks_the_job_cancelled(temporal_env: WorkflowEnvironment) -> None:
    fakes = FakeServices()
    task_queue = f"test-{uuid.uuid4()}"
    inp = DistillationInput(
        job_id=f"job-{uuid.uuid4().hex[:8]}", task_ref=ref("task"), rounds=2
    )
    async with Worker(
        temporal_env.client,
        task_queue=task_queue,
        workflows=[DistillationWorkflow],
        activities=fakes.activities(),
    ):
        handle = await temporal_env.client.start_workflow(
            DistillationWorkflow.run, inp, id=inp.job_id, task_queue=task_queue
        )
        await asyncio.wait_for(fakes.in_evaluate.wait(), 30)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        fakes.release.set()  # let the abandoned fake activity end so the worker can shut down
    assert is_cancelled_exception(failure.value.cause)
    (finish,) = fakes.inputs("finish_job")
    assert finish.status == "cancelled" and finish.baseline_accuracy == pytest.approx(0.1)


async def test_run_worker_polls_the_configured_queue_until_stopped(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    config = Config(
        home=tmp_path,
        temporal_address=temporal_env.client.service_client.config.target_host,
        task_queue=f"test-{uuid.uuid4()}",
    )
    stop = asyncio.Event()
    running = asyncio.create_task(run_worker(config, stop))
    request = DescribeTaskQueueRequest(
        namespace=config.temporal_namespace,
        task_queue=TaskQueue(name=config.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    try:
        async with asyncio.timeout(30):
            while not (await temporal_env.client.workflow_service.describe_task_queue(request)).pollers:
                assert not running.done(), running.exception()
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
