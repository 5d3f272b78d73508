"""The loop with baseline arms, its activities replaced by fakes registered under the same names: each
arm is a child workflow per round that trains beside the loop, chains its own adapters across rounds
(per repeat), and is compared with the loop after the loop's evaluation."""

from __future__ import annotations

import uuid

import pytest
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from orchestrator.activity_io import (
    ArmLift,
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
    PrepareJobInput,
    PrepareJobOutput,
    ScoreInput,
    ScoreOutput,
    SelectInput,
    SelectOutput,
    TrainInput,
    TrainOutput,
)
from orchestrator.baselines import ArmSetInput, ArmSetOutput, BaselineArmWorkflow
from orchestrator.types import DistillationInput, LoopPlan, PlannedStep
from orchestrator.workflows import DistillationWorkflow
from syllabus.artifacts import ArtifactRef
from syllabus.baselines import arm_stage

pytestmark = pytest.mark.integration  # a real Temporal dev server, fake activities


def ref(name: str) -> ArtifactRef:
    return ArtifactRef(uri=f"file:///fake/{name}", sha256=name.replace("/", "-"), size_bytes=1)


def fakes(plan: LoopPlan, calls: list) -> list:
    @activity.defn(name="prepare_job")
    async def prepare_job(inp: PrepareJobInput) -> PrepareJobOutput:
        return PrepareJobOutput(ref("seeds"), ref("eval"), 4, 6, "file:///fake/jobs/x/", ref("val"), plan)

    @activity.defn(name="evaluate_student")
    async def evaluate_student(inp: EvaluateInput) -> EvaluateOutput:
        calls.append(("evaluate_student", inp))
        accuracy = 0.5 if inp.stage == "sft" else 0.25 if inp.stage.startswith("baseline-") else 0.1
        return EvaluateOutput(accuracy, 1, 4, ref(f"pred-{inp.stage}-{inp.round}"))

    @activity.defn(name="generate_examples")
    async def generate_examples(inp: GenerateInput) -> GenerateOutput:
        return GenerateOutput(ref(f"gen-{inp.round}"), 8)

    @activity.defn(name="critique_examples")
    async def critique_examples(inp: CritiqueInput) -> CritiqueOutput:
        return CritiqueOutput(ref(f"kept-{inp.round}"), ref(f"crit-{inp.round}"), 6, 2)

    @activity.defn(name="train_adapter")
    async def train_adapter(inp: TrainInput) -> TrainOutput:
        calls.append(("train_adapter", inp))
        name = arm_stage(inp.arm, inp.repeat) if inp.arm else inp.stage
        return TrainOutput(ref(f"{name}-{inp.round}"), samples=5 if inp.arm else 7, steps=3, mean_loss=1.0)

    @activity.defn(name="score_samples")
    async def score_samples(inp: ScoreInput) -> ScoreOutput:
        return ScoreOutput(ref(f"scores-{inp.round}"), 6)

    @activity.defn(name="select_samples")
    async def select_samples(inp: SelectInput) -> SelectOutput:
        return SelectOutput(ref(f"train-{inp.round}"), selected=3, trained=7)

    @activity.defn(name="finish_job")
    async def finish_job(inp: FinishJobInput) -> FinishJobOutput:
        return FinishJobOutput(inp.status)

    @activity.defn(name="arm_train_set")
    async def arm_train_set(inp: ArmSetInput) -> ArmSetOutput:
        calls.append(("arm_train_set", inp))
        return ArmSetOutput(ref(f"set-{inp.arm}-{inp.repeat}-{inp.round}"), 5)

    @activity.defn(name="compare_baselines")
    async def compare_baselines(inp: CompareInput) -> CompareOutput:
        calls.append(("compare_baselines", inp))
        return CompareOutput({arm: ArmLift(0.25, -0.1, 0.6, 4, f"{arm}: +25.0 points [-10.0, +60.0], not significant") for arm in inp.arms})

    return [prepare_job, evaluate_student, generate_examples, critique_examples, train_adapter, score_samples,
            select_samples, finish_job, arm_train_set, compare_baselines]  # fmt: skip


def inputs(calls: list, name: str) -> list:
    return [inp for n, inp in calls if n == name]


async def test_arms_train_beside_the_loop_in_chains_of_their_own_and_are_compared(temporal_env: WorkflowEnvironment) -> None:
    plan = LoopPlan(baselines=["seeds_only", "random"], baseline_repeats=2)
    calls: list = []
    task_queue = f"test-{uuid.uuid4()}"
    inp = DistillationInput(job_id=f"job-{uuid.uuid4().hex[:8]}", task_ref=ref("task"), rounds=2)
    async with Worker(temporal_env.client, task_queue=task_queue, workflows=[DistillationWorkflow, BaselineArmWorkflow],
                      activities=fakes(plan, calls)):  # fmt: skip
        result = await temporal_env.client.execute_workflow(DistillationWorkflow.run, inp, id=inp.job_id, task_queue=task_queue)

    # Each arm's sets come from the loop's round: its training set, candidates, scores and selection size.
    sets = inputs(calls, "arm_train_set")
    assert sorted((s.round, s.arm, s.repeat) for s in sets) == [(r, a, k) for r in (1, 2) for a in ("random", "seeds_only") for k in (0, 1)]
    assert all((s.train_set, s.candidates, s.scores, s.selected) == (ref(f"train-{s.round}"), ref(f"kept-{s.round}"),
               ref(f"scores-{s.round}"), 3) for s in sets)  # fmt: skip
    # Arms train with the loop's training (sft), each repeat from its own previous-round adapter.
    arm_trains = {(t.round, t.arm, t.repeat): t for t in inputs(calls, "train_adapter") if t.arm}
    assert len(arm_trains) == 8 and all(t.stage == "sft" for t in arm_trains.values())
    assert arm_trains[(1, "random", 1)].init_adapter is None
    assert arm_trains[(2, "random", 1)].init_adapter == ref("baseline-random-2-1")
    assert arm_trains[(2, "seeds_only", 0)].init_adapter == ref("baseline-seeds_only-1")
    assert arm_trains[(2, "seeds_only", 0)].dataset == ref("set-seeds_only-0-2")
    loop_trains = [t for t in inputs(calls, "train_adapter") if not t.arm and t.stage == "sft"]
    assert [t.init_adapter for t in loop_trains] == [None, ref("sft-1")]  # the loop's own chain is untouched
    # Arms evaluate on the loop's eval set under their own stage names.
    arm_evals = {(e.round, e.stage) for e in inputs(calls, "evaluate_student") if e.stage.startswith("baseline-")}
    assert arm_evals == {(r, arm_stage(a, k)) for r in (1, 2) for a in ("seeds_only", "random") for k in (0, 1)}
    assert all(e.eval_set == ref("eval") for e in inputs(calls, "evaluate_student"))
    # The comparison pairs the loop's predictions of the round with every repeat's.
    compares = inputs(calls, "compare_baselines")
    assert [c.loop_predictions for c in compares] == [ref("pred-sft-1"), ref("pred-sft-2")]
    assert compares[1].arms["random"] == [ref("pred-baseline-random-2"), ref("pred-baseline-random-2-2")]

    assert [(b.arm, b.comparison) for b in result.baselines] == [("seeds_only", "generated data"), ("random", "selection vs random")]
    for b in result.baselines:
        assert [r.round for r in b.rounds] == [1, 2]
        for r in b.rounds:
            assert [run.repeat for run in r.runs] == [0, 1] and [run.accuracy for run in r.runs] == [0.25, 0.25]
            assert (r.lift, r.ci_low, r.ci_high) == (0.25, -0.1, 0.6) and r.verdict.startswith(f"{b.arm}: +25.0 points")
    # The wait for the arms is a step of its own, after the loop's evaluation; the plan lists it.
    names = [s.name for s in result.steps if s.round == 1]
    assert names[names.index("evaluate") + 1] == "baselines"
    assert PlannedStep("baselines", 2) in result.planned and result.step_started_at > 0
    assert [r.accuracy for r in result.rounds] == [0.5, 0.5]
