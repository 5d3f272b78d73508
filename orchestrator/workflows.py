"""DistillationWorkflow: the durable distillation loop.

    prepare (datasets + the task's LoopPlan) [-> distill-check] -> baseline-eval -> for each round:
        generate (expand, targeted) -> critique -> rationales -> rft
        [-> critique-solutions (an answer kind's judge, cft or rubric on the verified rationales)]
        -> reference-train (LoBaSS) [-> agreement-train (round 1)] -> score -> select
        -> train (one SFT stage) | [teacher-logprobs (kd stages) ->] train-stage-1..N (the task's
           recipe, one checkpointed run) | (sample -> teacher-logprobs -> train) x chunks (opd)
        -> evaluate [-> validation-eval -> analyze (targeted generation next round)]
        [-> baselines (the task's counterfactual arms, child workflows that train while the loop
            trains; then the loop's lift over each with a bootstrap CI)]
        [-> tailor (ARTE child workflow: later rounds generate with the aligned teacher)]

Deterministic logic only; every step with I/O is an activity in `orchestrator.activities`, and data
moves between steps as `ArtifactRef`s. Which steps run is the task's `LoopPlan`, returned by the
prepare activity, so the choices are in the workflow's history. Learnability needs a reference
adapter (LoBaSS): each round trains a brief one from the current student on the round's
candidates. A round without candidates trains on the seeds alone.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from orchestrator import calls, search
    from orchestrator.activity_io import (
        AnalyzeInput,
        CompareInput,
        CritiqueInput,
        EvaluateInput,
        EvaluateOutput,
        FinishJobInput,
        GenerateInput,
        LogprobsInput,
        PrepareJobInput,
        ReasonInput,
        RoundCounts,
        SampleInput,
        ScoreInput,
        SelectInput,
        TailorInputsInput,
        TrainInput,
        TrainOutput,
    )
    from orchestrator.baselines import BaselineArmInput, BaselineArmOutput, BaselineArmWorkflow
    from orchestrator.budget import budget_scales
    from orchestrator.eta import planned_steps
    from orchestrator.judging import JudgeInput
    from orchestrator.keys import baseline_workflow_id, tailor_workflow_id
    from orchestrator.policies import RETRY, SHORT_TIMEOUT, START_TO_CLOSE
    from orchestrator.tailoring import TailorTeacherInput, TailorTeacherOutput, TailorTeacherWorkflow
    from orchestrator.types import (
        ArmRound,
        BaselineResult,
        DistillationInput,
        JobProgress,
        LoopPlan,
        RoundResult,
        StepTime,
    )
    from syllabus.artifacts import ArtifactRef
    from syllabus.baselines import COMPARISONS

I = TypeVar("I")
O = TypeVar("O")


@workflow.defn
class DistillationWorkflow:
    """Distil the task's teacher into its student over `rounds` rounds; query `progress` any time."""

    @workflow.init
    def __init__(self, inp: DistillationInput) -> None:
        self._progress = JobProgress(job_id=inp.job_id, rounds_total=inp.rounds)
        self._heartbeat_timeout = timedelta(seconds=inp.heartbeat_timeout_s)
        self._base_verdicts: ArtifactRef | None = None  # open_ended: the base student's judged answers

    @workflow.query
    def progress(self) -> JobProgress:
        return self._progress

    @workflow.run
    async def run(self, inp: DistillationInput) -> JobProgress:
        try:
            return await self._distil(inp)
        except (ActivityError, ChildWorkflowError, asyncio.CancelledError) as err:
            cancelled = is_cancelled_exception(err)
            search.upsert(status=search.CANCELLED if cancelled else search.FAILED)
            await self._mark_ended(inp.job_id, "cancelled" if cancelled else "failed")
            raise

    async def _distil(self, inp: DistillationInput) -> JobProgress:
        p = self._progress
        prep = await self._step("prepare", 0, calls.prepare_job, PrepareJobInput(inp.job_id, inp.task_ref, inp.rounds), short=True)
        p.artifacts_uri = prep.artifacts_uri
        plan = prep.plan
        p.planned = planned_steps(plan, inp.rounds)
        p.baselines = [BaselineResult(arm, COMPARISONS[arm]) for arm in plan.baselines]
        # Each arm's repeats are chains of their own: round r trains from the arm's round r-1 adapter.
        arm_adapters: dict[str, list[ArtifactRef | None]] = {arm: [None] * plan.baseline_repeats for arm in plan.baselines}
        if plan.distill_top_k:  # teacher and student must tokenize alike: refuse a mismatch before any work
            await self._step("distill-check", 0, calls.teacher_logprobs, LogprobsInput(inp.job_id, inp.task_ref, 0), short=True)
        baseline = await self._step(
            "baseline-eval",
            0,
            calls.evaluate_student,
            EvaluateInput(inp.job_id, inp.task_ref, round=0, stage="baseline", eval_set=prep.eval_set),
        )
        p.baseline_accuracy = baseline.accuracy
        if plan.judge_eval:  # open_ended: the teacher's judge scores the answers against the rubric
            judged = await self._step(
                "baseline-judge", 0, calls.judge_answers,
                JudgeInput(inp.job_id, inp.task_ref, 0, "baseline-judge", baseline.predictions, prep.eval_set),
            )  # fmt: skip
            p.baseline_accuracy, self._base_verdicts = judged.accuracy, judged.verdicts

        adapter: ArtifactRef | None = None  # the student: the latest round's adapter
        teacher: ArtifactRef | None = None  # the tailored teacher's adapter (ARTE)
        skills: ArtifactRef | None = None  # the student's confusions after the previous round
        crowd: list[ArtifactRef] = []  # the student's checkpoints: the IRT crowd of `difficulty`
        validation = prep.validation or prep.seeds  # an older PrepareJobOutput (None) still replays
        modes = [*(["expand"] if plan.expand else []), *(["targeted"] if plan.targeted else []), *plan.reasoning]
        budget: dict[str, float] = {}  # generate.budget car: each mode's factor, from the last round's CAR
        for r in range(1, inp.rounds + 1):
            p.current_round = r
            search.upsert(round=r)
            result = RoundResult(round=r, generated=0, kept=0, selected=0, trained=0, accuracy=0.0, train_loss=0.0,
                                 adapter_uri="", teacher_adapter_uri=teacher.uri if teacher else "",
                                 budget=dict(budget))  # fmt: skip
            candidates: ArtifactRef | None = None
            n_candidates = 0
            produced: dict[str, int] = {}  # CAR's reward denominator: responses per generation method
            if plan.expand or (plan.targeted and skills is not None):
                gen = await self._step(
                    "generate",
                    r,
                    calls.generate_examples,
                    GenerateInput(inp.job_id, inp.task_ref, r, prep.seeds, prep.eval_set, skills, teacher,
                                  {m: f for m, f in budget.items() if m in ("expand", "targeted", *plan.teachers)}),
                )
                result.generated, result.leaked, result.targeted = gen.generated, gen.leaked, gen.targeted
                if not plan.answers_by_reasoning:  # examples that train as they are (else questions to answer)
                    produced = {"expand": gen.generated - gen.targeted, "targeted": gen.targeted, **gen.by_teacher}
                if gen.examples is not None and gen.generated > 0:
                    crit = await self._step(
                        "critique",
                        r,
                        calls.critique_examples,
                        CritiqueInput(inp.job_id, inp.task_ref, r, gen.examples, prep.seeds, teacher, student_adapter=adapter),
                    )
                    result.kept, result.dropped, result.parsing = crit.kept_count, crit.dropped, crit.parsing
                    n_candidates = crit.kept_count + crit.extra_count
                    candidates = crit.kept if n_candidates > 0 else None
                    if plan.answers_by_reasoning:
                        n_candidates = 0  # kept questions: candidates once the reasoning steps answer them
            for mode in plan.reasoning:
                reasoned = await self._step(
                    mode, r, calls.reason_examples,
                    ReasonInput(inp.job_id, inp.task_ref, r, mode, prep.seeds, candidates, teacher, budget.get(mode, 1.0)),
                )  # fmt: skip
                result.reasoning[mode] = reasoned.counts
                produced[mode] = int(reasoned.counts.get("written", 0))
                if reasoned.count > 0:
                    candidates, n_candidates = reasoned.candidates, reasoned.count
                elif plan.answers_by_reasoning:
                    candidates, n_candidates = None, 0
            if plan.critiques_solutions and candidates is not None and n_candidates > 0:
                crit = await self._step(
                    "critique-solutions",
                    r,
                    calls.critique_solutions,
                    CritiqueInput(inp.job_id, inp.task_ref, r, candidates, prep.seeds, teacher, student_adapter=adapter),
                )
                result.dropped = dict(sorted((Counter(result.dropped) + Counter(crit.dropped)).items()))
                result.parsing = {**result.parsing, **crit.parsing}
                n_candidates = crit.kept_count + crit.extra_count
                candidates = crit.kept if n_candidates > 0 else None
            result.candidates = n_candidates

            train_set, scores = prep.seeds, None
            if n_candidates > 0 or plan.stages:  # a recipe's score bands need the seeds scored too
                train_set, scores = await self._score_and_select(
                    inp, plan, r, prep.seeds, validation, candidates, adapter, crowd, result, produced
                )
            if plan.budget_by_car:
                budget = budget_scales(result.car, modes) if result.car else budget
            if plan.teachers and result.car:  # several teachers: next round's shares by each one's CAR
                budget = {**{k: v for k, v in budget.items() if k not in plan.teachers}, **budget_scales(result.car, plan.teachers)}

            arms: dict[str, asyncio.Task[BaselineArmOutput]] = {}
            for arm in plan.baselines:  # started now, they train while the loop trains
                arm_inp = BaselineArmInput(
                    inp.job_id, inp.task_ref, r, arm, "recipe" if plan.stages else "sft", prep.eval_set, prep.seeds, train_set,
                    candidates if n_candidates > 0 else None, scores, result.selected, list(arm_adapters[arm]), inp.heartbeat_timeout_s,
                    distill=plan.distill_top_k > 0,
                )  # fmt: skip
                arms[arm] = asyncio.ensure_future(
                    workflow.execute_child_workflow(BaselineArmWorkflow.run, arm_inp, id=baseline_workflow_id(inp.job_id, arm, r))
                )
            try:
                adapter, ev = await self._train_and_evaluate(inp, plan, r, prep.eval_set, train_set, adapter, result)
            except BaseException:
                for task in arms.values():
                    task.cancel()
                raise
            crowd.append(adapter)
            if arms:
                await self._finish_arms(inp, r, arms, ev.predictions, arm_adapters)
            skills = None
            if plan.targeted and r < inp.rounds and prep.validation is not None:
                # Error-driven generation: what this round's student still confuses on the validation
                # split becomes targeted examples in the next round.
                val = await self._step(
                    "validation-eval",
                    r,
                    calls.evaluate_student,
                    EvaluateInput(inp.job_id, inp.task_ref, round=r, stage="validation", eval_set=prep.validation, adapter=adapter),
                )
                analysis = await self._step(
                    "analyze",
                    r,
                    calls.analyze_errors,
                    AnalyzeInput(inp.job_id, inp.task_ref, r, val.predictions, prep.validation),
                )
                skills = analysis.skills if analysis.skill_count > 0 else None
            if plan.tailor_every and r % plan.tailor_every == 0 and r < inp.rounds:
                tailored = await self._tailor(inp, r, prep.seeds, validation, candidates, adapter, teacher, crowd)
                teacher = tailored.adapter
                result.tailor_pairs = tailored.question_pairs + tailored.rationale_pairs
                result.tailor_skipped = tailored.skipped

        p.final_accuracy = p.rounds[-1].accuracy if p.rounds else p.baseline_accuracy
        p.current_step = "finish"
        await workflow.execute_activity(
            calls.finish_job,
            FinishJobInput(inp.job_id, "completed", p.baseline_accuracy, p.final_accuracy),
            start_to_close_timeout=SHORT_TIMEOUT,
            retry_policy=RETRY,
        )
        p.current_step = ""
        search.upsert(status=search.COMPLETED)
        return p

    async def _on_policy(
        self, inp: DistillationInput, plan: LoopPlan, r: int, train_set: ArtifactRef, adapter: ArtifactRef | None
    ) -> TrainOutput:
        """On-policy distillation: `opd_chunks` times, the current student samples the training set's
        prompts, the teacher scores the samples, the opd stage trains on them from the current adapter.
        Every step is an activity: a killed worker resumes at the chunk it was in."""
        p = self._progress
        trained: TrainOutput | None = None
        for c in range(plan.opd_chunks):
            samples = await self._step("sample", r, calls.sample_student, SampleInput(inp.job_id, inp.task_ref, r, c, train_set, adapter))
            lp = await self._step("teacher-logprobs", r, calls.teacher_logprobs, LogprobsInput(inp.job_id, inp.task_ref, r, samples.samples))
            label = f"chunk-{c + 1}" if c + 1 < plan.opd_chunks else ""
            train_inp = TrainInput(inp.job_id, inp.task_ref, r, "recipe", samples.samples, adapter, teacher_logprobs=lp.logprobs,
                                   teacher=lp.teacher, chunk_label=label)  # fmt: skip
            trained = await self._step("train", r, calls.train_adapter, train_inp, record=False)
            p.steps.append(StepTime("train-stage-1", r, sum(st.seconds for st in trained.stages)))
            adapter = trained.adapter
        assert trained is not None  # opd_chunks >= 1
        return trained

    async def _train_and_evaluate(
        self,
        inp: DistillationInput,
        plan: LoopPlan,
        r: int,
        eval_set: ArtifactRef,
        train_set: ArtifactRef,
        adapter: ArtifactRef | None,
        result: RoundResult,
    ) -> tuple[ArtifactRef, EvaluateOutput]:
        """train (one SFT stage, or the recipe's stages) -> evaluate; the round's adapter and evaluation."""
        p = self._progress
        if plan.opd_chunks:
            trained = await self._on_policy(inp, plan, r, train_set, adapter)
        elif plan.stages:
            train_inp = TrainInput(inp.job_id, inp.task_ref, r, "recipe", train_set, adapter)
            if plan.distill_top_k:  # the kd stages' targets: the teacher's top-k of this training set
                lp = await self._step("teacher-logprobs", r, calls.teacher_logprobs, LogprobsInput(inp.job_id, inp.task_ref, r, train_set))
                train_inp.teacher_logprobs, train_inp.teacher = lp.logprobs, lp.teacher
            trained = await self._step("train", r, calls.train_adapter, train_inp, record=False)
            for i, stage in enumerate(trained.stages):  # one step per recipe stage, timed by the trainer
                p.steps.append(StepTime(f"train-stage-{i + 1}", r, stage.seconds))
        else:
            trained = await self._step("train", r, calls.train_adapter, TrainInput(inp.job_id, inp.task_ref, r, "sft", train_set, adapter))
        adapter = trained.adapter
        result.trained, result.train_loss, result.adapter_uri = trained.samples, trained.mean_loss, adapter.uri
        counts = RoundCounts(
            result.generated, result.kept, result.selected, result.trained, result.leaked, result.targeted, result.train_loss
        )
        ev = await self._step(
            "evaluate",
            r,
            calls.evaluate_student,
            EvaluateInput(
                inp.job_id,
                inp.task_ref,
                round=r,
                stage="sft",
                eval_set=eval_set,
                adapter=adapter,
                round_counts=None if plan.judge_eval else counts,  # open_ended: the judge writes the row
            ),
        )
        result.accuracy = ev.accuracy
        if plan.judge_eval:
            judged = await self._step(
                "judge", r, calls.judge_answers,
                JudgeInput(inp.job_id, inp.task_ref, r, "judge", ev.predictions, eval_set, adapter, self._base_verdicts, counts),
            )  # fmt: skip
            result.accuracy, result.win_rate = judged.accuracy, judged.win_rate
        p.rounds.append(result)
        return adapter, ev

    async def _finish_arms(
        self,
        inp: DistillationInput,
        r: int,
        arms: dict[str, asyncio.Task[BaselineArmOutput]],
        loop_predictions: ArtifactRef,
        arm_adapters: dict[str, list[ArtifactRef | None]],
    ) -> None:
        """Wait for the round's baseline arms, then compare the loop with each (paired bootstrap over
        the eval items). The step's time is the wait after the loop's own evaluation."""
        p = self._progress
        self._begin("baselines")
        started = workflow.now()
        rounds: dict[str, ArmRound] = {}
        for done, (arm, task) in enumerate(arms.items(), 1):
            out = await task
            rounds[arm] = ArmRound(r, runs=out.runs)
            arm_adapters[arm] = [run.adapter for run in out.runs]
            p.step_note = f"{done}/{len(arms)} arms done"
        for res in p.baselines:
            res.rounds.append(rounds[res.arm])
        compared = await workflow.execute_activity(
            calls.compare_baselines,
            CompareInput(inp.job_id, r, loop_predictions, {arm: [run.predictions for run in rnd.runs] for arm, rnd in rounds.items()}),
            start_to_close_timeout=SHORT_TIMEOUT,
            retry_policy=RETRY,
        )
        for arm, lift in compared.lifts.items():
            rnd = rounds[arm]
            rnd.lift, rnd.ci_low, rnd.ci_high, rnd.verdict = lift.lift, lift.ci_low, lift.ci_high, lift.verdict
        p.step_note = ""
        p.steps.append(StepTime("baselines", r, (workflow.now() - started).total_seconds()))

    async def _score_and_select(
        self,
        inp: DistillationInput,
        plan: LoopPlan,
        r: int,
        seeds: ArtifactRef,
        validation: ArtifactRef,
        candidates: ArtifactRef | None,
        adapter: ArtifactRef | None,
        crowd: list[ArtifactRef],
        result: RoundResult,
        produced: dict[str, int],
    ) -> tuple[ArtifactRef, ArtifactRef]:
        """reference-train (LoBaSS) -> score -> select; the round's training set and the scores."""
        reference = None
        if plan.learnability or ("difficulty" in plan.metrics and not crowd):
            # LoBaSS (Zhou et al. 2023) in every round: L0 under the current student, Lref under a
            # brief reference trained from the current student on this round's candidates. Before
            # the first round's adapter, it is also the IRT crowd's second member (difficulty).
            ref_run = await self._step(
                "reference-train",
                r,
                calls.train_adapter,
                TrainInput(inp.job_id, inp.task_ref, r, "reference", candidates or seeds, adapter),
            )
            reference = ref_run.adapter
        judge = adapter
        if "agreement" in plan.metrics and judge is None:
            # agreement's judge before the first round's adapter: train.* on the seeds alone, so a
            # candidate is judged by what the seeds teach (not by itself, as the reference would).
            judge_run = await self._step(
                "agreement-train", r, calls.train_adapter, TrainInput(inp.job_id, inp.task_ref, r, "agreement", seeds)
            )
            judge = judge_run.adapter
        heldout = validation if plan.heldout else None
        scores = await self._step(
            "score",
            r,
            calls.score_samples,
            ScoreInput(inp.job_id, inp.task_ref, r, candidates, seeds, validation, reference, adapter,
                       [*crowd, *([reference] if reference else [])], heldout, produced, judge),
        )
        result.car = scores.car
        sel = await self._step(
            "select",
            r,
            calls.select_samples,
            SelectInput(inp.job_id, inp.task_ref, r, candidates, scores.scores, seeds, heldout, adapter),
            short=plan.select_policy not in ("diversity", "reflection"),  # those two run the student
        )
        result.selected, result.selection_dropped = sel.selected, sel.dropped
        return sel.train_set, scores.scores

    async def _tailor(
        self,
        inp: DistillationInput,
        r: int,
        seeds: ArtifactRef,
        validation: ArtifactRef,
        candidates: ArtifactRef | None,
        student: ArtifactRef | None,
        teacher: ArtifactRef | None,
        crowd: list[ArtifactRef],
    ) -> TailorTeacherOutput:
        """ARTE as a child workflow: the teacher's DPO adapter aligned to this round's student."""
        p = self._progress
        self._begin("tailor")
        started = workflow.now()
        inputs = await workflow.execute_activity(
            calls.tailor_inputs,
            TailorInputsInput(inp.job_id, inp.task_ref, r, seeds, validation, candidates),
            start_to_close_timeout=SHORT_TIMEOUT,
            retry_policy=RETRY,
        )
        out = await workflow.execute_child_workflow(
            TailorTeacherWorkflow.run,
            TailorTeacherInput(
                inp.job_id, inp.task_ref, r, inputs.questions, inputs.probe_set, student_adapter=student,
                teacher_adapter=teacher, settings=inputs.settings, heartbeat_timeout_s=inp.heartbeat_timeout_s,
                validation=validation, crowd=list(crowd),  # 2PL crowd: the base student + each round's adapter
            ),
            id=tailor_workflow_id(inp.job_id, r),
        )
        p.steps.append(StepTime("tailor", r, (workflow.now() - started).total_seconds()))
        return out

    async def _step(
        self,
        name: str,
        round: int,
        activity: Callable[[I], Awaitable[O]],
        arg: I,
        *,
        short: bool = False,
        record: bool = True,
    ) -> O:
        """Run one activity as the named step and (unless `record` is off) record its wall time."""
        self._begin(name)
        started = workflow.now()
        result = await workflow.execute_activity(
            activity,
            arg,
            start_to_close_timeout=SHORT_TIMEOUT if short else START_TO_CLOSE,
            heartbeat_timeout=None if short else self._heartbeat_timeout,
            retry_policy=RETRY,
            # A cancelled job waits until its long step has stopped the service's work (training),
            # so nothing runs or gets published after the job reads cancelled.
            cancellation_type=ActivityCancellationType.TRY_CANCEL if short else ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        if record:
            self._progress.steps.append(StepTime(name, round, (workflow.now() - started).total_seconds()))
        return result

    def _begin(self, step: str) -> None:
        """The current step is `step`, from now (the gateway's ETA reads when it started)."""
        self._progress.current_step = step
        self._progress.step_started_at = workflow.now().timestamp()
        self._progress.step_note = ""

    async def _mark_ended(self, job_id: str, status: str) -> None:
        """Record a failed or cancelled job in SQL; the original error is what the workflow reports."""
        p = self._progress
        try:
            await workflow.execute_activity(
                calls.finish_job,
                FinishJobInput(job_id, status, p.baseline_accuracy, None),
                start_to_close_timeout=SHORT_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        except ActivityError as e:
            workflow.logger.warning("could not mark job %s %s: %s", job_id, status, e)
