"""Steps the StudentService computes: evaluate (and the round's row) and LoBaSS scores."""

from __future__ import annotations

from temporalio import activity

from orchestrator.activities.base import ActivityBase, finite
from orchestrator.keys import output_key
from orchestrator.types import EvaluateInput, EvaluateOutput, ScoreInput, ScoreOutput
from syllabus.artifacts import ArtifactRef
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2

# Scores the student computes, in SQL `scores.metric` spelling.
SCORE_METRICS = ("loss_base", "loss_ref", "learnability")


class StudentActivities(ActivityBase):
    @activity.defn
    async def evaluate_student(self, inp: EvaluateInput) -> EvaluateOutput:
        """StudentService.Evaluate on the eval set; records the evaluation, and the round's row when
        `round_counts` is given (a round's final evaluation)."""
        task = self._task(inp.task_ref)
        params = {"model": task.student.model, "kind": task.kind, "labels": task.labels}
        key = output_key(inp.job_id, inp.round, "evaluate", [inp.eval_set, inp.adapter], params, "jsonl")
        request = student_pb2.EvaluateRequest(
            model=common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.adapter)),
            kind=common_pb2.TASK_KIND_CLASSIFICATION,
            eval_set=ref_to_pb(inp.eval_set),
            labels=task.labels,
            output_key=key,
        )

        async def call() -> ArtifactRef | None:
            return ref_from_pb((await self._student(lambda s: s.evaluate(request))).predictions)

        predictions = await self.published_or_call(key, call, "StudentService.Evaluate")
        records = self._read_jsonl(predictions)
        accuracy, correct, total = await self._record_evaluation(inp, records, predictions)
        adapter_uri = inp.adapter.uri if inp.adapter is not None else ""
        if (c := inp.round_counts) is not None:
            counts = {"generated": c.generated, "kept": c.kept, "selected": c.selected, "trained": c.trained,
                      "leaked": c.leaked, "targeted": c.targeted, "train_loss": c.train_loss}  # fmt: skip
            row = {"job_id": inp.job_id, "round": inp.round, **counts, "accuracy": accuracy, "adapter_uri": adapter_uri}
            await self._db(self.metadata.record_round, row)
        await self._record_artifacts(inp.job_id, inp.round, {f"predictions-{inp.stage}": predictions})
        return EvaluateOutput(accuracy=accuracy, correct=correct, total=total, predictions=predictions)

    @activity.defn
    async def score_samples(self, inp: ScoreInput) -> ScoreOutput:
        """StudentService.Score: LoBaSS losses (L0 under the current student, Lref under the reference
        adapter) and learnability; records scores."""
        task = self._task(inp.task_ref)
        params = {"model": task.student.model, "metrics": list(SCORE_METRICS)}
        key = output_key(inp.job_id, inp.round, "score", [inp.dataset, inp.reference, inp.student], params, "jsonl")
        request = student_pb2.ScoreRequest(
            model=common_pb2.ModelRef(base=task.student.model, adapter=ref_to_pb(inp.reference)),
            dataset=ref_to_pb(inp.dataset),
            metrics=[student_pb2.METRIC_LOSS_BASE, student_pb2.METRIC_LOSS_REF, student_pb2.METRIC_LEARNABILITY],
            output_key=key,
            base_adapter=ref_to_pb(inp.student),  # L0 under the current student, not the bare base
        )

        async def call() -> ArtifactRef | None:
            return ref_from_pb((await self._student(lambda s: s.score(request))).scores)

        scores = await self.published_or_call(key, call, "StudentService.Score")
        records = self._read_jsonl(scores)
        # Which model each loss was taken under: L0 under the current student, the rest under the reference.
        under_ref = f"{task.student.model}+{inp.reference.uri}"
        under = {"loss_base": f"{task.student.model}+{inp.student.uri}" if inp.student else task.student.model}
        rows = [
            {
                "job_id": inp.job_id,
                "round": inp.round,
                "sample_id": r["id"],
                "metric": metric,
                "value": float(r[metric]),
                "model": under.get(metric, under_ref),
            }
            for r in records
            for metric in SCORE_METRICS
            # A NaN (e.g. learnability at zero base loss) is kept in the artifact, not in SQL.
            if finite(r.get(metric))
        ]
        await self._db(self.metadata.record_scores, rows)
        await self._record_artifacts(inp.job_id, inp.round, {"scores": scores})
        return ScoreOutput(scores=scores, count=len(records))
