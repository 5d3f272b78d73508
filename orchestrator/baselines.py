"""BaselineArmWorkflow: one counterfactual arm of a round (the task's `baselines`), a child workflow of the loop.

    for each repeat, concurrently:
        arm set (from the loop's round: seeds_only | all_kept | random | shuffled)
        -> train (the loop's train spec or recipe, same epochs; seed + repeat) -> evaluate (the loop's eval set)

The loop starts one child per arm after its round's selection, so the arms train while the loop
trains (the trainer queues runs: several trainer replicas run them side by side), and compares
after its own evaluation (`compare_baselines`: the loop's lift over each arm with
a paired bootstrap CI, `syllabus.stats`).

What an arm changes is only what trains: it never generates, critiques or scores, it reads the
loop's round. Each arm (and each repeat) is its own chain across rounds: round r trains from the
arm's own round r-1 adapter (round 1 from the loop's initial student), so after R rounds the arm is
the student the whole job would have produced with that choice, not the loop's student plus one
different round. Training runs and evaluations are recorded under the stage `arm_stage(arm, repeat)`
("baseline-random"), with the arm's exact training set, so lineage shows what each arm trained on.

Its types, its `arm_train_set` declaration and the workflow live here; the activities'
implementations in `orchestrator.activities.baselines` (one artifact store and one SQL writer with
the rest of the loop's).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.workflow import ActivityCancellationType

from orchestrator.policies import RETRY, SHORT_TIMEOUT, START_TO_CLOSE

with workflow.unsafe.imports_passed_through():
    from orchestrator import calls
    from orchestrator.activity_io import EvaluateInput, LogprobsInput, TrainInput
    from orchestrator.types import ArmRun
    from syllabus.artifacts import ArtifactRef
    from syllabus.baselines import arm_stage


@dataclass
class BaselineArmInput:
    """Input of BaselineArmWorkflow: one arm in one round, all its repeats."""

    job_id: str
    task_ref: ArtifactRef
    round: int
    arm: str  # seeds_only | all_kept | random | shuffled | sft
    train_stage: str  # the loop's training: "sft" (train.*) or "recipe" (train.recipe)
    eval_set: ArtifactRef
    seeds: ArtifactRef
    # The loop's round: its training set (selected candidates, seeds, held-out records), the
    # candidates it selected from and their scores (None: the round had none), the selection's size.
    train_set: ArtifactRef
    candidates: ArtifactRef | None
    scores: ArtifactRef | None
    selected: int
    # Each repeat's previous-round adapter (its own chain); None: the base student.
    init_adapters: list[ArtifactRef | None] = field(default_factory=lambda: [None])
    heartbeat_timeout_s: float = 120.0
    # The recipe has kd stages: each arm's training set gets the teacher's top-k first.
    distill: bool = False


@dataclass
class BaselineArmOutput:
    runs: list[ArmRun]


@dataclass
class ArmSetInput:
    job_id: str
    task_ref: ArtifactRef
    round: int
    arm: str
    repeat: int
    seeds: ArtifactRef
    train_set: ArtifactRef
    candidates: ArtifactRef | None
    scores: ArtifactRef | None
    selected: int


@dataclass
class ArmSetOutput:
    train_set: ArtifactRef  # JSONL in the loop's training-set format (score columns, category)
    samples: int  # records that train (held-out ones excluded)


def _columns(row: dict | None) -> dict:
    return {k: v for k, v in (row or {}).items() if k != "id"}


def arm_records(
    arm: str,
    loop_set: Sequence[dict],
    candidates: Sequence[dict],
    seeds: Sequence[dict],
    scores: dict[str, dict],
    selected: int,
    rng: random.Random,
) -> list[dict]:
    """An arm's training set from the loop's round, in the loop's training-set format:

    - seeds_only: the seeds;
    - all_kept: every candidate (what critique and reasoning kept), then the seeds;
    - random: `selected` candidates drawn at random (sorted ids, then `rng`), then the seeds;
    - shuffled: the loop's own training set (the recipe's curricula are what changes);
    - sft: the loop's own training set (the recipe's distillation objectives become plain SFT).

    Each record carries its score columns (a recipe's score bands filter the arm's data as they
    filter the loop's); the loop's held-out records (PUDF's probe) join every arm."""
    if arm in ("shuffled", "sft"):  # the loop's own data: the recipe (its order, its objective) is what changes
        return list(loop_set)
    heldout = [r for r in loop_set if r.get("heldout")]
    chosen_ids = {r["id"] for r in candidates}
    if arm == "seeds_only":
        picked: list[dict] = []
    elif arm == "all_kept":
        picked = list(candidates)
    elif arm == "random":
        by_id = {r["id"]: r for r in candidates}
        picked = [by_id[i] for i in rng.sample(sorted(by_id), min(selected, len(by_id)))]
        chosen_ids = {r["id"] for r in picked}
    else:
        raise ValueError(f"unknown baseline arm {arm!r}")
    out = [{**r, **_columns(scores.get(r["id"]))} for r in picked]
    out += [{**s, **_columns(scores.get(s["id"]))} for s in seeds if arm == "seeds_only" or s["id"] not in chosen_ids]
    return out + heldout


# -- the activities this flow declares (its types live here; implemented in orchestrator.activities) --


@activity.defn(name="arm_train_set")
async def arm_train_set(inp: ArmSetInput) -> ArmSetOutput:
    """Write the arm's training set (`arm_records`) for one repeat; only `random` differs by repeat
    (`BaselineActivities.arm_train_set`)."""
    raise NotImplementedError(calls.DECLARATION)


@workflow.defn
class BaselineArmWorkflow:
    """Train and evaluate one baseline arm of one round, its repeats side by side."""

    @workflow.run
    async def run(self, inp: BaselineArmInput) -> BaselineArmOutput:
        runs = await asyncio.gather(*(self._repeat(inp, k, init) for k, init in enumerate(inp.init_adapters)))
        return BaselineArmOutput(runs=list(runs))

    async def _repeat(self, inp: BaselineArmInput, repeat: int, init: ArtifactRef | None) -> ArmRun:
        long = {
            "start_to_close_timeout": START_TO_CLOSE,
            "heartbeat_timeout": timedelta(seconds=inp.heartbeat_timeout_s),
            "retry_policy": RETRY,
            # As the loop's own long steps: a cancelled job waits until the training has stopped.
            "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        }
        arm_set = await workflow.execute_activity(
            arm_train_set,
            ArmSetInput(inp.job_id, inp.task_ref, inp.round, inp.arm, repeat, inp.seeds, inp.train_set,
                        inp.candidates, inp.scores, inp.selected),
            start_to_close_timeout=SHORT_TIMEOUT,
            retry_policy=RETRY,
        )  # fmt: skip
        train_inp = TrainInput(inp.job_id, inp.task_ref, inp.round, inp.train_stage, arm_set.train_set, init, arm=inp.arm, repeat=repeat)
        if inp.distill and inp.train_stage == "recipe" and inp.arm != "sft":  # the sft arm needs no teacher log-probs
            lp = await workflow.execute_activity(
                calls.teacher_logprobs, LogprobsInput(inp.job_id, inp.task_ref, inp.round, arm_set.train_set), **long
            )
            train_inp.teacher_logprobs, train_inp.teacher = lp.logprobs, lp.teacher
        trained = await workflow.execute_activity(calls.train_adapter, train_inp, **long)
        ev = await workflow.execute_activity(
            calls.evaluate_student,
            EvaluateInput(inp.job_id, inp.task_ref, round=inp.round, stage=arm_stage(inp.arm, repeat), eval_set=inp.eval_set,
                          adapter=trained.adapter),
            **long,
        )  # fmt: skip
        return ArmRun(repeat=repeat, accuracy=ev.accuracy, trained=trained.samples, mean_loss=trained.mean_loss,
                      adapter=trained.adapter, predictions=ev.predictions)  # fmt: skip
