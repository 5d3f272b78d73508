"""The task's `baselines` section and the arms' shared names and recipes."""

from __future__ import annotations

import pytest

from syllabus.baselines import (
    ARMS,
    COMPARISONS,
    ROUND_SEED_STRIDE,
    arm_recipe,
    arm_stage,
    parse_arm_stage,
    round_recipe,
)
from syllabus.recipe import Recipe
from syllabus.tasks import TaskSpecError, parse_task

pytestmark = pytest.mark.unit

GOOD = """\
name: t
kind: classification
instructions: Classify.
labels: [a, b]
seeds: [{input: one, label: a}, {input: two, label: b}]
eval: [{input: three, label: a}]
"""
CURRICULUM = "train: {recipe: {stages: [{curriculum: {policy: static, score_key: learnability_pct}}]}}\n"


def test_baselines_are_off_by_default_and_a_list_or_a_mapping() -> None:
    assert parse_task(GOOD).baselines is None
    task = parse_task(GOOD + "baselines: [seeds_only, all_kept, random]\n")
    assert (task.baselines.arms, task.baselines.repeats) == (["seeds_only", "all_kept", "random"], 1)
    task = parse_task(GOOD + CURRICULUM + "baselines: {arms: [random, shuffled], repeats: 3}\n")
    assert (task.baselines.arms, task.baselines.repeats) == (["random", "shuffled"], 3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("baselines: [random, random]", "task: baselines.arms: random given twice"),
        ("baselines: [bogus]", "task: baselines.arms[0]: Input should be 'seeds_only', 'all_kept', 'random', 'shuffled' or 'sft'"),
        ("baselines: []", "task: baselines.arms: List should have at least 1 item after validation, not 0"),
        ("baselines: {arms: [random], repeats: 0}", "task: baselines.repeats: Input should be greater than or equal to 1"),
        ("baselines: {arms: [random], seeds: 2}", "task: baselines.seeds: unknown key"),
        ("baselines: [shuffled]", ("task: baselines.arms: shuffled compares a curriculum with a shuffled order, but train.recipe "
                                  "has no curriculum (the arm would repeat the loop's own training); drop shuffled")),
        ("train: {recipe: {stages: [{curriculum: {policy: shuffled}}]}}\nbaselines: [shuffled]", "drop shuffled"),
    ],
)  # fmt: skip
def test_bad_baselines_fail_with_one_line(extra: str, message: str) -> None:
    with pytest.raises(TaskSpecError) as e:
        parse_task(GOOD + extra + "\n")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_stage_names_round_trip() -> None:
    assert arm_stage("random", 0) == "baseline-random" and arm_stage("seeds_only", 2) == "baseline-seeds_only-3"
    for arm in ARMS:
        for repeat in range(3):
            assert parse_arm_stage(arm_stage(arm, repeat)) == (arm, repeat)
    assert [parse_arm_stage(s) for s in ("sft", "recipe", "reference", "baseline", "baseline-other")] == [None] * 5
    assert set(COMPARISONS) == set(ARMS)


def test_arm_recipe_shuffles_every_curriculum_and_moves_the_seed_by_the_repeat() -> None:
    recipe = Recipe.model_validate({"seed": 7, "stages": [
        {"name": "easy", "data": {"score_key": "learnability_pct", "min_score": 0.5}, "curriculum": {"policy": "static", "score_key": "x"}},
        {"name": "hard", "curriculum": {"policy": "sec"}, "epochs": 2},
    ]})  # fmt: skip
    assert arm_recipe(recipe, "", 0) is recipe and arm_recipe(recipe, "random", 0) is recipe
    shuffled = arm_recipe(recipe, "shuffled", 0)
    assert [st.curriculum.policy for st in shuffled.stages] == ["shuffled", "shuffled"]
    # Only the order changes: data filters, epochs and the seed stay the loop's.
    assert shuffled.stages[0].data == recipe.stages[0].data and shuffled.stages[1].epochs == 2 and shuffled.seed == 7
    assert arm_recipe(recipe, "all_kept", 2).seed == 9 and arm_recipe(recipe, "all_kept", 2).stages == recipe.stages


def test_each_round_trains_with_its_own_seed_apart_from_the_repeats() -> None:
    recipe = Recipe.model_validate({"seed": 7, "stages": [{"name": "all", "hft": True}]})
    assert round_recipe(recipe, 1) is recipe
    seeds = {round_recipe(arm_recipe(recipe, "all_kept", k), r).seed for r in (1, 2, 3) for k in (0, 1, 2)}
    assert len(seeds) == 9 and round_recipe(recipe, 3).seed == 7 + 2 * ROUND_SEED_STRIDE
    assert round_recipe(recipe, 2).stages == recipe.stages


def test_open_ended_tasks_have_no_right_or_wrong_items_to_pair() -> None:
    task = "name: t\nkind: open_ended\ninstructions: Answer.\nrubric: Be right.\nseeds: [{input: q, answer: a}]\neval: [{input: r, answer: b}]\n"
    assert parse_task(task).baselines is None
    with pytest.raises(TaskSpecError, match="baselines: the arms are compared item by item"):
        parse_task(task + "baselines: [seeds_only]\n")
