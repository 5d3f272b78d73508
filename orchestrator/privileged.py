"""The teacher's privileged context of context distillation (`teacher.context`): the text put
before every record's prompt when the teacher scores the training records for a kd stage.

Deterministic from the task alone, so a retry sends the same text and the teacher's
content-addressed artifact is found again.
"""

from __future__ import annotations

from syllabus.tasks import ContextSpec, TaskSpec


def privileged_context(task: TaskSpec, ctx: ContextSpec | None = None) -> str:
    """The text of `ctx` (default: `teacher.context`) for `task`; "" when there is none."""
    ctx = ctx if ctx is not None else task.teacher.context
    if ctx is None:
        return ""
    kind = task.kind_spec
    parts = [ctx.text.strip()] if ctx.text.strip() else []
    if ctx.rubric and task.rubric:
        parts.append(f"How answers are graded:\n{task.rubric.strip()}")
    if ctx.seeds:
        if kind.has_labels:
            demos = [s for label in task.labels for s in [s for s in task.seeds if s.label == label][: ctx.seeds]]
        else:
            demos = task.seeds[: ctx.seeds]
        # a worked-solution kind's response ends in its own "Answer:" line
        answer = "{}" if kind.solution_seeds else "Answer: {}"
        lines = [f"Input: {s.input.strip()}\n" + answer.format(kind.seed_response(s.label, s.solution)) for s in demos]
        parts.append("Solved examples:\n\n" + "\n\n".join(lines))
    return "\n\n".join(parts)
