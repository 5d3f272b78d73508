"""The task-file side of distillation: kd recipes, the `sft` arm, `teacher.context` and the text a
privileged teacher reads."""

from __future__ import annotations

import pytest

from orchestrator.activities.data import plan_of
from orchestrator.privileged import privileged_context
from syllabus.baselines import arm_recipe
from syllabus.tasks import TaskSpecError, parse_task

pytestmark = pytest.mark.unit

TASK = """\
name: t
kind: classification
instructions: Classify.
labels: [a, b]
seeds: [{input: one, label: a}, {input: uno, label: a}, {input: two, label: b}, {input: dos, label: b}]
eval: [{input: three, label: a}]
"""
KD = "train: {recipe: {stages: [{objective: kd, distill: {top_k: 12, alpha: 0.8}}]}}\n"


def test_kd_recipe_plans_the_teacher_steps_and_the_sft_arm_replaces_only_the_objective() -> None:
    task = parse_task(TASK + KD + "baselines: [sft]\n")
    assert plan_of(task).distill_top_k == 12
    assert plan_of(parse_task(TASK)).distill_top_k == 0
    stage = arm_recipe(task.train.recipe, "sft", 0).stages[0]
    assert stage.objective == "sft" and stage.distill.alpha == 0.8 and stage.lr == task.train.recipe.stages[0].lr
    assert arm_recipe(task.train.recipe, "random", 0).stages[0].objective == "kd"
    # an endpoint teacher is checked by the job's distill-check step (only the server knows its configuration)
    assert plan_of(parse_task(TASK + "teacher: {model: 'openai:x'}\n" + KD)).distill_top_k == 12
    opd = parse_task(TASK + "train: {recipe: {stages: [{objective: opd, on_policy: {chunks: 3}}]}}\nbaselines: [sft]\n")
    assert (plan_of(opd).opd_chunks, plan_of(opd).distill_top_k) == (3, 20) and plan_of(task).opd_chunks == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("baselines: [sft]\n", "baselines.arms: sft compares a distillation objective"),
        ("teacher: {context: {seeds: 1}}\n", "teacher.context: only a kd or opd stage reads"),
        ("teacher: {context: {}}\n" + KD, "give seeds, rubric or text"),
        ("teacher: {context: {rubric: true}}\n" + KD, "teacher.context.rubric: the task has no rubric"),
        ("train: {recipe: {stages: [{objective: anchored, lora: null}]}}\n", "anchored needs a LoRA"),
        ("train: {recipe: {stages: [{objective: opd}, {objective: sft}]}}\n", "an opd stage trains on the student's own samples"),
        ("teachers: [{model: a}, {model: b}]\n", "teachers: each round reallocates the teachers' shares by their CAR"),
        ("teachers: [{model: a}, {model: a}]\nscore: {metrics: [compatibility]}\n", "teachers: each model at most once"),
        ("teacher: {model: c}\nteachers: [{model: a}, {model: b}]\nscore: {metrics: [compatibility]}\n", "give teacher or teachers"),
        ("teachers: [{model: a}]\n", "teachers: List should have at least 2 items"),
        ("train: {recipe: {stages: [{objective: opd}]}}\nbaselines: [random]\n", "with an opd stage only the sft arm runs"),
    ],
)
def test_distillation_mistakes_are_one_line_errors(extra: str, message: str) -> None:
    with pytest.raises(TaskSpecError) as e:
        parse_task(TASK + extra)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_privileged_context_shows_the_seeds_per_label_and_the_text() -> None:
    task = parse_task(TASK + KD + "teacher: {context: {seeds: 1, text: 'Think of the bank.'}}\n")
    assert privileged_context(task) == (
        "Think of the bank.\n\nSolved examples:\n\nInput: one\nAnswer: a\n\nInput: two\nAnswer: b"
    )
    assert privileged_context(parse_task(TASK + KD)) == ""
    numeric = parse_task(
        "name: n\nkind: numeric\ninstructions: Solve.\n"
        "seeds: [{input: '1+1?', answer: '2', solution: '1 + 1 = 2'}, {input: '2+2?', answer: '4'}]\n"
        "eval: [{input: '3+3?', answer: '6'}]\n" + KD + "teacher: {context: {seeds: 2}}\n"
    )
    assert privileged_context(numeric) == "Solved examples:\n\nInput: 1+1?\n1 + 1 = 2\nAnswer: 2\n\nInput: 2+2?\nAnswer: 4"


def test_the_distill_example_is_context_distillation_with_the_sft_arm() -> None:
    from pathlib import Path

    from syllabus.tasks import dump_task, load_task

    task = load_task(Path(__file__).resolve().parents[2] / "examples/banking77/distill.yaml")
    assert task.teacher.model == task.student.model and task.teacher.context.seeds == 2
    assert plan_of(task).distill_top_k == 20 and task.baselines.arms == ["sft"]
    context = privileged_context(task)
    assert context.count("Input: ") == 2 * len(task.labels) and all(f"Answer: {label}" in context for label in task.labels)
    assert parse_task(dump_task(task), inline_only=True) == task


def test_several_teachers_plan_their_budget_keys_and_the_first_is_the_teacher() -> None:
    task = parse_task(TASK + KD + "teachers: [{model: a, share: 3}, {model: b, context: {seeds: 1}}]\nscore: {metrics: [compatibility]}\n")
    assert task.teacher.model == "a" and [t.model for t in task.teacher_list] == ["a", "b"]
    assert plan_of(task).teachers == ["teacher:a", "teacher:b"] and plan_of(parse_task(TASK)).teachers == []
    assert privileged_context(task, task.teachers[1].context).count("Input: ") == 2 and privileged_context(task) == ""
