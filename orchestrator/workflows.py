"""DistillationWorkflow: the durable distillation loop.

    prepare -> baseline-eval -> for each round:
        generate -> critique -> [reference-train (round 1)] -> score -> select -> train -> evaluate

Deterministic logic only; every step with I/O is an activity in `orchestrator.activities`, and data
moves between steps as `ArtifactRef`s. Learnability needs a reference adapter (LoBaSS): round 1
trains a brief one on the kept candidates; later rounds use the previous round's adapter. A round
whose critique keeps nothing trains on the seeds alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from orchestrator.activities import Activities
    from orchestrator.types import (
        AnalyzeInput,
        CritiqueInput,
        DistillationInput,
        EvaluateInput,
        FinishJobInput,
        GenerateInput,
        JobProgress,
        PrepareJobInput,
        RoundCounts,
        RoundResult,
        ScoreInput,
        SelectInput,
        StepTime,
        TrainInput,
    )
    from syllabus.artifacts import ArtifactRef

I = TypeVar("I")
O = TypeVar("O")

# Training and generation on a CPU can take many minutes; heartbeats, not this, detect a dead service.
START_TO_CLOSE = timedelta(minutes=30)
# Short data steps (prepare, select, finish) do not heartbeat.
SHORT_TIMEOUT = timedelta(minutes=5)
# Transient failures (a service restarting, a worker lost) retry for about 5 minutes, long enough
# for a supervised component to come back; non-retryable errors (bad input) fail at once.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=14,
)


@workflow.defn
class DistillationWorkflow:
    """Distil the task's teacher into its student over `rounds` rounds; query `progress` any time."""

    @workflow.init
    def __init__(self, inp: DistillationInput) -> None:
        self._progress = JobProgress(job_id=inp.job_id, rounds_total=inp.rounds)
        self._heartbeat_timeout = timedelta(seconds=inp.heartbeat_timeout_s)

    @workflow.query
    def progress(self) -> JobProgress:
        return self._progress

    @workflow.run
    async def run(self, inp: DistillationInput) -> JobProgress:
        try:
            return await self._distil(inp)
        except (ActivityError, asyncio.CancelledError) as err:
            cancelled = is_cancelled_exception(err)
            await self._mark_ended(inp.job_id, "cancelled" if cancelled else "failed")
            raise

    async def _distil(self, inp: DistillationInput) -> JobProgress:
        p = self._progress
        prep = await self._step(
            "prepare",
            0,
            Activities.prepare_job,
            PrepareJobInput(inp.job_id, inp.task_ref, inp.rounds),
            short=True,
        )
        p.artifacts_uri = prep.artifacts_uri
        baseline = await self._step(
            "baseline-eval",
            0,
            Activities.evaluate_student,
            EvaluateInput(inp.job_id, inp.task_ref, round=0, stage="baseline", eval_set=prep.eval_set),
        )
        p.baseline_accuracy = baseline.accuracy

        adapter: ArtifactRef | None = None
        skills: ArtifactRef | None = None
        for r in range(1, inp.rounds + 1):
            p.current_round = r
            gen = await self._step(
                "generate",
                r,
                Activities.generate_examples,
                GenerateInput(inp.job_id, inp.task_ref, r, prep.seeds, prep.eval_set, skills),
            )
            kept: ArtifactRef | None = None
            kept_count = 0
            if gen.generated > 0:
                crit = await self._step(
                    "critique",
                    r,
                    Activities.critique_examples,
                    CritiqueInput(inp.job_id, inp.task_ref, r, gen.examples, prep.seeds),
                )
                kept, kept_count = crit.kept, crit.kept_count

            train_set, selected = prep.seeds, 0
            if kept is not None and kept_count > 0:
                # LoBaSS (Zhou et al. 2023) in every round: L0 under the current student, Lref under a
                # brief reference trained from the current student on this round's candidates.
                ref_run = await self._step(
                    "reference-train",
                    r,
                    Activities.train_adapter,
                    TrainInput(inp.job_id, inp.task_ref, r, stage="reference", dataset=kept, init_adapter=adapter),
                )
                scores = await self._step(
                    "score",
                    r,
                    Activities.score_samples,
                    ScoreInput(inp.job_id, inp.task_ref, r, kept, ref_run.adapter, student=adapter),
                )
                sel = await self._step(
                    "select",
                    r,
                    Activities.select_samples,
                    SelectInput(inp.job_id, r, kept, scores.scores, prep.seeds, inp.top_fraction),
                    short=True,
                )
                train_set, selected = sel.train_set, sel.selected

            trained = await self._step(
                "train",
                r,
                Activities.train_adapter,
                TrainInput(inp.job_id, inp.task_ref, r, stage="sft", dataset=train_set, init_adapter=adapter),
            )
            adapter = trained.adapter
            ev = await self._step(
                "evaluate",
                r,
                Activities.evaluate_student,
                EvaluateInput(
                    inp.job_id,
                    inp.task_ref,
                    round=r,
                    stage="sft",
                    eval_set=prep.eval_set,
                    adapter=adapter,
                    round_counts=RoundCounts(
                        gen.generated, kept_count, selected, trained.samples, gen.leaked, gen.targeted, trained.mean_loss
                    ),
                ),
            )
            p.rounds.append(
                RoundResult(
                    round=r,
                    generated=gen.generated,
                    leaked=gen.leaked,
                    targeted=gen.targeted,
                    kept=kept_count,
                    selected=selected,
                    trained=trained.samples,
                    accuracy=ev.accuracy,
                    train_loss=trained.mean_loss,
                    adapter_uri=adapter.uri,
                )
            )
            skills = None
            if inp.targeted_per_skill > 0 and r < inp.rounds and prep.validation is not None:
                # Error-driven generation: what this round's student still confuses on the validation
                # split becomes targeted examples in the next round.
                val = await self._step(
                    "validation-eval",
                    r,
                    Activities.evaluate_student,
                    EvaluateInput(inp.job_id, inp.task_ref, round=r, stage="validation", eval_set=prep.validation, adapter=adapter),
                )
                analysis = await self._step(
                    "analyze",
                    r,
                    Activities.analyze_errors,
                    AnalyzeInput(inp.job_id, inp.task_ref, r, val.predictions, prep.validation),
                )
                skills = analysis.skills if analysis.skill_count > 0 else None

        p.final_accuracy = p.rounds[-1].accuracy if p.rounds else p.baseline_accuracy
        p.current_step = "finish"
        await workflow.execute_activity_method(
            Activities.finish_job,
            FinishJobInput(inp.job_id, "completed", p.baseline_accuracy, p.final_accuracy),
            start_to_close_timeout=SHORT_TIMEOUT,
            retry_policy=RETRY,
        )
        p.current_step = ""
        return p

    async def _step(
        self,
        name: str,
        round: int,
        activity: Callable[[Any, I], Awaitable[O]],
        arg: I,
        *,
        short: bool = False,
    ) -> O:
        """Run one activity as the named step and record its wall time."""
        self._progress.current_step = name
        started = workflow.now()
        result = await workflow.execute_activity_method(
            activity,
            arg,
            start_to_close_timeout=SHORT_TIMEOUT if short else START_TO_CLOSE,
            heartbeat_timeout=None if short else self._heartbeat_timeout,
            retry_policy=RETRY,
            # A cancelled job waits until its long step has stopped the service's work (training),
            # so nothing runs or gets published after the job reads cancelled.
            cancellation_type=ActivityCancellationType.TRY_CANCEL if short else ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        self._progress.steps.append(StepTime(name, round, (workflow.now() - started).total_seconds()))
        return result

    async def _mark_ended(self, job_id: str, status: str) -> None:
        """Record a failed or cancelled job in SQL; the original error is what the workflow reports."""
        p = self._progress
        try:
            await workflow.execute_activity_method(
                Activities.finish_job,
                FinishJobInput(job_id, status, p.baseline_accuracy, None),
                start_to_close_timeout=SHORT_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        except ActivityError as e:
            workflow.logger.warning("could not mark job %s %s: %s", job_id, status, e)
