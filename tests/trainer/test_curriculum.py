"""Update rules against hand-computed steps; every shipped recipe loads; recipe/DPO request validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from syllabus.recipe import RecipeError, load_recipe
from trainer_svc.curriculum import PUDF, SEC, AdaRFT, checkpoint_weights, irt_ability, lr_at
from trainer_svc.packing import bfd_pack

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_sec_update_and_probabilities_match_hand_computation() -> None:
    sec = SEC(arm_of=[0, 0, 1, 2], n_arms=3, alpha=0.5, tau=0.5, seed=0)
    assert sec.probs() == pytest.approx([1 / 3] * 3)
    sec.update({0: 0.4, 1: 0.2})  # arm 2 unsampled: r = 0
    assert sec.q == pytest.approx([0.2, 0.1, 0.0])
    sec.update({0: 0.0, 2: 1.0})
    assert sec.q == pytest.approx([0.1, 0.05, 0.5])
    e = [math.exp(0.1 / 0.5), math.exp(0.05 / 0.5), math.exp(0.5 / 0.5)]
    assert sec.probs() == pytest.approx([x / sum(e) for x in e])
    assert all(sec.arm_of[i] in (0, 1, 2) for i in sec.sample(16))


def test_adarft_target_update_and_batch_match_hand_computation() -> None:
    ada = AdaRFT([0, 10, 45, 60, 100], eta=50, alpha=2, beta=0.5, t0=0, lo=0, hi=100)
    assert ada.sample(2) == [0, 1]
    ada.update(0.9)  # T = 0 + 50 tanh(2 * 0.4)
    assert ada.target == pytest.approx(50 * math.tanh(0.8))  # 33.20
    assert ada.sample(2) == [2, 1]  # |45-33.2| = 11.8, |10-33.2| = 23.2
    ada.update(0.0)  # 33.2 + 50 tanh(-1) = -4.88 -> clipped to 0
    assert ada.target == 0
    ada.target = 95
    ada.update(1.0)
    assert ada.target == 100


def test_pudf_ability_and_cap() -> None:
    # All right on easy items: ability above 0; all wrong: below.
    assert irt_ability([-1, 0, 1], [True, True, True]) > 0 > irt_ability([-1, 0, 1], [False, False, False])
    theta = irt_ability([0.0], [True])
    # stationary point of -t^2/2 + log(1 + (2 sigmoid(t) - 1)) = -t^2/2 + log(2 sigmoid(t))
    assert -theta + (1 - 1 / (1 + math.exp(-theta))) == pytest.approx(0, abs=1e-4)
    p = PUDF([-2, -1, 0, 1, 2], step=0.1)
    p.update(0.5)
    assert p.cap == 0.5 and p.eligible() == [0, 1, 2]
    p.update(0.2)  # no improvement: cap moves by step
    assert p.cap == pytest.approx(0.6)


def test_schedules_and_averaging_weights() -> None:
    assert lr_at(0, 10, 1.0, 0.2) == 0.0 and lr_at(1, 10, 1.0, 0.2) == 0.5  # warm-up as in transformers
    assert lr_at(2, 10, 1.0, 0.2) == pytest.approx(1.0)
    assert lr_at(10, 10, 1.0, 0.0, "cosine", 0.3) == pytest.approx(0.3)  # moderate decay floor
    assert lr_at(5, 10, 1.0, 0.0, "linear", 0.0) == pytest.approx(0.5)
    assert lr_at(7, 10, 1.0, 0.0, "constant") == 1.0
    assert checkpoint_weights(3, 0.5) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_bfd_packing_fits_and_keeps_every_sample() -> None:
    lengths = [700, 300, 500, 200, 100, 900, 50]
    bins = bfd_pack(lengths, 1000)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 1000 for b in bins)
    assert len(bins) == 3


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("#") and ("Run:" in text.split("\n\n")[0] or "Use:" in text.split("\n\n")[0])  # header says how to use it
    recipe = load_recipe(text)
    assert recipe.stages


def test_recipe_errors_name_the_field() -> None:
    with pytest.raises(RecipeError, match=r"stages\.1\.lr"):
        load_recipe("stages: [{lr: 1e-3}, {lr: -1}]")
    with pytest.raises(RecipeError, match=r"stages\.0\.curriculum\.score_key"):
        load_recipe("stages: [{curriculum: {policy: static}}]")
    with pytest.raises(RecipeError, match=r"stages\.0\.bogus"):
        load_recipe("stages: [{bogus: 1}]")
    with pytest.raises(RecipeError, match="dpo needs a LoRA"):
        load_recipe("stages: [{objective: dpo, lora: null}]")


def test_dpo_request_becomes_a_one_stage_dpo_recipe() -> None:
    from syllabus_sdk.common.v1 import common_pb2
    from syllabus_sdk.trainer.v1 import trainer_pb2
    from trainer_svc.jobs import InvalidRequest, plan_from_request

    req = trainer_pb2.StartTrainingRequest(
        job_key="k",
        model=common_pb2.ModelRef(base="bundled:smollm2-135m-instruct"),
        dataset=common_pb2.ArtifactRef(uri="file:///x/pairs.jsonl"),
        lora=trainer_pb2.LoraSpec(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]),
        training=trainer_pb2.TrainingSpec(epochs=1, learning_rate=1e-5, batch_size=16, warmup_ratio=0.1),
        output_key="teacher/dpo.tar",
        objective=trainer_pb2.OBJECTIVE_DPO,
        dpo=trainer_pb2.DpoSpec(beta=0.2),
    )
    plan = plan_from_request(req)
    st = plan.recipe.stages[0]
    assert (st.objective, st.dpo_beta, st.lr, st.lora.rank) == ("dpo", pytest.approx(0.2), pytest.approx(1e-5), 8)
    req.objective = trainer_pb2.OBJECTIVE_SFT
    sft = plan_from_request(req)
    # one trainer path: a plain SFT request is a one-stage recipe of batch_size samples per step, packed
    assert (sft.recipe.stages[0].objective, sft.recipe.packing, sft.recipe.samples_per_step, sft.pairs_only) == ("sft", True, 16, True)
    req.recipe_yaml = "stages: [{lr: 0}]"
    with pytest.raises(InvalidRequest, match="recipe_yaml"):
        plan_from_request(req)


def test_ability_estimate_follows_answers() -> None:
    b = [-2 + 0.5 * i for i in range(9)]
    strong = irt_ability(b, [True] * 8 + [False])
    weak = irt_ability(b, [True] + [False] * 8)
    assert strong > 0.5 > -0.5 > weak


def test_pudf_source_probes_held_out_records_and_waits_for_theta_0() -> None:
    from syllabus.recipe import Recipe
    from trainer_svc.staged import PUDFSource, read_records, select_records

    records = [{"prompt": "p", "response": "r", "b": x} for x in (-1.0, 0.0, 1.0, 2.0)] + [
        {"prompt": "p", "response": "r", "b": 0.5, "heldout": True},
        {"prompt": "p", "response": "r", "heldout": True},  # no difficulty: held out, but no probe
    ]
    r = load_recipe("packing: false\nbatch_size: 2\nstages: [{curriculum: {policy: pudf, score_key: b}}]")
    assert select_records(records, r.stages[0]) == [0, 1, 2, 3]
    assert select_records(records, Recipe.model_validate({"stages": [{}]}).stages[0]) == [0, 1, 2, 3]
    src = PUDFSource(r, r.stages[0], [0, 1, 2, 3], [5] * 6, records, seed=0)
    assert (src.probe, src.probe_b, src.probe_from) == ([4], [0.5], "heldout")
    with pytest.raises(RuntimeError, match="ability"):
        src.next_rows()  # no epoch before theta_0
    src.set_ability([True])
    theta = irt_ability([0.5], [True])
    assert src.abilities == [theta] and src.caps == [max(theta, -1.0)]
    epoch = [i for _ in range(math.ceil(len(src.pudf.eligible()) / 2)) for row in src.next_rows() for i in row]
    assert sorted(epoch) == [i for i in range(4) if records[i]["b"] <= src.caps[0]]
    assert src.pending_ability  # the epoch ended: the next one waits for a new estimate
    with pytest.raises(ValueError, match='"heldout" must be true or false'):
        read_records(b'{"prompt": "p", "response": "r", "heldout": "yes"}\n')
