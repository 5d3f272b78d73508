"""The orchestrator's activities, one module per service they drive (each calls one service, or does
one small data step, and records metadata through `orchestrator.metadata`):

- `data`: prepare_job (the datasets and the `LoopPlan`), tailor_inputs, finish_job (no service);
- `teacher`: generate_examples, critique_examples, reason_examples (rationales, RFT), critique_solutions
  (an answer kind's model critique), analyze_errors, teacher_logprobs (a kd recipe's teacher top-k);
- `student`: evaluate_student (and the round's row), score_samples, select_samples, sample_student
  (an opd chunk's on-policy samples);
- `trainer`: train_adapter (one SFT stage, or the task's recipe);
- the child flows' steps: `baselines` (arm_train_set, compare_baselines), `judging` (judge_answers),
  `tailoring` (ARTE: draft_rationales, crowd_responses, score_preference, build_pairs,
  train_teacher_dpo).

`Activities(config)` is all of them over one artifact store, SQL engine and task-spec cache:
`Activities(config).all()` is what the worker registers. The workflows never import this package:
they call each activity through its declaration (`orchestrator.calls`, and the child flows' own),
by name. `base` holds the shared resources, the service-error mapping and the "output published?
else call the service" step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.activities.baselines import BaselineActivities
from orchestrator.activities.data import DataActivities
from orchestrator.activities.judging import JudgingActivities
from orchestrator.activities.student import StudentActivities
from orchestrator.activities.tailoring import TailoringActivities
from orchestrator.activities.teacher import TeacherActivities
from orchestrator.activities.trainer import TrainerActivities


class Activities(
    DataActivities, TeacherActivities, StudentActivities, TailoringActivities, TrainerActivities, BaselineActivities, JudgingActivities
):
    """Every activity of the distillation loop and its child flows (the classes share one
    `ActivityBase`; tailoring's DPO run uses the trainer's watched `_train`, so it comes first)."""

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        """The activity callables to register on a worker."""
        return [
            self.prepare_job,
            self.evaluate_student,
            self.sample_student,
            self.generate_examples,
            self.analyze_errors,
            self.teacher_logprobs,
            self.critique_examples,
            self.reason_examples,
            self.critique_solutions,
            self.score_samples,
            self.select_samples,
            self.train_adapter,
            self.tailor_inputs,
            self.finish_job,
            self.arm_train_set,
            self.compare_baselines,
            self.judge_answers,
            self.draft_rationales,
            self.crowd_responses,
            self.score_preference,
            self.build_pairs,
            self.train_teacher_dpo,
        ]


__all__ = ["Activities"]
