"""The judge step (`orchestrator.judging`): TeacherService.Critique on the student's answers."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator.activities.base import ActivityBase
from orchestrator.judging import (
    JUDGE_MAX_NEW_TOKENS,
    JUDGE_RETRIES,
    JudgeInput,
    JudgeOutput,
    judge_question,
    win_rate_over,
)
from orchestrator.keys import output_key
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.records import dumps_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2


class JudgingActivities(ActivityBase):
    """The judge step; store, task specs and unary calls come from the loop's `Activities`."""


    @activity.defn
    async def judge_answers(self, inp: JudgeInput) -> JudgeOutput:
        """TeacherService.Critique (CFT judge) on the student's answers; records the Evaluation."""
        task = self._task(inp.task_ref)
        params = {"model": task.teacher.model, "max_new_tokens": JUDGE_MAX_NEW_TOKENS, "retries": JUDGE_RETRIES}
        key = output_key(inp.job_id, inp.round, "judge", [inp.predictions, inp.eval_set], params)
        predictions = self._read_jsonl(inp.predictions)
        prompts = {}
        for item in self._read_jsonl(inp.eval_set):
            prompts[str(item["id"])] = judge_question(task, item)
        for i, p in enumerate(predictions):
            if not isinstance(p.get("generation"), str) or str(p.get("id")) not in prompts:
                raise ApplicationError(
                    f'predictions[{i}] needs a string "generation" (a generation scorer) and an eval item "id"',
                    type="INVALID_ARGUMENT",
                    non_retryable=True,
                )
        asked = [p for p in predictions if p["generation"].strip()]
        verdicts: dict[str, tuple[bool, str]] = {}
        if asked:
            answers = self._publish_once(
                f"{key}-answers.jsonl",
                dumps_jsonl(
                    {"id": p["id"], "question": prompts[str(p["id"])], "solution": p["generation"]} for p in asked
                ),
            )
            critiques = self.store.stat(f"{key}-critique-critiques.jsonl")
            if critiques is None:
                request = teacher_pb2.CritiqueRequest(
                    model=common_pb2.ModelRef(base=task.teacher.model),
                    mode=teacher_pb2.CRITIQUE_MODE_CFT,
                    kind=common_pb2.TASK_KIND_OPEN_ENDED,
                    examples=ref_to_pb(answers),
                    sampling=common_pb2.SamplingParams(temperature=0.0, max_new_tokens=JUDGE_MAX_NEW_TOKENS),
                    retries=JUDGE_RETRIES,
                    output_key=f"{key}-critique",
                )
                response = await self._teacher(lambda t: t.critique(request))
                critiques = ref_from_pb(response.critiques)
                if critiques is None:
                    raise ApplicationError("TeacherService.Critique returned no critiques", type="DATA_LOSS")
            for rec in self._read_jsonl(critiques):
                if rec.get("status") == "ok":
                    verdicts[str(rec["id"])] = (rec.get("verdict") == "right", rec.get("critique", ""))
                else:
                    raw = str(rec.get("raw", ""))[:200]
                    verdicts[str(rec["id"])] = (False, f"judge reply did not parse ({rec.get('error', '')}): {raw}")
        rows = []
        for p in predictions:
            correct, reason = verdicts.get(str(p["id"]), (False, "empty answer"))
            rows.append({"id": p["id"], "generation": p["generation"], "correct": correct, "reason": reason})
        verdicts_ref = self._publish_once(f"{key}-verdicts.jsonl", dumps_jsonl(rows))
        accuracy, correct, total = await self._record_evaluation(inp, rows, verdicts_ref)
        win_rate = None
        if inp.baseline is not None:
            base = {str(r["id"]): bool(r["correct"]) for r in self._read_jsonl(inp.baseline)}
            win_rate = win_rate_over(rows, base)
        if (c := inp.round_counts) is not None:
            row = {"job_id": inp.job_id, "round": inp.round, "generated": c.generated, "kept": c.kept, "selected": c.selected,
                   "trained": c.trained, "leaked": c.leaked, "targeted": c.targeted, "train_loss": c.train_loss,
                   "accuracy": accuracy, "adapter_uri": inp.adapter.uri if inp.adapter is not None else ""}  # fmt: skip
            await self._db(self.metadata.record_round, row)
        await self._record_artifacts(inp.job_id, inp.round, {f"verdicts-{inp.stage}": verdicts_ref})
        return JudgeOutput(accuracy=accuracy, correct=correct, total=total, verdicts=verdicts_ref, win_rate=win_rate)
