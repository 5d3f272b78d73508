"""HFT and checkpoint averaging asserted on the parameter tensors the staged trainer leaves.

The LoRA weights are read from the model passed in (peft adapts it in place), at the steps the
trainer reports through `on_step`: no model is mocked, nothing is read back from the trainer's
own bookkeeping.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from syllabus.baselines import round_recipe
from syllabus.models import load_model
from syllabus.recipe import Recipe
from trainer_svc.staged import new_adapter, train_recipe

pytestmark = pytest.mark.unit

CATS = ["card_arrival", "exchange_rate", "top_up_failed", "lost_card"]
RECORDS = [{"prompt": f"Classify: customer message {i} about {c}", "response": c} for i, c in enumerate(CATS * 3)]
LORA = {"rank": 2, "alpha": 4, "targets": ["q_proj", "v_proj", "up_proj", "down_proj"]}


def lora_params(lm) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in lm.named_parameters() if "lora_" in n}


def unit(name: str) -> str:
    return re.sub(r"\.lora_[AB]\..*$", "", name)


def unchanged_units(before: dict, after: dict) -> set[str]:
    """Modules whose A and B both kept every value."""
    units = {unit(n) for n in before}
    moved = {unit(n) for n in before if not torch.equal(before[n], after[n])}
    return units - moved


def group(u: str) -> tuple[str, str]:
    layer = re.search(r"layers\.(\d+)\.", u).group(1)
    return layer, "attn" if "self_attn" in u else "mlp"


def recipe(**over) -> Recipe:
    base = {"seed": 5, "max_seq_len": 64, "row_tokens": 128, "rows_per_step": 2, "batch_size": 4, "bf16": False}
    return Recipe.model_validate({**base, **over})


def test_hft_freezes_half_of_each_layer_and_category_and_a_new_half_per_stage_and_round(tiny_model_dir: Path) -> None:
    stage = {"lr": 2e-2, "steps": 4, "lora": LORA, "hft": True, "after": "continue"}
    r = recipe(stages=[stage, {**stage, "lora": LORA}])

    def run(r: Recipe) -> tuple[set[str], set[str], set[str]]:
        lm, tok = load_model(str(tiny_model_dir))
        init_lm, _ = load_model(str(tiny_model_dir))
        # the stage's fresh adapter, built as the trainer builds it (same seed): the weights before step 1
        init = {
            n.removeprefix("base_model.model."): p
            for n, p in lora_params(new_adapter(init_lm, r.stages[0], r.seed)).items()
        }
        marks: dict[int, dict] = {}

        def on_step(p) -> None:
            if p.step == p.total_steps:
                marks[p.stage] = lora_params(lm)

        train_recipe(lm, tok, RECORDS, r, on_step=on_step)
        assert set(init) == set(marks[0])
        return unchanged_units(init, marks[0]), unchanged_units(marks[0], marks[1]), {unit(n) for n in init}

    frozen1, frozen2, units = run(r)
    assert len(units) == 8  # q, v, up, down in 2 layers: 4 (layer, category) groups of 2 units
    for frozen in (frozen1, frozen2):
        # exactly one unit of every group kept its weights; the other one trained
        assert sorted(group(u) for u in frozen) == sorted({group(u) for u in units})
    assert frozen1 != frozen2  # stage 2 froze another half
    # the next round trains the recipe with its round seed: another half again
    frozen1_next, _, _ = run(round_recipe(r, 2))
    assert frozen1_next != frozen1


def test_average_of_the_last_k_checkpoints_equals_the_weighted_sum_of_those_weights(tiny_model_dir: Path) -> None:
    sched = {"kind": "constant", "average_last_k": 3, "average_every": 2, "average_decay": 0.5}
    r = recipe(stages=[{"lr": 2e-2, "steps": 6, "lora": LORA, "schedule": sched}])
    lm, tok = load_model(str(tiny_model_dir))
    seen: dict[int, dict] = {}
    train_recipe(lm, tok, RECORDS, r, on_step=lambda p: seen.__setitem__(p.step, lora_params(lm)))
    final = lora_params(lm)
    # last K=3 checkpoints every 2 steps, newest first: steps 6, 4, 2 with weights 1, 0.5, 0.25 over 1.75
    for n in final:
        want = (seen[6][n] + 0.5 * seen[4][n] + 0.25 * seen[2][n]) / 1.75
        torch.testing.assert_close(final[n], want, atol=1e-7, rtol=1e-6)
    assert any(not torch.equal(final[n], seen[6][n]) for n in final)  # averaging changed the last step's weights
