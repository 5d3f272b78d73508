"""kd, dft and anchored objectives on tiny models: each loss equals its formula computed from a
plain full-logit forward, and each has the effect it is for (kd moves the student to the teacher's
distribution, anchored keeps it near its reference)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_llama

from syllabus import topk
from syllabus.models import load_model
from syllabus.prompts import IGNORE_INDEX, encode_example
from syllabus.recipe import Distill, Recipe
from teacher_svc.logprobs import transformers_topk
from trainer_svc.objectives import anchored_step_loss, dft_step_loss, divergence, kd_step_loss, opd_step_loss
from trainer_svc.packing import CompletionLM, build_batch
from trainer_svc.staged import sft_step_loss, train_recipe

pytestmark = pytest.mark.unit

RECORDS = [{"prompt": f"Classify message {i}: my card {w}", "response": w}
           for i, w in enumerate(["arrived late", "was declined", "is lost", "got charged twice"] * 3)]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Larger weights than the student's: a peaked, informative distribution to distil.
    return tiny_llama(tmp_path_factory.mktemp("teacher"), initializer_range=0.2, seed=1)


def _recipe(**stage) -> Recipe:
    return Recipe.model_validate({"seed": 0, "max_seq_len": 64, "packing": False, "batch_size": 4, "bf16": False,
                                  "stages": [{"lr": 5e-2, "epochs": 4, "lora": {"rank": 8, "alpha": 16}, **stage}]})  # fmt: skip


def _teacher_set(teacher_dir: Path, k: int = 20) -> topk.TopKSet:
    lm, tok = load_model(str(teacher_dir))
    rows = transformers_topk(lm.eval(), tok, [(r["prompt"], r["response"]) for r in RECORDS], k, 64)
    data = topk.dumps({topk.record_digest(r["prompt"], r["response"]): row for r, row in zip(RECORDS, rows, strict=True)},
                      k, {"id": "tiny-teacher"})  # fmt: skip
    return topk.loads(data)


def _plain_logits(model, tok, record) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at the positions predicting the response targets, the targets): one unbatched forward."""
    ids, labels = encode_example(tok, record["prompt"], record["response"], 64)
    at = [t for t, lab in enumerate(labels) if lab != IGNORE_INDEX]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return logits[[t - 1 for t in at]], torch.tensor([labels[t] for t in at])


def _kl_to_teacher(model, tok, tset: topk.TopKSet) -> float:
    """Mean over response tokens of KL(p_teacher^k || p_student^k), both renormalised over the top-k."""
    total, n = 0.0, 0
    for r in RECORDS:
        logits, _ = _plain_logits(model, tok, r)
        row = tset.for_record(r["prompt"], r["response"], len(logits))
        p = torch.log_softmax(torch.from_numpy(row.logprobs.astype("float32")), -1)
        q = torch.log_softmax(logits.gather(1, torch.from_numpy(row.ids.astype("int64"))), -1)
        total += float((p.exp() * (p - q)).sum())
        n += len(logits)
    return total / n


def test_divergences_match_their_definitions() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(5, 7, generator=g), -1)
    q = torch.log_softmax(torch.randn(5, 7, generator=g), -1)
    fkl = F.kl_div(q, p, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(divergence(p, q, "forward_kl", 0.5), fkl)
    torch.testing.assert_close(divergence(p, q, "jsd", 0.0), fkl)
    torch.testing.assert_close(divergence(p, q, "jsd", 1.0), F.kl_div(p, q, reduction="none", log_target=True).sum(-1))
    m = torch.log(0.5 * p.exp() + 0.5 * q.exp())
    jsd = 0.5 * (p.exp() * (p - m)).sum(-1) + 0.5 * (q.exp() * (q - m)).sum(-1)
    torch.testing.assert_close(divergence(p, q, "jsd", 0.5), jsd)
    torch.testing.assert_close(divergence(p, q, "jsd", 0.5), divergence(q, p, "jsd", 0.5))  # symmetric at 1/2
    assert float(divergence(p, p, "jsd", 0.3).abs().max()) < 1e-6


def test_kd_loss_is_the_formula_and_alpha_zero_is_sft(tiny_model_dir: Path, teacher_dir: Path) -> None:
    lm, tok = load_model(str(tiny_model_dir))
    tset = _teacher_set(teacher_dir, k=5)
    recs = RECORDS[:3]
    seqs = [encode_example(tok, r["prompt"], r["response"], 64) for r in recs]
    rows = [tset.for_record(r["prompt"], r["response"], sum(t != IGNORE_INDEX for t in s[1])) for r, s in zip(recs, seqs, strict=True)]
    batch = build_batch([[0, 1, 2]], seqs, tok.pad_token_id, share_prefix=True)  # packed, prefix shared
    core = CompletionLM(lm)
    cfg = Distill(alpha=0.7, temperature=2.0, top_k=5)
    with torch.no_grad():
        loss, _, _ = kd_step_loss(core, batch, rows, cfg, False, 1)
    want, n = 0.0, 0
    for r, row in zip(recs, rows, strict=True):
        logits, tgt = _plain_logits(lm, tok, r)
        p = torch.log_softmax(torch.from_numpy(row.logprobs.astype("float32")) / 2.0, -1)
        q = torch.log_softmax(logits.gather(1, torch.from_numpy(row.ids.astype("int64"))) / 2.0, -1)
        kl = (p.exp() * (p - q)).sum(-1)
        ce = F.cross_entropy(logits, tgt, reduction="none")
        want += float((0.7 * 4.0 * kl + 0.3 * ce).sum())
        n += len(tgt)
    assert float(loss) == pytest.approx(want / n, rel=1e-4)

    with torch.no_grad():
        sft, _, _ = sft_step_loss(core, batch, 3, False, 1)
        kd0, _, _ = kd_step_loss(core, batch, rows, Distill(alpha=0.0), False, 1)
    assert float(kd0) == pytest.approx(float(sft), rel=1e-6)


def test_kd_moves_the_student_to_the_teacher_distribution(tiny_model_dir: Path, teacher_dir: Path) -> None:
    tset = _teacher_set(teacher_dir)
    lm, tok = load_model(str(tiny_model_dir))
    before = _kl_to_teacher(lm, tok, tset)
    # Full fine-tuning: a LoRA on a hidden-64 model's attention can barely move its output layer.
    full = {"lora": None, "lr": 5e-3, "epochs": 8}
    kd_model, _, _ = train_recipe(lm, tok, RECORDS, _recipe(objective="kd", distill={"alpha": 1.0}, **full), teacher_topk=tset)
    after_kd = _kl_to_teacher(kd_model, tok, tset)
    lm, tok = load_model(str(tiny_model_dir))
    sft_model, _, _ = train_recipe(lm, tok, RECORDS, _recipe(objective="sft", **full))
    after_sft = _kl_to_teacher(sft_model, tok, tset)
    # SFT learns the records' tokens, not the teacher's distribution over the alternatives: kd must
    # close most of the gap and far more of it than SFT on the same records and budget (seen: 0.095
    # before, 0.013 after kd, 0.097 after SFT).
    assert after_kd < 0.3 * before, (before, after_kd)
    assert after_kd < 0.3 * after_sft, (after_kd, after_sft)


def test_kd_without_teacher_logprobs_is_refused(tiny_model_dir: Path) -> None:
    lm, tok = load_model(str(tiny_model_dir))
    with pytest.raises(ValueError, match="teacher's top-k"):
        train_recipe(lm, tok, RECORDS, _recipe(objective="kd"))


def test_dft_loss_is_probability_weighted_nll(tiny_model_dir: Path) -> None:
    lm, tok = load_model(str(tiny_model_dir))
    recs = RECORDS[:4]
    seqs = [encode_example(tok, r["prompt"], r["response"], 64) for r in recs]
    batch = build_batch([[0, 1], [2, 3]], seqs, tok.pad_token_id)
    with torch.no_grad():
        loss, _, per_item = dft_step_loss(CompletionLM(lm), batch, False, 1)
    terms, nll = [], []
    for r in recs:
        logits, tgt = _plain_logits(lm, tok, r)
        lp = -F.cross_entropy(logits, tgt, reduction="none")
        terms += (-lp.exp() * lp).tolist()
        nll.append(float(-lp.mean()))
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    assert per_item == pytest.approx(nll, rel=1e-4)  # curricula still get the plain NLL


def test_dft_gradient_is_scaled_by_the_token_probability(tiny_model_dir: Path) -> None:
    # One record, one response token: d(dft)/dθ = p * d(nll)/dθ exactly (p detached).
    lm, tok = load_model(str(tiny_model_dir))
    seqs = [encode_example(tok, "Say it", "", 64)]  # the response is the end-of-turn token alone
    batch = build_batch([[0]], seqs, tok.pad_token_id)
    core = CompletionLM(lm)
    head = lm.lm_head.weight
    loss, _, _ = dft_step_loss(core, batch, False, 1)
    (g_dft,) = torch.autograd.grad(loss, head)
    nll, _, per_item = sft_step_loss(core, batch, 1, False, 1)
    (g_nll,) = torch.autograd.grad(nll, head)
    torch.testing.assert_close(g_dft, math.exp(-per_item[0]) * g_nll, rtol=1e-4, atol=1e-9)


def test_anchored_is_dft_plus_the_kl_to_the_reference(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    lm, tok = load_model(str(tiny_model_dir))
    model = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    seqs = [encode_example(tok, r["prompt"], r["response"], 64) for r in RECORDS[:2]]
    batch = build_batch([[0, 1]], seqs, tok.pad_token_id)
    core = CompletionLM(model)
    with torch.no_grad():
        dft, _, _ = dft_step_loss(core, batch, False, 1)
        anchored, _, _ = anchored_step_loss(core, core, model, batch, 0.5, False, 1)
    kl, n = 0.0, 0
    for r in RECORDS[:2]:
        logits, _ = _plain_logits(model, tok, r)
        with model.disable_adapter():
            ref, _ = _plain_logits(model, tok, r)
        kl += float(F.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(ref, -1), reduction="sum", log_target=True))
        n += len(logits)
    assert kl > 0  # the adapter (not zero-initialised here) moved the model
    assert float(anchored) == pytest.approx(float(dft) + 0.5 * kl / n, rel=1e-4)


def test_anchor_keeps_the_student_near_its_reference(tiny_model_dir: Path) -> None:
    def drift(lam: float) -> float:
        lm, tok = load_model(str(tiny_model_dir))
        model, _, _ = train_recipe(lm, tok, RECORDS, _recipe(objective="anchored", anchor_lambda=lam))
        kl, n = 0.0, 0
        for r in RECORDS:
            logits, _ = _plain_logits(model, tok, r)
            with model.disable_adapter():
                ref, _ = _plain_logits(model, tok, r)
            kl += float(F.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(ref, -1), reduction="sum", log_target=True))
            n += len(logits)
        return kl / n

    free, anchored = drift(0.0), drift(5.0)
    assert anchored < 0.5 * free, (anchored, free)


def test_anchored_needs_a_lora() -> None:
    with pytest.raises(ValueError, match="anchored needs a LoRA"):
        Recipe.model_validate({"stages": [{"objective": "anchored", "lora": None}]})


def test_opd_moves_the_students_own_samples_to_the_teachers_log_probs(tiny_model_dir: Path, teacher_dir: Path) -> None:
    from student_svc.evaluation import generate_texts

    lm, tok = load_model(str(tiny_model_dir))
    texts = generate_texts(lm.eval(), tok, [[{"role": "user", "content": r["prompt"]}] for r in RECORDS], max_new_tokens=6,
                           temperature=1.0, seed=0)  # fmt: skip
    samples = [{"prompt": r["prompt"], "response": t} for r, t in zip(RECORDS, texts, strict=True)]
    teacher, _ = load_model(str(teacher_dir))
    rows = transformers_topk(teacher.eval(), tok, [(s["prompt"], s["response"]) for s in samples], 4, 64)
    tset = topk.loads(topk.dumps({topk.record_digest(s["prompt"], s["response"]): row for s, row in zip(samples, rows, strict=True)},
                                 4, {"id": "t"}))  # fmt: skip

    def gap(model) -> tuple[float, float]:
        """(mean sampled reverse KL log p_S - log p_T, mean |log p_S - log p_T|) over the samples' tokens."""
        diffs = []
        for s in samples:
            logits, tgt = _plain_logits(model, tok, s)
            lp = -F.cross_entropy(logits, tgt, reduction="none")
            row = tset.for_record(s["prompt"], s["response"], len(tgt))
            diffs += (lp - torch.from_numpy(row.chosen.astype("float32"))).tolist()
        return sum(diffs) / len(diffs), sum(abs(d) for d in diffs) / len(diffs)

    # The loss is the per-token policy gradient with advantage log p_T - log p_S; its report the gap.
    seqs = [encode_example(tok, s["prompt"], s["response"], 64) for s in samples[:3]]
    batch = build_batch([[0, 1, 2]], seqs, tok.pad_token_id)
    _loss, reported, _ = opd_step_loss(CompletionLM(lm), batch, [tset.for_record(s["prompt"], s["response"], sum(t != IGNORE_INDEX for t in q[1]))
                                                               for s, q in zip(samples[:3], seqs, strict=True)], False, 1)  # fmt: skip
    want = []
    for s in samples[:3]:
        logits, tgt = _plain_logits(lm, tok, s)
        lp = -F.cross_entropy(logits, tgt, reduction="none")
        want += (lp - torch.from_numpy(tset.for_record(s["prompt"], s["response"], len(tgt)).chosen.astype("float32"))).tolist()
    assert reported == pytest.approx(sum(want) / len(want), rel=1e-3, abs=1e-4)

    before = gap(lm)
    model, _, _ = train_recipe(lm, tok, samples, _recipe(objective="opd", lora=None, lr=5e-3, epochs=8), teacher_topk=tset)
    after = gap(model)
    assert after[1] < 0.5 * before[1], (before, after)


def test_a_kd_or_opd_request_without_teacher_logprobs_is_refused() -> None:
    from syllabus_sdk.common.v1 import common_pb2
    from syllabus_sdk.trainer.v1 import trainer_pb2
    from trainer_svc.jobs import InvalidRequest, plan_from_request

    for objective in ("kd", "opd"):
        req = trainer_pb2.StartTrainingRequest(
            job_key="k", model=common_pb2.ModelRef(base="bundled:smollm2-135m-instruct"),
            dataset=common_pb2.ArtifactRef(uri="file:///x/train.jsonl"), output_key="jobs/j/kd.tar",
            recipe_yaml=f"stages: [{{objective: {objective}}}]",
        )  # fmt: skip
        with pytest.raises(InvalidRequest, match="teacher_logprobs"):
            plan_from_request(req)
        req.teacher_logprobs.CopyFrom(common_pb2.ArtifactRef(uri="file:///x/topk.npz", sha256="0" * 64))
        assert plan_from_request(req).teacher_logprobs.uri == "file:///x/topk.npz"
