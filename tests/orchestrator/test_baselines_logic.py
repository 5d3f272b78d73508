"""Pure logic of the baseline arms' training sets and of the progress ETAs."""

from __future__ import annotations

import random

import pytest

from orchestrator.baselines import arm_records
from orchestrator.eta import estimate, planned_steps
from orchestrator.types import LoopPlan, PlannedStep, StepTime

pytestmark = pytest.mark.unit

CANDIDATES = [{"id": f"c{i}", "input": f"gen {i}", "label": "a", "category": "expand"} for i in range(6)]
SEEDS = [{"id": "s1", "input": "one", "label": "a", "category": "seed"}, {"id": "s2", "input": "two", "label": "b", "category": "seed"}]
SCORES = {r["id"]: {"id": r["id"], "learnability": i / 10, "learnability_pct": i / 8} for i, r in enumerate(CANDIDATES + SEEDS)}
HELDOUT = {"id": "heldout:v1", "input": "v", "label": "a", "category": "heldout", "heldout": True}
# The loop's training set: its selection (c4, c5), the seeds, the held-out record.
LOOP = [{**CANDIDATES[5], "learnability": 0.5}, {**CANDIDATES[4], "learnability": 0.4}, *SEEDS, HELDOUT]


def records(arm: str, selected: int = 2, seed: int = 0) -> list[dict]:
    return arm_records(arm, LOOP, CANDIDATES, SEEDS, SCORES, selected, random.Random(seed))


def test_each_arm_trains_on_what_its_name_says() -> None:
    assert [r["id"] for r in records("seeds_only")] == ["s1", "s2", "heldout:v1"]
    assert [r["id"] for r in records("all_kept")] == ["c0", "c1", "c2", "c3", "c4", "c5", "s1", "s2", "heldout:v1"]
    assert records("shuffled") == LOOP  # the loop's own set; its recipe's curricula are what changes
    rand = records("random")
    picked = [r["id"] for r in rand if r["category"] == "expand"]
    assert len(picked) == 2 and set(picked) <= {r["id"] for r in CANDIDATES}  # the selection's size
    assert [r["id"] for r in rand][2:] == ["s1", "s2", "heldout:v1"]
    assert picked == random.Random(0).sample(sorted(r["id"] for r in CANDIDATES), 2)
    assert records("random", seed=1) != rand or records("random", seed=2) != rand  # each repeat draws its own
    assert len([r for r in records("random", selected=99) if r["category"] == "expand"]) == 6
    # Every record carries its score columns, as the loop's do (recipe score bands filter on them).
    assert all("learnability_pct" in r for r in records("all_kept") if not r.get("heldout"))
    with pytest.raises(ValueError, match="unknown baseline arm"):
        records("bogus")


def test_a_round_without_candidates_trains_every_arm_on_the_seeds() -> None:
    for arm in ("seeds_only", "all_kept", "random"):
        assert [r["id"] for r in arm_records(arm, SEEDS, [], SEEDS, {}, 0, random.Random(0))] == ["s1", "s2"]


def test_the_plan_lists_each_rounds_steps_in_order() -> None:
    plan = LoopPlan(reasoning=["rationales"], stages=["easy", "hard"], baselines=["random"], tailor_every=1, targeted=True)
    steps = planned_steps(plan, 2)
    assert steps[:2] == [PlannedStep("prepare", 0), PlannedStep("baseline-eval", 0)]
    r1 = [s.name for s in steps if s.round == 1]
    assert r1 == ["generate", "critique", "rationales", "reference-train", "score", "select", "train", "evaluate", "baselines",
                  "validation-eval", "analyze", "tailor"]  # fmt: skip
    assert [s.name for s in steps if s.round == 2][-2:] == ["evaluate", "baselines"]  # nothing after the last round's
    assert "reference-train" not in [s.name for s in planned_steps(LoopPlan(metrics=["ifd"]), 1)]


def test_eta_prices_the_remaining_plan_by_the_timed_steps() -> None:
    plan = [PlannedStep("prepare", 0), *(PlannedStep(n, r) for r in (1, 2) for n in ("generate", "train", "evaluate"))]
    # Nothing timed in a round yet: unknown.
    assert estimate(plan, [StepTime("prepare", 0, 1.0)], 1, "generate", 3.0) == (None, None)
    # Round 1 mid-way: the unseen steps are priced at the mean of the timed ones (generate: 10 s).
    done = [StepTime("prepare", 0, 1.0), StepTime("generate", 1, 10.0)]
    step, job = estimate(plan, done, 1, "train", 4.0, progress=(2, 10))
    assert step == pytest.approx(16.0)  # 4 s for 2 of 10 steps: 8 steps at 2 s
    assert job == pytest.approx(16.0 + 10.0 + 3 * 10.0)  # evaluate r1, then round 2's three steps
    # A recipe's per-stage times count as one train step; round 2 is priced by round 1's times.
    done += [StepTime("train-stage-1", 1, 20.0), StepTime("train-stage-2", 1, 30.0), StepTime("evaluate", 1, 5.0)]
    step, job = estimate(plan, done, 2, "generate", 4.0)
    assert step == pytest.approx(6.0) and job == pytest.approx(6.0 + 50.0 + 5.0)
    # A step that ran longer than usual has no time left, not a negative one.
    assert estimate(plan, done, 2, "evaluate", 60.0) == (0.0, 0.0)
    # Between rounds (no planned step running): the rounds still to come.
    assert estimate(plan, done, 1, "", 0.0) == (None, pytest.approx(10.0 + 50.0 + 5.0))
