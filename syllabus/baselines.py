"""Counterfactual baseline arms (the task's `baselines`): names, what each measures, and their recipes.

Shared by the orchestrator (which trains and evaluates the arms) and the report (which reads their
rows back): an arm's training runs and evaluations are recorded under the stage `arm_stage(arm,
repeat)` — "baseline-random" for the first repeat, "baseline-random-2" for the second, ...
"""

from __future__ import annotations

import re

from syllabus.recipe import Curriculum, Recipe

ARMS = ("seeds_only", "all_kept", "random", "shuffled", "sft")
#: Recipe objectives the `sft` arm replaces with plain SFT (token-level distillation and its kin).
TOKEN_OBJECTIVES = frozenset({"kd", "opd", "dft", "anchored"})
# What the loop's lift over each arm measures (the verdict's label).
COMPARISONS = {
    "seeds_only": "generated data",  # the loop vs the seeds alone: what the teacher's data bought
    "all_kept": "selection",  # the loop vs every kept candidate: what selecting (dropping) bought
    "random": "selection vs random",  # the loop vs a random subset of the same size: what the scores bought
    "shuffled": "curriculum",  # the loop vs its own data in shuffled order: what the ordering bought
    "sft": "distillation objective",  # the loop vs its own data under plain SFT: what kd/dft/anchored bought
}
STAGE_PREFIX = "baseline-"
_STAGE = re.compile(r"^baseline-(seeds_only|all_kept|random|shuffled|sft)(?:-(\d+))?$")


def arm_stage(arm: str, repeat: int) -> str:
    """The stage name of an arm's training run and evaluation: "baseline-<arm>[-<repeat + 1>]"."""
    return f"{STAGE_PREFIX}{arm}" + (f"-{repeat + 1}" if repeat else "")


def parse_arm_stage(stage: str) -> tuple[str, int] | None:
    """(arm, repeat) of an arm's stage name; None for the loop's own stages."""
    m = _STAGE.match(stage)
    if m is None:
        return None
    return m.group(1), int(m.group(2)) - 1 if m.group(2) else 0


ROUND_SEED_STRIDE = 1000
"""Round r trains a recipe with seed + (r - 1) x this, apart from the repeats' seed + repeat."""


def round_recipe(recipe: Recipe, round_: int) -> Recipe:
    """The recipe round `round_` trains with: its seed moved by the round, so each round draws a new
    shuffle and, with `hft`, freezes a new random half (Half Fine-Tuning picks a fresh half for each
    round of sequential training; one seed for every round would freeze the same half each time)."""
    return recipe.model_copy(update={"seed": recipe.seed + (round_ - 1) * ROUND_SEED_STRIDE}) if round_ > 1 else recipe


def arm_recipe(recipe: Recipe, arm: str, repeat: int) -> Recipe:
    """The recipe an arm trains with: the loop's, its seed moved by the repeat; for `shuffled`, every
    stage's curriculum replaced by the seeded shuffle (data filters, epochs and schedule unchanged); for
    `sft`, every kd / dft / anchored stage's objective replaced by plain SFT (everything else unchanged)."""
    update: dict = {"seed": recipe.seed + repeat} if repeat else {}
    if arm == "shuffled":
        update["stages"] = tuple(st.model_copy(update={"curriculum": Curriculum(policy="shuffled")}) for st in recipe.stages)
    if arm == "sft":
        update["stages"] = tuple(st.model_copy(update={"objective": "sft"}) if st.objective in TOKEN_OBJECTIVES else st
                                 for st in recipe.stages)  # fmt: skip
    return recipe.model_copy(update=update) if update else recipe
