"""Curricula checked on the batches the trainer saw (`RecipeResult.stage_batches` / `stage_trace`).

Each test trains the tiny model through `train_recipe` and asserts the order the policy chose on the
record indices of every step, recomputing the policy's update from the losses the trainer logged.
A plain seeded shuffle fails each of them.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from syllabus.models import load_model
from syllabus.recipe import Recipe
from trainer_svc.staged import train_recipe

pytestmark = pytest.mark.unit

CATS = ["card_arrival", "exchange_rate", "top_up_failed", "lost_card"]


def records(n: int = 16) -> list[dict]:
    # difficulty: 0, 1/8, ..., 7/8 twice over (the second half repeats it); d100: 0, 5, ..., 75
    return [
        {"prompt": f"Classify: message {i} about {CATS[i % 4]}", "response": CATS[i % 4], "category": CATS[i % 4],
         "difficulty": (i % 8) / 8, "difficulty100": 5.0 * i}
        for i in range(n)
    ]  # fmt: skip


def run(tiny_model_dir: Path, recs: list[dict], **recipe) -> object:
    base = {"seed": 3, "max_seq_len": 64, "row_tokens": 64, "rows_per_step": 2, "batch_size": 4, "bf16": False}
    lm, tok = load_model(str(tiny_model_dir))
    return train_recipe(lm, tok, recs, Recipe.model_validate({**base, **recipe}))[2]


def test_static_stages_train_easy_band_first_in_ascending_order_with_replay(tiny_model_dir: Path) -> None:
    recs = records()
    stage = {
        "lr": 1e-2,
        "epochs": 2,
        "lora": {"rank": 2, "alpha": 4},
        "curriculum": {"policy": "static", "score_key": "difficulty"},
    }
    result = run(tiny_model_dir, recs, stages=[
        {**stage, "name": "easy", "data": {"score_key": "difficulty", "max_score": 0.5}},
        {**stage, "name": "hard", "data": {"score_key": "difficulty", "min_score": 0.5, "replay": 0.5}},
    ])  # fmt: skip
    easy = {i for i, r in enumerate(recs) if r["difficulty"] < 0.5}  # 0-3 and 8-11
    hard = set(range(16)) - easy
    first, second = ([i for step in s for i in step] for s in result.stage_batches)
    # stage 1: only its band, every record once per epoch, in ascending difficulty (ties by index)
    by_score = sorted(easy, key=lambda i: (recs[i]["difficulty"], i))
    assert by_score == [0, 8, 1, 9, 2, 10, 3, 11]
    assert first == by_score * 2
    # stage 2: its whole band plus round(0.5 * 8) = 4 replayed stage-1 records, ascending again
    replayed = set(second) - hard
    assert set(second) >= hard and len(replayed) == 4 and replayed <= easy
    epoch = second[: len(second) // 2]
    assert epoch == second[len(second) // 2 :] and len(epoch) == 12
    assert [recs[i]["difficulty"] for i in epoch] == sorted(recs[i]["difficulty"] for i in epoch)
    # the replayed easy records lead the hard stage's ascending order
    assert all(recs[i]["difficulty"] < 0.5 for i in epoch[:4]) and all(recs[i]["difficulty"] >= 0.5 for i in epoch[4:])


def test_adarft_batches_are_the_b_nearest_the_target_and_the_target_follows_the_reward(tiny_model_dir: Path) -> None:
    recs = records()
    # beta below any reward, so the target climbs: tanh(2 * (R + 0.5)) > 0.76 whatever R in [0, 1]
    cur = {"policy": "adarft", "score_key": "difficulty100", "adarft_eta": 20, "adarft_alpha": 2, "adarft_beta": -0.5}
    result = run(
        tiny_model_dir, recs, stages=[{"lr": 1e-2, "steps": 5, "lora": {"rank": 2, "alpha": 4}, "curriculum": cur}]
    )
    batches, trace = result.stage_batches[0], result.stage_trace[0]
    assert len(batches) == len(trace) == 5
    # step 1 by hand: T0 = 0, so the batch is d = 0, 5, 10, 15 (records 0-3)
    assert trace[0]["target"] == 0 and sorted(batches[0]) == [0, 1, 2, 3]
    d = [r["difficulty100"] for r in recs]
    t = 0.0
    for step, (batch, tr) in enumerate(zip(batches, trace, strict=True)):
        assert tr["target"] == pytest.approx(t), step
        nearest = sorted(range(16), key=lambda i: (abs(d[i] - t), i))[:4]
        assert sorted(batch) == sorted(nearest), step
        r_avg = sum(math.exp(-x) for x in tr["loss_before"]) / len(tr["loss_before"])  # SFT success stand-in
        t = min(100.0, max(0.0, t + 20 * math.tanh(2 * (r_avg + 0.5))))
    # the target moved, so the batches did: the last one is far from the first
    assert t > 60 and min(batches[-1]) > 3


def test_sec_probabilities_follow_the_q_update_and_batches_come_from_the_sampled_arms(tiny_model_dir: Path) -> None:
    recs = records()
    alpha, tau = 0.5, 0.1
    cur = {"policy": "sec", "arm_key": "category", "sec_alpha": alpha, "sec_tau": tau}
    result = run(
        tiny_model_dir, recs, stages=[{"lr": 2e-2, "steps": 6, "lora": {"rank": 2, "alpha": 4}, "curriculum": cur}]
    )
    batches, trace = result.stage_batches[0], result.stage_trace[0]
    arms = sorted(CATS)
    arm_of = [arms.index(r["category"]) for r in recs]
    members = [[i for i in range(16) if arm_of[i] == c] for c in range(4)]
    rng = random.Random(3 * 7919 + 0)  # the stage's curriculum seed: recipe.seed * 7919 + stage index
    q = [0.0] * 4
    for step, (batch, tr) in enumerate(zip(batches, trace, strict=True)):
        e = [math.exp(x / tau) for x in q]
        p = [x / sum(e) for x in e]
        assert tr["arms"] == arms and tr["q"] == pytest.approx(q) and tr["probs"] == pytest.approx(p), step
        # the batch: one arm per slot drawn from p, then a record of that arm (items = indices here)
        drawn = rng.choices(range(4), weights=tr["probs"], k=4)
        assert sorted(batch) == sorted(rng.choice(members[a]) for a in drawn), step
        # reward per arm in the batch: mean loss drop over the step; absent arms r = 0
        drops: dict[int, list[float]] = {}
        for rec, b, a in zip(tr["items"], tr["loss_before"], tr["loss_after"], strict=True):
            drops.setdefault(arm_of[rec], []).append(b - a)
        q = [
            (1 - alpha) * qc + alpha * (sum(drops[c]) / len(drops[c]) if c in drops else 0.0) for c, qc in enumerate(q)
        ]
    # the rewards moved Q, so the last step drew its arms from a non-uniform p
    assert max(trace[-1]["probs"]) - min(trace[-1]["probs"]) > 0.02


def test_log_batches_publishes_each_steps_record_ids_in_the_metrics(tiny_model_dir: Path, store) -> None:
    from trainer_svc.staged import read_metrics, run_recipe

    recs = [{**r, "id": f"r{i}"} for i, r in enumerate(records(8))]
    stage = {
        "lr": 1e-2,
        "epochs": 1,
        "lora": {"rank": 2, "alpha": 4},
        "curriculum": {"policy": "static", "score_key": "difficulty100", "descending": True},
    }
    base = {"seed": 3, "max_seq_len": 64, "row_tokens": 64, "rows_per_step": 2, "batch_size": 4, "bf16": False}
    _, result = run_recipe(
        str(tiny_model_dir),
        recs,
        Recipe.model_validate({**base, "log_batches": True, "stages": [stage]}),
        store,
        "jobs/j/b.tar",
    )
    (entry,) = read_metrics(store, "jobs/j/b.tar")["stages"]
    assert entry["batches"] == [[f"r{i}" for i in step] for step in result.stage_batches[0]]
    assert entry["trace"] == []  # static: no adaptive state
    assert [i for step in entry["batches"] for i in step] == [f"r{i}" for i in range(7, -1, -1)]  # hardest first
    run_recipe(str(tiny_model_dir), recs, Recipe.model_validate({**base, "stages": [stage]}), store, "jobs/j/q.tar")
    assert "batches" not in read_metrics(store, "jobs/j/q.tar")["stages"][0]
