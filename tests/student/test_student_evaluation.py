"""Unit tests of label-likelihood classification on the tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from student_svc.evaluation import evaluate_classification, label_logprobs
from syllabus.prompts import IGNORE_INDEX, encode_example

pytestmark = pytest.mark.unit

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "passcode_forgotten"]


def _direct_label_logprob(model, tok, prompt: str, label: str) -> float:
    """Summed log p(label tokens + end-of-turn | prompt) from one full forward."""
    ids, labels = encode_example(tok, prompt, label)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return -F.cross_entropy(
        logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX, reduction="sum"
    ).item()


@pytest.fixture
def eval_records() -> list[dict]:
    texts = [
        "Where is my card?",
        "I forgot my PIN",
        "What rate do you use for euros?",
        "top up did not work",
        "stolen",
    ]
    return [
        {"id": f"e{i}", "input": t, "label": LABELS[(i * 2) % 5], "prompt": f"Classify: {t}\nIntent:"}
        for i, t in enumerate(texts)
    ]


def test_label_logprobs_match_full_forward(tiny_models, tiny_model_dir):
    model, tok = tiny_models.get(str(tiny_model_dir))
    prompt = "Classify: my card has not arrived yet\nIntent:"
    got = label_logprobs(model, tok, prompt, LABELS)
    want = [_direct_label_logprob(model, tok, prompt, label) for label in LABELS]
    assert got == pytest.approx(want, abs=1e-4)


def test_truncated_prompts_fall_back_to_full_sequences(tiny_models, tiny_model_dir):
    model, tok = tiny_models.get(str(tiny_model_dir))
    prompt = "word " * 80  # max_len 40 truncates the prompt differently for labels of different length
    got = label_logprobs(model, tok, prompt, LABELS, max_len=40)
    want = []
    for label in LABELS:
        ids, labels = encode_example(tok, prompt, label, max_len=40)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        want.append(
            -F.cross_entropy(
                logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX, reduction="sum"
            ).item()
        )
    assert got == pytest.approx(want, abs=1e-4)


def test_prediction_is_argmax_of_direct_label_logprobs(tiny_models, tiny_model_dir, eval_records):
    model, tok = tiny_models.get(str(tiny_model_dir))
    rows, summary = evaluate_classification(model, tok, eval_records, LABELS)
    correct = 0
    for rec, row in zip(eval_records, rows, strict=True):
        direct = {label: _direct_label_logprob(model, tok, rec["prompt"], label) for label in LABELS}
        expected = max(LABELS, key=lambda label: direct[label])
        assert row["prediction"] == expected
        assert row["correct"] == (expected == rec["label"])
        assert row["label_logprobs"] == pytest.approx(direct, abs=1e-4)
        assert (row["id"], row["label"]) == (rec["id"], rec["label"])
        correct += row["correct"]
    assert (summary.correct, summary.total) == (correct, len(eval_records))
    assert summary.accuracy == pytest.approx(correct / len(eval_records))


def test_item_batches_give_the_same_logprobs(tiny_models, tiny_model_dir, eval_records):
    model, tok = tiny_models.get(str(tiny_model_dir))
    whole, _ = evaluate_classification(model, tok, eval_records, LABELS)
    in_pairs, _ = evaluate_classification(model, tok, eval_records, LABELS, batch_size=2)
    for a, b in zip(whole, in_pairs, strict=True):
        assert a["label_logprobs"] == pytest.approx(b["label_logprobs"], abs=1e-4)
