"""Judge-based evaluation as an orchestrated step: the teacher judges the student's open-ended answers.

    student Evaluate (a generation scorer; predictions carry "generation")
        -> `JudgingActivities.judge_answers`: teacher Critique on the answers -> accuracy, reasons

The student never calls the teacher (services are stateless compute); this activity carries the
student's answers to the teacher. The teacher reads "Question: ... Solution: <answer>" and writes a
critique and its verdict right/wrong (CRITIQUE_MODE_CFT, JSON by structured output: the model-based
judge; the rule-based CRITIQUE_MODE_RULES vets generated training examples and cannot judge an
answer). An answer is correct when the verdict is "right"; a reply that never parses counts as wrong with the raw reply
as the reason; an empty answer is wrong without asking the teacher. Accuracy = the share judged right.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import activity
from temporalio.exceptions import ApplicationError

from orchestrator.activities import Activities
from orchestrator.keys import output_key
from orchestrator.types import RoundCounts
from syllabus.artifacts import ArtifactRef
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.records import dumps_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2

# Room for a short critique and its conclusion line; one retry of a reply that does not parse.
JUDGE_MAX_NEW_TOKENS = 192
JUDGE_RETRIES = 1


@dataclass
class JudgeInput:
    job_id: str
    # The task spec: its teacher model judges.
    task_ref: ArtifactRef
    round: int
    # Recorded as the Evaluation's stage (e.g. "baseline-judge", "judge").
    stage: str
    # StudentService.Evaluate's predictions: "id" and "generation" per item.
    predictions: ArtifactRef
    # The eval items the predictions answer: "id" and "prompt" (or "input").
    eval_set: ArtifactRef
    # The student adapter that answered (recorded only).
    adapter: ArtifactRef | None = None
    # The base student's verdicts (the baseline's JudgeOutput.verdicts): the win rate is against them.
    baseline: ArtifactRef | None = None
    # A round's final evaluation: the round's row is written with these counters and the judge's score.
    round_counts: RoundCounts | None = None


@dataclass
class JudgeOutput:
    accuracy: float  # the judge's mean score: the share of answers judged right
    correct: int
    total: int
    # One record per prediction: "id", "generation", "correct", "reason".
    verdicts: ArtifactRef
    # Against `baseline`, per item: 1 right where the base was wrong, 0.5 a tie, 0 else; mean. None without.
    win_rate: float | None = None


class JudgingActivities:
    """The judge step; store, task specs and unary calls come from the loop's `Activities`."""

    def __init__(self, base: Activities) -> None:
        self.base = base

    @activity.defn
    async def judge_answers(self, inp: JudgeInput) -> JudgeOutput:
        """TeacherService.Critique (CFT judge) on the student's answers; records the Evaluation."""
        task = self.base._task(inp.task_ref)
        params = {"model": task.teacher.model, "max_new_tokens": JUDGE_MAX_NEW_TOKENS, "retries": JUDGE_RETRIES}
        key = output_key(inp.job_id, inp.round, "judge", [inp.predictions, inp.eval_set], params)
        predictions = self.base._read_jsonl(inp.predictions)
        prompts = {}
        for item in self.base._read_jsonl(inp.eval_set):
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
            answers = self.base._publish_once(
                f"{key}-answers.jsonl",
                dumps_jsonl(
                    {"id": p["id"], "question": prompts[str(p["id"])], "solution": p["generation"]} for p in asked
                ),
            )
            critiques = self.base.store.stat(f"{key}-critique-critiques.jsonl")
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
                response = await self.base._teacher(lambda t: t.critique(request))
                critiques = ref_from_pb(response.critiques)
                if critiques is None:
                    raise ApplicationError("TeacherService.Critique returned no critiques", type="DATA_LOSS")
            for rec in self.base._read_jsonl(critiques):
                if rec.get("status") == "ok":
                    verdicts[str(rec["id"])] = (rec.get("verdict") == "right", rec.get("critique", ""))
                else:
                    raw = str(rec.get("raw", ""))[:200]
                    verdicts[str(rec["id"])] = (False, f"judge reply did not parse ({rec.get('error', '')}): {raw}")
        rows = []
        for p in predictions:
            correct, reason = verdicts.get(str(p["id"]), (False, "empty answer"))
            rows.append({"id": p["id"], "generation": p["generation"], "correct": correct, "reason": reason})
        verdicts_ref = self.base._publish_once(f"{key}-verdicts.jsonl", dumps_jsonl(rows))
        accuracy, correct, total = await self.base._record_evaluation(inp, rows, verdicts_ref)
        win_rate = None
        if inp.baseline is not None:
            base = {str(r["id"]): bool(r["correct"]) for r in self.base._read_jsonl(inp.baseline)}
            win_rate = win_rate_over(rows, base)
        if (c := inp.round_counts) is not None:
            row = {"job_id": inp.job_id, "round": inp.round, "generated": c.generated, "kept": c.kept, "selected": c.selected,
                   "trained": c.trained, "leaked": c.leaked, "targeted": c.targeted, "train_loss": c.train_loss,
                   "accuracy": accuracy, "adapter_uri": inp.adapter.uri if inp.adapter is not None else ""}  # fmt: skip
            await self.base._db(self.base.metadata.record_round, row)
        await self.base._record_artifacts(inp.job_id, inp.round, {f"verdicts-{inp.stage}": verdicts_ref})
        return JudgeOutput(accuracy=accuracy, correct=correct, total=total, verdicts=verdicts_ref, win_rate=win_rate)

    def all(self) -> list:
        """The activity callables to register on a worker."""
        return [self.judge_answers]


def judge_question(task, item: dict) -> str:
    """What the judge reads as the question: the student's prompt, the task's rubric and the
    item's reference answer when there is one."""
    question = item.get("prompt") or item.get("input") or ""
    if task.rubric:
        question += f"\n\nGrade by this rubric:\n{task.rubric.strip()}"
    if item.get("label"):
        question += f"\n\nA reference answer: {item['label']}"
    return question


def win_rate_over(rows: list[dict], base: dict[str, bool]) -> float | None:
    """Mean over items judged both times of 1 (right, the base wrong), 0.5 (the same verdict), 0."""
    scores = [1.0 if r["correct"] and not base[i] else 0.5 if bool(r["correct"]) == base[i] else 0.0
              for r in rows if (i := str(r["id"])) in base]  # fmt: skip
    return sum(scores) / len(scores) if scores else None
