"""IFD / r-IFD / reflection / CAR on the tiny model: batched fp32 scores equal per-sample scores,
and each metric equals a direct computation from full forwards."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from student_svc import reflection
from student_svc.scoring import (
    IFD,
    LEARNABILITY,
    LOSS_BASE,
    LOSS_REF,
    REFLECTION,
    REVERSE_PROMPT,
    RIFD,
    ScoreOptions,
    car,
    car_by_teacher,
    ifd_ratios,
    score_records,
)
from syllabus.models import fetch_adapter
from syllabus.prompts import render_prompt

pytestmark = pytest.mark.unit

FP32 = ScoreOptions(dtype="float32")


def _mean_nll(model, context: list[int], target: list[int]) -> float:
    """Mean NLL of `target` after `context`, one full forward, full logits."""
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    return F.cross_entropy(logits[len(context) - 1 : -1], ids[0, len(context) :]).item()


def _direct_ifd(model, tok, q: str, a: str) -> tuple[float, float]:
    p_ids = tok(render_prompt(tok, q), add_special_tokens=False)["input_ids"]
    a_ids = tok(a, add_special_tokens=False)["input_ids"]
    return _mean_nll(model, p_ids, a_ids), _mean_nll(model, [tok.bos_token_id], a_ids)


def _reflection_records(mixed_records):
    out = []
    for i, r in enumerate(mixed_records[:6]):
        out.append(
            {
                **r,
                "prompt_q": r["prompt"] + " please explain in detail" * (i % 3),
                "response_q": r["response"] + " because" * (i + 1),
                "response_a": "card " * (i + 2) + r["response"],
                "response_qa": r["response"][::-1],
            }
        )
    return out


def test_ifd_and_rifd_equal_direct_computation(tiny_models, tiny_model_dir, mixed_records):
    model, tok = tiny_models.get(str(tiny_model_dir))
    rows = score_records(model, tok, mixed_records, [IFD, RIFD], options=FP32)
    for rec, row in zip(mixed_records, rows, strict=True):
        cond, uncond = _direct_ifd(model, tok, rec["prompt"], rec["response"])
        assert row["answer_loss_cond"] == pytest.approx(cond, abs=1e-4)
        assert row["answer_loss_uncond"] == pytest.approx(uncond, abs=1e-4)
        assert row["ifd_ppl"] == pytest.approx(math.exp(cond - uncond), rel=1e-4)
        assert row["ifd_loss"] == pytest.approx(cond / uncond, rel=1e-4)
        rcond, runcond = _direct_ifd(model, tok, REVERSE_PROMPT.format(response=rec["response"]), rec["prompt"])
        assert row["rifd_ppl"] == pytest.approx(math.exp(rcond - runcond), rel=1e-4)
        assert row["rifd_loss"] == pytest.approx(rcond / runcond, rel=1e-4)


def test_every_metric_batched_equals_per_sample(tiny_models, tiny_model_dir, mixed_records, store, put_adapter, tmp_path):
    """One batch mixing very different lengths vs one sample per call (fp32, 1e-4), all metrics."""
    records = _reflection_records(mixed_records) + mixed_records[6:]
    for r in records[6:]:
        r.update(prompt_q=r["prompt"] + "?", response_q=r["response"], response_a=r["response"] + " ok", response_qa="ok")
    metrics = [LOSS_BASE, LOSS_REF, LEARNABILITY, IFD, RIFD, REFLECTION]
    adapter_dir = fetch_adapter(store, put_adapter(store), tmp_path / "adapters")
    with tiny_models.with_adapter(str(tiny_model_dir), adapter_dir) as model:
        _, tok = tiny_models.get(str(tiny_model_dir))
        big = ScoreOptions(dtype="float32", batch_size=64, max_batch_tokens=10**6)
        batched = score_records(model, tok, records, metrics, options=big)
        small_budget = score_records(model, tok, records, metrics, options=ScoreOptions(dtype="float32", max_batch_tokens=256))
        single = [score_records(model, tok, [r], metrics, options=FP32)[0] for r in records]
    for b, u, s in zip(batched, small_budget, single, strict=True):
        assert set(b) == set(s)
        for key, value in s.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-4), key
                assert u[key] == pytest.approx(value, abs=1e-4), key
            else:
                assert b[key] == u[key] == value, key


def test_reflection_rule():
    ifd = {"ori": 0.5, "q": 0.8, "a": 0.4, "qa": 0.7}
    rifd = {"ori": 0.9, "q": 0.9, "a": 0.5, "qa": 0.6}
    assert reflection.choose(ifd, rifd) == "qa"  # Q* harder; QA* passes
    assert reflection.choose(ifd, {**rifd, "qa": 0.95}) == "q"  # QA* rIFD not below Q*'s
    assert reflection.choose({**ifd, "qa": 1.2}, rifd) == "q"  # IFD(QA*) >= 1
    easier_q = {**ifd, "q": 0.3}
    assert reflection.choose(easier_q, rifd) == "a"
    assert reflection.choose({**easier_q, "a": 1.1}, rifd) == "ori"
    assert reflection.choose(easier_q, {**rifd, "a": 0.95}) == "ori"


def test_reflection_metric_applies_the_rule(tiny_models, tiny_model_dir, mixed_records):
    model, tok = tiny_models.get(str(tiny_model_dir))
    records = _reflection_records(mixed_records)
    for ratio in ("ppl", "loss"):
        rows = score_records(model, tok, records, [REFLECTION], options=ScoreOptions(dtype="float32", ratio=ratio))
        for rec, row in zip(records, rows, strict=True):
            ifd = {v: row[f"ifd_{v}"] for v in reflection.VARIANTS}
            rifd = {v: row[f"rifd_{v}"] for v in reflection.VARIANTS}
            choice = reflection.choose(ifd, rifd)
            assert row["reflection_choice"] == choice
            p, r = reflection.VARIANTS[choice]
            assert (row["selected_prompt"], row["selected_response"]) == (rec[p], rec[r])
        ori = score_records(model, tok, [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]} for r in records], [IFD, RIFD], options=FP32)
        for o, row in zip(ori, rows, strict=True):
            assert row["ifd_ori"] == pytest.approx(o[f"ifd_{ratio}"], rel=1e-4)
            assert row["rifd_ori"] == pytest.approx(o[f"rifd_{ratio}"], rel=1e-4)


def test_ifd_ratio_forms():
    ppl, loss = ifd_ratios(1.0, 2.0)
    assert ppl == pytest.approx(math.exp(-1.0))
    assert loss == pytest.approx(0.5)
    assert ifd_ratios(2.0, 1.0)[0] > 1 and ifd_ratios(2.0, 1.0)[1] > 1


def test_car():
    assert car(4.0, 1.0, 1.0) == pytest.approx(2.0)
    assert car(4.0, 1.0, 0.0) == pytest.approx(4.0)
    records = [
        {"id": "a", "teacher": "t1", "reward": 1.0},
        {"id": "b", "teacher": "t1", "reward": 3.0},
        {"id": "c", "teacher": "t2", "reward": 2.0},
    ]
    rows = [{"id": "a", "loss_base": 1.0}, {"id": "b", "loss_base": 3.0}, {"id": "c", "loss_base": 0.5}]
    got = car_by_teacher(records, rows, beta=0.5)
    assert [g["teacher"] for g in got] == ["t2", "t1"]  # 2/(1.25)=1.6 > 2/(2)=1.0
    assert got[0]["car"] == pytest.approx(1.6)
    assert got[1] == {"teacher": "t1", "count": 2, "reward": 2.0, "loss": 2.0, "car": pytest.approx(1.0)}
