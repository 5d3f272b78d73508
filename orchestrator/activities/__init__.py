"""The orchestrator's activities, one module per service they drive (each calls one service, or does
one small data step, and records metadata through `orchestrator.metadata`):

- `data`: prepare_job (the datasets and the `LoopPlan`), tailor_inputs, finish_job (no service);
- `teacher`: generate_examples, critique_examples, reason_examples (rationales, RFT), critique_solutions
  (an answer kind's model critique), analyze_errors, teacher_logprobs (a kd recipe's teacher top-k);
- `student`: evaluate_student (and the round's row), score_samples, select_samples, sample_student
  (an opd chunk's on-policy samples);
- `trainer`: train_adapter (one SFT stage, or the task's recipe).

`Activities(config)` is all of them over one artifact store, SQL engine and task-spec cache:
`Activities(config).all()` is what the worker registers, and the workflow refers to each as
`Activities.<name>`. `base` holds the shared resources, the service-error mapping and the
"output published? else call the service" step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.activities.data import DataActivities
from orchestrator.activities.student import StudentActivities
from orchestrator.activities.teacher import TeacherActivities
from orchestrator.activities.trainer import TrainerActivities


class Activities(DataActivities, TeacherActivities, StudentActivities, TrainerActivities):
    """Every activity of the distillation loop (the per-service classes share one `ActivityBase`)."""

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
        ]


__all__ = ["Activities"]
