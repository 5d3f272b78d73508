"""The baseline arms' data steps and the comparison (`orchestrator.baselines`; no service call)."""

from __future__ import annotations

import random

from temporalio import activity

from orchestrator.activities.base import ActivityBase
from orchestrator.activity_io import ArmLift, CompareInput, CompareOutput
from orchestrator.baselines import ArmSetInput, ArmSetOutput, arm_records
from orchestrator.keys import output_key
from orchestrator.scores import scoring_records
from syllabus import stats
from syllabus.baselines import COMPARISONS, arm_stage
from syllabus.records import dumps_jsonl


class BaselineActivities(ActivityBase):
    """The arms' data steps and the comparison (no service call; the arms train and evaluate with the
    loop's own `train_adapter` and `evaluate_student`)."""


    @activity.defn
    async def arm_train_set(self, inp: ArmSetInput) -> ArmSetOutput:
        """Write the arm's training set (`arm_records`) for one repeat; only `random` differs by repeat."""
        task = self._task(inp.task_ref)
        read = self._read_jsonl
        candidates = scoring_records(read(inp.candidates) if inp.candidates is not None else [], [])
        seeds = scoring_records([], read(inp.seeds))
        scores = {r["id"]: r for r in read(inp.scores)} if inp.scores is not None else {}
        repeat = inp.repeat if inp.arm == "random" else 0
        rng = random.Random(f"baseline:{task.select.seed}:{inp.round}:{repeat}")
        records = arm_records(inp.arm, read(inp.train_set), candidates, seeds, scores, inp.selected, rng)
        stage = arm_stage(inp.arm, repeat)
        params = {"arm": inp.arm, "repeat": repeat, "selected": inp.selected, "seed": task.select.seed}
        key = output_key(inp.job_id, inp.round, f"{stage}-set", [inp.train_set, inp.candidates, inp.scores, inp.seeds], params, "jsonl")
        ref = self._publish_once(key, dumps_jsonl(records))
        await self._record_artifacts(inp.job_id, inp.round, {f"train-set-{stage}": ref})
        return ArmSetOutput(train_set=ref, samples=sum(1 for r in records if not r.get("heldout")))

    @activity.defn
    async def compare_baselines(self, inp: CompareInput) -> CompareOutput:
        """The loop's lift over each arm in this round: paired over eval items, pooled over the arm's
        repeats, with the percentile-bootstrap 95% interval (`syllabus.stats`)."""
        loop = stats.correct_by_item(self._read_jsonl(inp.loop_predictions))
        lifts = {}
        for arm, refs in inp.arms.items():
            lift = stats.compare(loop, [stats.correct_by_item(self._read_jsonl(ref)) for ref in refs])
            lifts[arm] = ArmLift(lift.lift, lift.ci_low, lift.ci_high, lift.n, stats.verdict(COMPARISONS[arm], lift))
        return CompareOutput(lifts=lifts)
