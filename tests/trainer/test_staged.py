"""Staged trainer on the tiny model: packing isolation, Chain of LoRA algebra, DPO, resume, DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from syllabus.models import load_model
from syllabus.recipe import Recipe
from trainer_svc.packing import CompletionLM, build_batch
from trainer_svc.staged import TrainingStopped, chained_adapter_files, encode_records, train_recipe

pytestmark = pytest.mark.unit

CATS = ["card_arrival", "exchange_rate", "top_up_failed", "lost_card"]
RECORDS = [
    {"prompt": f"Classify: customer message number {i} about {c}", "response": c, "category": c, "difficulty": (i % 8) / 8}
    for i, c in enumerate(CATS * 4)
]
PAIRS = [{"prompt": f"Say something nice {i}", "chosen": "You are great", "rejected": "Go away now"} for i in range(6)]


def recipe(**over) -> Recipe:
    base = {
        "seed": 0, "max_seq_len": 96, "row_tokens": 192, "rows_per_step": 2, "batch_size": 4, "bf16": False,
        "stages": [
            {"name": "easy", "lr": 2e-2, "epochs": 2, "after": "merge", "data": {"score_key": "difficulty", "max_score": 0.5},
             "lora": {"rank": 4, "alpha": 8}},
            {"name": "hard", "lr": 2e-2, "epochs": 2, "after": "merge", "data": {"score_key": "difficulty", "min_score": 0.5, "replay": 0.5},
             "lora": {"rank": 2, "alpha": 8, "targets": ["q_proj", "v_proj"]}},
        ],
    }  # fmt: skip
    base.update(over)
    return Recipe.model_validate(base)


def test_packed_row_logits_equal_per_sample_logits(tiny_model_dir: Path) -> None:
    lm, tok = load_model(str(tiny_model_dir))
    enc = encode_records(tok, RECORDS, "sft", 96, [0, 1, 2], {})
    seqs = [enc[i][0] for i in (0, 1, 2)]
    core = CompletionLM(lm)
    packed = build_batch([[0, 1, 2]], seqs, tok.pad_token_id)
    width = packed.input_ids.shape[1]
    with torch.no_grad():
        all_logits = core(packed, torch.arange(width))
        offset = 0
        for j, (ids, _) in enumerate(seqs):
            alone = build_batch([[0]], [seqs[j]], tok.pad_token_id)
            ref = core(alone, torch.arange(len(ids)))
            # and the plain model with no mask at all, to prove the packed path computes the same thing
            plain = lm(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(all_logits[offset : offset + len(ids)], ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ref, plain, atol=1e-5, rtol=1e-5)
            offset += len(ids)
    assert packed.position_ids[0, len(seqs[0][0])] == 0  # positions restart per sample


def test_chain_of_lora_merged_weights_are_base_plus_stage_deltas(tiny_model_dir: Path, tmp_path: Path) -> None:
    base, _ = load_model(str(tiny_model_dir))
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    lm, tok = load_model(str(tiny_model_dir))
    model, snaps, result = train_recipe(lm, tok, RECORDS, recipe())
    assert len(snaps) == 2 and len(result.stage_losses) == 2 and all(result.stage_losses)
    final = model.state_dict()
    changed = 0
    for name, w0 in base_sd.items():
        if not name.endswith("proj.weight"):
            continue
        mod = "base_model.model." + name.removesuffix(".weight")
        delta = torch.zeros_like(w0)
        for s in snaps:
            if f"{mod}.lora_A.weight" in s["state"]:
                delta += s["scale"] * s["state"][f"{mod}.lora_B.weight"] @ s["state"][f"{mod}.lora_A.weight"]
        changed += bool(delta.abs().sum() > 0)
        torch.testing.assert_close(final[name], w0 + delta, atol=1e-6, rtol=1e-5)
    assert changed == 8  # q,k,v,o in 2 layers
    # The published chained adapter is one peft LoRA equal to the sum of the deltas.
    from peft import PeftModel

    chained_adapter_files(snaps, str(tiny_model_dir), tmp_path / "ad")
    fresh, _ = load_model(str(tiny_model_dir))
    merged = PeftModel.from_pretrained(fresh, tmp_path / "ad").merge_and_unload().state_dict()
    for name in base_sd:
        torch.testing.assert_close(merged[name], final[name], atol=1e-5, rtol=1e-5)


def dpo_margin(model, tok) -> float:
    from trainer_svc.packing import per_sample_sums, token_logprobs

    enc = encode_records(tok, PAIRS, "dpo", 96, range(len(PAIRS)), {})
    seqs = [s for i in range(len(PAIRS)) for s in enc[i]]
    batch = build_batch([[j] for j in range(len(seqs))], seqs, tok.pad_token_id)
    core = CompletionLM(model)
    with torch.no_grad():
        lp, of, _ = token_logprobs(core, batch)
        pol, _ = per_sample_sums(lp, of, len(seqs))
        with model.disable_adapter():
            lp, of, _ = token_logprobs(core, batch)
            ref, _ = per_sample_sums(lp, of, len(seqs))
    return ((pol[0::2] - ref[0::2]) - (pol[1::2] - ref[1::2])).mean().item()


def test_dpo_increases_chosen_vs_rejected_margin(tiny_model_dir: Path) -> None:
    lm, tok = load_model(str(tiny_model_dir))
    r = recipe(packing=False, stages=[{"objective": "dpo", "lr": 1e-2, "epochs": 3, "lora": {"rank": 4, "alpha": 8}}])
    model, _, result = train_recipe(lm, tok, PAIRS, r)
    assert result.stage_losses[0][0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at start
    assert dpo_margin(model, tok) > 0.5
    assert result.stage_losses[0][-1] < result.stage_losses[0][0]


def test_hft_freezes_a_new_half_for_each_round_seed(tiny_model_dir: Path) -> None:
    # The loop moves the recipe seed each round (syllabus.baselines.round_recipe), so each round's HFT
    # freezes another half of the units, as Half Fine-Tuning does round after round.
    from peft import LoraConfig, get_peft_model

    from syllabus.baselines import ROUND_SEED_STRIDE
    from trainer_svc.staged import hft_freeze

    def frozen(seed: int) -> set[str]:
        lm, _ = load_model(str(tiny_model_dir))
        model = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
        ids = {id(p) for p in hft_freeze(model, seed)}
        assert all(not p.requires_grad for n, p in model.named_parameters() if id(p) in ids)
        return {n for n, p in model.named_parameters() if id(p) in ids}

    first, again, second = frozen(7), frozen(7), frozen(7 + ROUND_SEED_STRIDE)
    assert first == again and first != second
    assert len(first) == len(second) > 0


def test_killed_run_resumes_to_the_same_weights(tiny_model_dir: Path, store) -> None:
    r = recipe(checkpoint_every=2, stages=[
        {**recipe().stages[0].model_dump(), "curriculum": {"policy": "sec", "arm_key": "category"}},
        {**recipe().stages[1].model_dump(), "after": "continue", "hft": True},
    ])  # fmt: skip
    lm, tok = load_model(str(tiny_model_dir))
    straight, _, res_a = train_recipe(lm, tok, RECORDS, r)
    want = {k: v.clone() for k, v in straight.state_dict().items()}

    calls = {"n": 0}

    def stop_after_7() -> bool:
        calls["n"] += 1
        return calls["n"] > 7

    lm, tok = load_model(str(tiny_model_dir))
    with pytest.raises(TrainingStopped):
        train_recipe(lm, tok, RECORDS, r, store=store, checkpoint_key="run.ckpt", should_stop=stop_after_7)
    lm, tok = load_model(str(tiny_model_dir))
    resumed, _, res_b = train_recipe(lm, tok, RECORDS, r, store=store, checkpoint_key="run.ckpt")
    assert 0 < res_b.resumed_from < len(res_a.losses)  # the last checkpoint before the kill
    assert res_b.stage_losses == res_a.stage_losses
    got = resumed.state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, atol=0, rtol=0)


def _ddp_recipe() -> Recipe:
    return recipe(rows_per_step=2, row_tokens=96, stages=[{"lr": 2e-2, "epochs": 3, "lora": {"rank": 4, "alpha": 8}}])


def _ddp_worker(rank: int, world: int, model_dir: str, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    lm, tok = load_model(model_dir)
    model, _, result = train_recipe(lm, tok, RECORDS, _ddp_recipe(), dist_on=True)
    lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    torch.save({"lora": lora, "losses": result.losses, "batches": result.stage_batches}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_one_process_on_the_same_data(tiny_model_dir: Path, tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, str(tiny_model_dir), port, str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a["losses"] == b["losses"]
    for k in a["lora"]:
        torch.testing.assert_close(a["lora"][k], b["lora"][k], atol=0, rtol=0)
    # The same run in one process: the same steps over the same records, the same loss curve and
    # weights up to float reordering (each rank sums half the tokens; gloo adds the halves).
    torch.set_num_threads(1)
    lm, tok = load_model(str(tiny_model_dir))
    single, _, result = train_recipe(lm, tok, RECORDS, _ddp_recipe())
    assert a["batches"] == result.stage_batches and len(result.losses) > 4
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(result.losses), atol=1e-4, rtol=1e-4)
    one = {k: v for k, v in single.state_dict().items() if "lora_" in k}
    assert one.keys() == a["lora"].keys()
    for k, v in one.items():
        torch.testing.assert_close(a["lora"][k], v, atol=1e-4, rtol=1e-3)
    assert any(v.abs().sum() > 0 for k, v in a["lora"].items() if "lora_B" in k)
    n = len(a["losses"]) // 3
    assert sum(a["losses"][-n:]) / n < sum(a["losses"][:n]) / n


def _one_stage(**stage) -> Recipe:
    return Recipe.model_validate({
        "seed": 0, "max_seq_len": 96, "packing": False, "batch_size": 4, "bf16": False,
        "stages": [{"lr": 2e-2, "epochs": 1, "lora": {"rank": 4, "alpha": 8}, **stage}],
    })  # fmt: skip



def test_published_adapter_has_its_true_metrics_beside_it(tiny_model_dir: Path, store) -> None:
    from trainer_svc.staged import read_metrics, run_recipe

    ref, res = run_recipe(str(tiny_model_dir), RECORDS, _one_stage(), store, "jobs/j/a.tar")
    metrics = read_metrics(store, "jobs/j/a.tar")
    assert metrics["steps"] == len(res.losses) == 4  # 16 records, 4 per step
    assert metrics["losses"] == res.losses and metrics["mean_loss"] == pytest.approx(res.mean_loss)
    assert store.stat("jobs/j/a.tar") == ref


def test_a_published_run_leaves_no_checkpoint_behind(tiny_model_dir: Path, store) -> None:
    """The checkpoint is scratch: written while the run trains, removed once the adapter is published."""
    from trainer_svc.staged import run_recipe

    seen: list[bool] = []
    every_step = Recipe.model_validate({**_one_stage().model_dump(), "checkpoint_every": 1})
    run_recipe(str(tiny_model_dir), RECORDS, every_step, store, "jobs/j/c.tar",
               on_step=lambda p: seen.append(store.stat("jobs/j/c.tar.ckpt") is not None))  # fmt: skip
    assert seen[1:] and all(seen[1:])  # checkpointed after each step but the last
    assert store.stat("jobs/j/c.tar.ckpt") is None and store.stat("jobs/j/c.tar") is not None


def test_a_diverged_run_publishes_nothing(tiny_model_dir: Path, store) -> None:
    from trainer_svc.staged import NonFiniteLoss, run_recipe

    # Unclipped, an absurd learning rate turns the weights into inf after step 1: the loss is NaN.
    blowup = Recipe.model_validate({**_one_stage(lr=1e20).model_dump(), "max_grad_norm": 0})
    with pytest.raises(NonFiniteLoss, match="the loss became"):
        run_recipe(str(tiny_model_dir), RECORDS, blowup, store, "jobs/j/nan.tar")
    assert store.stat("jobs/j/nan.tar") is None and store.stat("jobs/j/nan.tar.metrics.json") is None


def test_a_stop_request_after_the_last_step_publishes_nothing(tiny_model_dir: Path, store) -> None:
    from trainer_svc.staged import run_recipe

    calls = {"n": 0}

    def stop_at_the_end() -> bool:  # asked before each of the 4 steps, then once before publishing
        calls["n"] += 1
        return calls["n"] > 4

    with pytest.raises(TrainingStopped, match="before publishing"):
        run_recipe(str(tiny_model_dir), RECORDS, _one_stage(), store, "jobs/j/b.tar", should_stop=stop_at_the_end)
    assert store.stat("jobs/j/b.tar") is None


def test_adapter_tar_is_canonical_whatever_order_peft_wrote(tmp_path: Path) -> None:
    import json

    from syllabus.models import pack_adapter

    packed = []
    for i, modules in enumerate((["v_proj", "q_proj", "o_proj"], ["o_proj", "q_proj", "v_proj"])):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": modules}))
        (d / "adapter_model.safetensors").write_bytes(b"weights")
        packed.append(pack_adapter(d))
    assert packed[0] == packed[1]


def test_samples_per_step_packs_each_steps_batch_without_padding_rows(tiny_model_dir: Path) -> None:
    from trainer_svc.staged import EpochSource

    r = Recipe.model_validate({**_one_stage(epochs=2).model_dump(), "packing": True, "samples_per_step": 4, "row_tokens": 96})
    lengths = [10 + (i * 7) % 50 for i in range(len(RECORDS))]
    source = EpochSource(r, r.stages[0], list(range(len(RECORDS))), lengths, RECORDS, seed=0)
    steps = [source.next_rows() for _ in range(source.total)]
    assert source.total == 8  # 16 records, 4 per step, 2 epochs: as unpacked training
    for rows in steps:
        assert sum(len(row) for row in rows) == 4
        assert all(sum(lengths[i] for i in row) <= 96 for row in rows)
    epoch1 = sorted(i for rows in steps[:4] for row in rows for i in row)
    assert epoch1 == list(range(16))  # every record once per epoch


def test_shared_prefix_rows_give_the_same_logits_and_gradients(tiny_model_dir: Path) -> None:
    from trainer_svc.packing import shared_prefix, token_logprobs

    lm, tok = load_model(str(tiny_model_dir))
    prompt = "Classify the message. Intents: card_arrival, exchange_rate, top_up_failed, lost_card\\nMessage: "
    recs = [{"prompt": prompt + m, "response": c} for m, c in
            [("where is my card", "card_arrival"), ("rate today?", "exchange_rate"), ("top up broke", "top_up_failed")]]
    enc = encode_records(tok, recs, "sft", 96, [0, 1, 2], {})
    seqs = [enc[i][0] for i in range(3)]
    assert shared_prefix([0, 1, 2], seqs) > 15  # the instructions and intents, laid out once

    core = CompletionLM(lm)
    results = []
    for share in (False, True):
        batch = build_batch([[0, 1, 2]], seqs, tok.pad_token_id, share_prefix=share)
        lm.zero_grad()
        logp, sample_of, _ = token_logprobs(core, batch)
        (-logp.sum()).backward()
        grads = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
        results.append((batch.num_tokens, logp.detach(), sample_of, grads))
    (n_full, lp_full, s_full, g_full), (n_shared, lp_shared, s_shared, g_shared) = results
    assert n_shared < n_full
    assert torch.equal(s_full, s_shared)
    torch.testing.assert_close(lp_shared, lp_full, atol=1e-5, rtol=1e-5)
    for name, g in g_full.items():
        torch.testing.assert_close(g_shared[name], g, atol=1e-5, rtol=1e-4)


def test_metrics_have_one_entry_per_stage_and_skip_held_out_records(tiny_model_dir: Path, store) -> None:
    from trainer_svc.staged import read_metrics, run_recipe

    # Held-out records pass the "easy" band: only the `heldout` flag keeps them out of training.
    held = [{"prompt": f"Held-out message {j}", "response": "lost_card", "difficulty": 0.1, "heldout": True} for j in range(3)]
    _, res = run_recipe(str(tiny_model_dir), held + RECORDS, recipe(), store, "jobs/j/s.tar")
    metrics = read_metrics(store, "jobs/j/s.tar")
    assert set(metrics) == {"steps", "mean_loss", "losses", "tokens", "resumed_from", "stages"}
    assert metrics["tokens"] == res.tokens > 0  # the real tokens trained on: the tenant's quota counts them
    stages = metrics["stages"]
    assert [s["name"] for s in stages] == ["easy", "hard"]
    assert all(set(s) == {"name", "steps", "mean_loss", "seconds", "samples"} for s in stages)
    assert [s["steps"] for s in stages] == [len(x) for x in res.stage_losses]
    assert sum(s["steps"] for s in stages) == metrics["steps"] == len(metrics["losses"])
    for s, losses in zip(stages, res.stage_losses, strict=True):
        assert s["steps"] > 0 and s["mean_loss"] == pytest.approx(sum(losses) / len(losses))
        assert s["seconds"] > 0
    # easy: the 8 records with difficulty < 0.5; hard: its 8 + round(0.5 * 8) replayed; never a held-out one
    assert [s["samples"] for s in stages] == [8, 12]
    assert all(not ({0, 1, 2} & seen) for seen in res.stage_samples)


def test_a_stage_no_record_passes_is_skipped_and_the_run_goes_on(tiny_model_dir: Path, store) -> None:
    """In a loop a score band can be empty in some round: that stage trains 0 steps (its merge of an
    untrained adapter changes nothing), the others train, and the adapter and metrics are published."""
    from trainer_svc.staged import read_metrics, run_recipe

    easy_only = [{**r, "difficulty": 0.1} for r in RECORDS]  # nothing for the "hard" band (>= 0.5)
    ref, _ = run_recipe(str(tiny_model_dir), easy_only, recipe(), store, "jobs/j/empty.tar")
    stages = read_metrics(store, "jobs/j/empty.tar")["stages"]
    assert [(s["name"], s["steps"] > 0, s["samples"]) for s in stages] == [("easy", True, len(RECORDS)), ("hard", False, 0)]
    assert stages[1]["mean_loss"] is None and ref is not None and store.stat("jobs/j/empty.tar") is not None


PUDF_TRAIN = [{"prompt": f"Classify: customer message number {i} about {c}", "response": c, "irt_b": -2 + 0.25 * i}
              for i, c in enumerate(CATS * 4)]  # fmt: skip
PUDF_HELD = [{"prompt": f"Which intent has held-out query {j}?", "response": "exchange_rate or top_up_failed",
              "irt_b": b, "heldout": True} for j, b in enumerate([1.0, 1.5, 2.0, 2.5])]  # fmt: skip
PUDF_RECORDS = PUDF_HELD[:2] + PUDF_TRAIN + PUDF_HELD[2:]  # held-out records at both ends
HELD_IDX = [0, 1, 18, 19]


def pudf_recipe(**over) -> Recipe:
    return Recipe.model_validate({
        "seed": 0, "max_seq_len": 96, "packing": False, "batch_size": 4, "bf16": False, **over,
        "stages": [{"name": "pudf", "lr": 2e-2, "epochs": 2, "lora": {"rank": 4, "alpha": 8},
                    "curriculum": {"policy": "pudf", "score_key": "irt_b", "pudf_step": 0.5}}],
    })  # fmt: skip


def test_pudf_estimates_ability_on_held_out_records_before_the_first_epoch(tiny_model_dir: Path, monkeypatch) -> None:
    from trainer_svc import staged
    from trainer_svc.curriculum import irt_ability

    events: list[tuple] = []
    next_rows, probe_right = staged.PUDFSource.next_rows, staged._probe_right

    def spy_rows(self):
        rows = next_rows(self)
        events.append(("rows", self.epoch, [i for row in rows for i in row]))
        return rows

    def spy_probe(core, enc, probe, *args):
        right = probe_right(core, enc, probe, *args)
        events.append(("probe", list(probe), right))
        return right

    monkeypatch.setattr(staged.PUDFSource, "next_rows", spy_rows)
    monkeypatch.setattr(staged, "_probe_right", spy_probe)
    lm, tok = load_model(str(tiny_model_dir))
    _, _, result = train_recipe(lm, tok, PUDF_RECORDS, pudf_recipe())
    info = result.stage_curriculum[0]
    assert info["probe"] == "heldout" and info["probe_size"] == 4

    assert events[0][0] == "probe"  # theta_0 comes before any step
    probes = [e for e in events if e[0] == "probe"]
    assert all(p[1] == HELD_IDX for p in probes)  # only the held-out split is probed
    held_b = [PUDF_RECORDS[i]["irt_b"] for i in HELD_IDX]
    assert info["abilities"] == [pytest.approx(irt_ability(held_b, p[2])) for p in probes]

    b = {i: r["irt_b"] for i, r in enumerate(PUDF_RECORDS)}
    epochs: dict[int, list[int]] = {}
    probes_before: dict[int, int] = {}
    for e in events:
        if e[0] == "rows":
            epochs.setdefault(e[1], []).extend(e[2])
            probes_before.setdefault(e[1], sum(x[0] == "probe" for x in events[: events.index(e)]))
    assert all(probes_before[k] == k + 1 for k in epochs)  # one estimate before each epoch
    for k, items in epochs.items():
        eligible = {i for i in range(len(PUDF_RECORDS)) if i not in HELD_IDX and b[i] <= info["caps"][k]}
        assert set(items) <= eligible
        if k < len(epochs) - 1:
            assert sorted(items) == sorted(eligible)  # a full epoch = every eligible record once
    assert any(b[i] > info["caps"][0] for i in range(2, 18))  # so the first epoch really was restricted
    assert info["caps"][-1] > info["caps"][0]  # and the cap moved
    # the budget (2 passes of 4 steps over the 16 records) ends exactly with the third PUDF epoch (2 + 3 + 3 steps):
    # an estimate before each epoch and one after the last
    assert [len(v) for v in epochs.values()] == [7, 9, 11]
    assert len(info["abilities"]) == len(info["caps"]) == len(epochs) + 1
    assert result.stage_samples[0] == {i for e in events if e[0] == "rows" for i in e[2]}
    assert not result.stage_samples[0] & set(HELD_IDX)


def test_pudf_without_held_out_records_probes_training_records(tiny_model_dir: Path, caplog) -> None:
    lm, tok = load_model(str(tiny_model_dir))
    r = pudf_recipe()
    r = r.model_copy(update={"stages": (r.stages[0].model_copy(update={"steps": 2}),)})
    with caplog.at_level("WARNING", logger="trainer_svc.staged"):
        _, _, result = train_recipe(lm, tok, PUDF_TRAIN, r)
    info = result.stage_curriculum[0]
    assert (info["probe"], info["probe_size"]) == ("training", 16)
    assert info["abilities"] and info["caps"][0] == max(info["abilities"][0], -2.0)  # theta_0; never an empty epoch
    assert "no held-out record" in caplog.text


def test_killed_pudf_run_resumes_with_its_ability_and_cap(tiny_model_dir: Path, store) -> None:
    from trainer_svc.staged import _load_ckpt

    r = pudf_recipe(checkpoint_every=2)
    lm, tok = load_model(str(tiny_model_dir))
    straight, _, res_a = train_recipe(lm, tok, PUDF_RECORDS, r)
    want = {k: v.clone() for k, v in straight.state_dict().items()}

    calls = {"n": 0}

    def stop_after_4() -> bool:  # steps 1-4 run: epoch 1 (2 steps) and 2 of epoch 2's 3
        calls["n"] += 1
        return calls["n"] > 4

    lm, tok = load_model(str(tiny_model_dir))
    with pytest.raises(TrainingStopped):
        train_recipe(lm, tok, PUDF_RECORDS, r, store=store, checkpoint_key="pudf.ckpt", should_stop=stop_after_4)
    ckpt = _load_ckpt(store, "pudf.ckpt")
    assert (ckpt["stage"], ckpt["step"]) == (0, 4)
    assert ckpt["source"].abilities == res_a.stage_curriculum[0]["abilities"][:2]  # theta_0 and after epoch 1
    assert ckpt["source"].caps == res_a.stage_curriculum[0]["caps"][:2]
    seconds_before = ckpt["per_stage"]["stage_seconds"][0]
    assert seconds_before > 0

    lm, tok = load_model(str(tiny_model_dir))
    resumed, _, res_b = train_recipe(lm, tok, PUDF_RECORDS, r, store=store, checkpoint_key="pudf.ckpt")
    assert res_b.resumed_from == 4
    assert res_b.stage_losses == res_a.stage_losses
    assert res_b.stage_curriculum == res_a.stage_curriculum
    assert res_b.stage_samples == res_a.stage_samples
    assert res_b.stage_seconds[0] > seconds_before  # the attempts' seconds add up
    got = resumed.state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, atol=0, rtol=0)
