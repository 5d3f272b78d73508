"""Unit tests of response loss, batching and LoBaSS learnability on the tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from student_svc.scoring import (
    ALL_METRICS,
    LOSS_BASE,
    ScoreOptions,
    common_prefix_len,
    encode_records,
    learnability,
    length_buckets,
    response_nll,
    score_records,
)
from syllabus.models import fetch_adapter
from syllabus.prompts import IGNORE_INDEX

pytestmark = pytest.mark.unit


def _direct_loss(model, input_ids: list[int], labels: list[int]) -> float:
    """Mean response NLL from a plain full forward and cross entropy (prompt masked)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0].float()
    return F.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX).item()


def test_length_buckets_group_similar_lengths_and_respect_limits():
    lengths = [5, 100, 7, 98, 6, 99, 300]
    batches = length_buckets(lengths, batch_size=3, max_batch_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [6]  # 300 alone: a second item would exceed 400 padded tokens
    assert batches[1] == [1, 5, 3]
    assert batches[2] == [2, 4, 0]
    assert all(len(b) <= 3 for b in batches)


def test_batched_losses_equal_per_sample_losses(tiny_models, tiny_model_dir, mixed_records):
    model, tok = tiny_models.get(str(tiny_model_dir))
    examples = encode_records(tok, mixed_records)
    lengths = [len(e) for e in examples]
    assert max(lengths) > 3 * min(lengths)  # very different lengths share a batch below
    batched = response_nll(
        model, examples, tok.pad_token_id, batch_size=len(examples), max_batch_tokens=10**6
    )
    single = [response_nll(model, [e], tok.pad_token_id)[0] for e in examples]
    unshared = response_nll(model, examples, tok.pad_token_id, batch_size=4, share_prefix=False)
    for b, s, u in zip(batched, single, unshared, strict=True):
        assert b.tokens == s.tokens == u.tokens
        assert b.mean == pytest.approx(s.mean, abs=1e-4)
        assert u.mean == pytest.approx(s.mean, abs=1e-4)


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[5, 6], [7]]) == 0
    assert common_prefix_len([]) == 0


def test_loss_matches_hand_computation(tiny_models, tiny_model_dir, mixed_records):
    model, tok = tiny_models.get(str(tiny_model_dir))
    rows = score_records(
        model, tok, mixed_records, metrics=[LOSS_BASE], options=ScoreOptions(dtype="float32", batch_size=5)
    )
    for rec, row in zip(mixed_records, rows, strict=True):
        ids, labels = encode_records(tok, [rec])[0].input_ids, encode_records(tok, [rec])[0].labels
        assert row["id"] == rec["id"]
        assert set(row) == {"id", LOSS_BASE}
        assert row[LOSS_BASE] == pytest.approx(_direct_loss(model, ids, labels), abs=1e-4)


def test_learnability_formula():
    assert learnability(2.0, 0.5) == pytest.approx(0.75)
    assert learnability(1.0, 2.0) == pytest.approx(-1.0)
    assert learnability(0.0, 0.0) == 0.0


def test_learnability_with_real_adapter(
    tiny_models, tiny_model_dir, mixed_records, store, put_adapter, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_name = str(tiny_model_dir)
    adapter_dir = fetch_adapter(store, put_adapter(store), tmp_path / "adapters")
    with tiny_models.with_adapter(base_name, adapter_dir) as wrapped:
        _, tok = tiny_models.get(base_name)
        rows = score_records(wrapped, tok, mixed_records, metrics=ALL_METRICS, options=ScoreOptions(dtype="float32"))

    # Independent: a fresh base and a fresh peft model, full forwards.
    fresh_base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = encode_records(tok, mixed_records)
    direct_base = [_direct_loss(fresh_base, e.input_ids, e.labels) for e in examples]
    fresh_ref = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), str(adapter_dir)
    ).eval()
    direct_ref = [_direct_loss(fresh_ref, e.input_ids, e.labels) for e in examples]

    for row, b, r in zip(rows, direct_base, direct_ref, strict=True):
        assert row["loss_base"] == pytest.approx(b, abs=1e-4)
        assert row["loss_ref"] == pytest.approx(r, abs=1e-4)
        assert abs(row["loss_ref"] - row["loss_base"]) > 1e-3  # the adapter changes the model
        assert row["learnability"] == pytest.approx(
            (row["loss_base"] - row["loss_ref"]) / row["loss_base"], rel=1e-9
        )


def test_cached_base_is_clean_after_adapter_request(
    tiny_models, tiny_model_dir, mixed_records, store, put_adapter, tmp_path
):
    base_name = str(tiny_model_dir)
    model, tok = tiny_models.get(base_name)
    before = score_records(model, tok, mixed_records, metrics=[LOSS_BASE])
    adapter_dir = fetch_adapter(store, put_adapter(store), tmp_path / "adapters")
    with tiny_models.with_adapter(base_name, adapter_dir) as wrapped:
        score_records(wrapped, tok, mixed_records, metrics=ALL_METRICS)
    model_after, _ = tiny_models.get(base_name)
    after = score_records(model_after, tok, mixed_records, metrics=[LOSS_BASE])
    assert [r[LOSS_BASE] for r in after] == [r[LOSS_BASE] for r in before]
    assert not any("lora" in name for name, _ in model_after.named_modules())
    # Wrapping again works the same (no leftover peft state on the base).
    with tiny_models.with_adapter(base_name, adapter_dir) as wrapped:
        again = score_records(wrapped, tok, mixed_records, metrics=[LOSS_BASE])
    assert [r[LOSS_BASE] for r in again] == pytest.approx([r[LOSS_BASE] for r in before], abs=1e-6)


def test_ref_metrics_need_an_adapter(tiny_models, tiny_model_dir, mixed_records):
    model, tok = tiny_models.get(str(tiny_model_dir))
    with pytest.raises(ValueError, match="reference adapter"):
        score_records(model, tok, mixed_records, metrics=ALL_METRICS)


def test_ifd_on_base_is_the_base_views_ifd_and_shares_l0s_pass(
    tiny_models, tiny_model_dir, mixed_records, store, put_adapter, tmp_path
):
    """`ifd_on_base`: IFD and r-IFD of the base view (here the adapter disabled) in the same request as
    LoBaSS; IFD's conditional pass is L0's own sequence, so the plan runs it once."""
    from student_svc import scoring

    base_name = str(tiny_model_dir)
    base_model, tok = tiny_models.get(base_name)
    options = ScoreOptions(dtype="float32", ifd_on_base=True)
    metrics = (scoring.LOSS_BASE, scoring.LOSS_REF, scoring.LEARNABILITY, scoring.IFD, scoring.RIFD)
    adapter_dir = fetch_adapter(store, put_adapter(store), tmp_path / "adapters")
    with tiny_models.with_adapter(base_name, adapter_dir) as wrapped:
        shared = score_records(wrapped, tok, mixed_records, metrics=metrics, options=options)
        on_ref = score_records(wrapped, tok, mixed_records, metrics=(scoring.IFD,), options=ScoreOptions(dtype="float32"))
    alone = score_records(base_model, tok, mixed_records, metrics=(scoring.IFD, scoring.RIFD), options=ScoreOptions(dtype="float32"))
    for s, a, r in zip(shared, alone, on_ref, strict=True):
        assert s["ifd_ppl"] == pytest.approx(a["ifd_ppl"], abs=1e-4) and s["rifd_ppl"] == pytest.approx(a["rifd_ppl"], abs=1e-4)
        assert abs(s["ifd_ppl"] - r["ifd_ppl"]) > 1e-6  # not the reference adapter's IFD
    plan = scoring.NLLPlan()
    handles = [scoring.plan_record(plan, tok, rec, metrics, 512, "base") for rec in mixed_records]
    assert all(h["ifd_cond"] == h["base"] and h["ref"][0] == "model" for h in handles)  # IFD's pass is L0's
