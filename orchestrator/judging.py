"""Judge-based evaluation as an orchestrated step: the teacher judges the student's open-ended answers.

    student Evaluate (a generation scorer; predictions carry "generation")
        -> `judge_answers` (`orchestrator.activities.judging`): teacher Critique on the answers -> accuracy, reasons

The student never calls the teacher (services are stateless compute); this activity carries the
student's answers to the teacher. The teacher reads "Question: ... Solution: <answer>" and writes a
critique and its verdict right/wrong (CRITIQUE_MODE_CFT, JSON by structured output: the model-based
judge; the rule-based CRITIQUE_MODE_RULES vets generated training examples and cannot judge an
answer). An answer is correct when the verdict is "right"; a reply that never parses counts as wrong with the raw reply
as the reason; an empty answer is wrong without asking the teacher. Accuracy = the share judged right.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.activity_io import RoundCounts
from syllabus.artifacts import ArtifactRef

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
