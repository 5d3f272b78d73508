"""The LoRA SFT recipe on the tiny model: completion-only loss, learning, saving, continuing, seeding."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import pytest

from syllabus.models import load_model, pack_adapter, unpack_adapter
from syllabus.prompts import IGNORE_INDEX
from trainer_svc.sft import (
    DatasetError,
    SFTConfig,
    collate,
    completion_loss,
    encode_dataset,
    epoch_batches,
    lr_at,
    read_dataset,
    run_sft,
    setup_model,
    train,
)

pytestmark = pytest.mark.unit

PAIRS = [
    ("Classify: my card has not arrived yet", "card_arrival"),
    ("Classify: I lost my card on the bus", "lost_or_stolen_card"),
    ("Classify: what rate do you use to convert euros?", "exchange_rate"),
    ("Classify: my top-up did not go through", "top_up_failed"),
    ("Classify: I forgot my passcode, help", "passcode_forgotten"),
    ("Classify: when will the new card be delivered to me?", "card_arrival"),
    ("Classify: someone stole my wallet with my card", "lost_or_stolen_card"),
    ("Classify: the top up failed twice today", "top_up_failed"),
]
FAST = SFTConfig(
    epochs=3, learning_rate=3e-2, batch_size=4, lora_rank=4, lora_alpha=8.0, seed=0, max_seq_len=128
)


def dataset_loss(model, examples, pad_id) -> float:
    """Mean loss over all response tokens of the dataset (one batch), in eval mode."""
    import torch

    model.eval()
    batch = collate(examples, pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return completion_loss(logits, batch["labels"]).item()


def lora_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path):
    """One short run: (model after training, tokenizer, examples, LoRA weights before, result, loss before)."""
    base, tok = load_model(str(tiny_model_dir))
    model = setup_model(base, FAST)
    examples = encode_dataset(tok, PAIRS, FAST.max_seq_len)
    before = lora_state(model)
    loss_before = dataset_loss(model, examples, tok.pad_token_id)
    steps = []
    result = train(model, examples, FAST, tok.pad_token_id, on_step=lambda *a: steps.append(a))
    return model, tok, examples, before, result, loss_before, steps


def test_read_dataset_names_bad_records() -> None:
    good = b'{"prompt": "p", "response": "r", "id": "x"}\n\n{"prompt": "q", "response": "s"}\n'
    assert read_dataset(good) == [("p", "r"), ("q", "s")]
    with pytest.raises(DatasetError, match="line 2: 'response'"):
        read_dataset(b'{"prompt": "p", "response": "r"}\n{"prompt": "q"}\n')
    with pytest.raises(DatasetError, match="line 1 is not valid JSON"):
        read_dataset(b"{nope\n")
    with pytest.raises(DatasetError, match="no records"):
        read_dataset(b"\n")


def test_labels_are_ignored_on_prompt_and_padding(tiny_model_dir: Path) -> None:
    from syllabus.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    examples = encode_dataset(tok, PAIRS[:2], 128)
    batch = collate(examples, tok.pad_token_id)
    for row, (ids, labels) in enumerate(examples):
        response_ids = tok("card_arrival" if row == 0 else "lost_or_stolen_card", add_special_tokens=False)[
            "input_ids"
        ]
        n_prompt = len(ids) - len(response_ids) - 1  # the response ends with the EOS token
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:] == response_ids + [tok.eos_token_id]
        assert batch["labels"][row, len(ids) :].eq(IGNORE_INDEX).all()
        assert batch["attention_mask"][row].sum().item() == len(ids)


def test_loss_is_mean_over_response_tokens_of_the_batch(tiny_model_dir: Path) -> None:
    import torch

    model, tok = load_model(str(tiny_model_dir))
    examples = encode_dataset(tok, PAIRS[:3], 128)
    batch = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # By hand: the token at t is predicted from position t-1; only response positions count.
    terms = []
    for row, (ids, labels) in enumerate(examples):
        logprobs = torch.log_softmax(logits[row].double(), dim=-1)
        terms += [-logprobs[t - 1, labels[t]].item() for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX]
    assert len(terms) == sum(sum(lab != IGNORE_INDEX for lab in labels) for _, labels in examples)
    assert completion_loss(logits, batch["labels"]).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_training_changes_lora_weights_and_lowers_the_loss(trained) -> None:
    model, tok, examples, before, result, loss_before, steps = trained
    after = lora_state(model)
    assert before.keys() == after.keys() and len(after) > 0
    assert all(not before[k].equal(after[k]) for k in after if "lora_B" in k)  # B starts at 0
    # A random-init model starts near ln(vocab) ~ 10.8 nats and LoRA on attention moves it slowly;
    # 0.1 nats in 6 steps is well clear of noise (the run is seeded, so this is deterministic).
    assert dataset_loss(model, examples, tok.pad_token_id) < loss_before - 0.1
    assert sum(result.losses[-2:]) < sum(result.losses[:2])  # last epoch vs first epoch
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    # Progress: one call per optimiser step, 3 epochs x 2 batches.
    assert [s[:2] for s in steps] == [(i, 6) for i in range(1, 7)]
    assert [s[2] for s in steps] == result.losses


def test_lr_schedule_warms_up_then_decays() -> None:
    lrs = [lr_at(s, 10, 1.0, 0.2) for s in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0]  # 2 warm-up steps reach the peak, where the decay starts
    assert all(a > b for a, b in itertools.pairwise(lrs[2:]))
    assert lrs[-1] > 0
    assert lr_at(0, 10, 1.0, 0.0) == 1.0


def test_epoch_batches_cover_the_data_once_and_follow_the_seed() -> None:
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10, 11]
    batches = epoch_batches(lengths, 3, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in batches)
    assert batches == epoch_batches(lengths, 3, seed=1, epoch=0)
    assert batches != epoch_batches(lengths, 3, seed=1, epoch=1) or batches != epoch_batches(
        lengths, 3, seed=2, epoch=0
    )


def test_saved_adapter_reproduces_the_trained_logits(
    trained, tiny_model_dir: Path, store, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel

    from trainer_svc.sft import save_adapter

    model, tok, examples, *_ = trained
    ref = save_adapter(model, str(tiny_model_dir), store, "adapters/trained.tar")
    adapter_dir = unpack_adapter(store.get_bytes(ref), tmp_path / "adapter")
    base, _ = load_model(str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(base, adapter_dir)
    batch = collate(examples, tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, want)


def test_continuing_starts_from_the_init_adapter(trained, tiny_model_dir: Path, tmp_path: Path) -> None:
    model, *_ = trained
    init_dir = tmp_path / "init"
    model.save_pretrained(init_dir)
    base, _ = load_model(str(tiny_model_dir))
    # A different seed and rank: the adapter's own weights and config win.
    cont = setup_model(base, SFTConfig(seed=123, lora_rank=2), init_adapter=init_dir)
    want, got = lora_state(model), lora_state(cont)
    assert want.keys() == got.keys()
    assert all(got[k].equal(want[k]) for k in want)
    assert all(p.requires_grad for n, p in cont.named_parameters() if "lora_" in n)


def test_same_seed_gives_identical_adapter_bytes(tiny_model_dir: Path, store) -> None:
    cfg = SFTConfig(
        epochs=1, learning_rate=1e-2, batch_size=3, lora_rank=4, lora_alpha=8.0, lora_dropout=0.1, seed=7
    )
    a, _ = run_sft(str(tiny_model_dir), PAIRS, cfg, store, "a.tar")
    b, _ = run_sft(str(tiny_model_dir), PAIRS, cfg, store, "b.tar")
    c, _ = run_sft(str(tiny_model_dir), PAIRS, SFTConfig(**{**cfg.__dict__, "seed": 8}), store, "c.tar")
    assert a.sha256 == b.sha256
    assert store.get_bytes(a) == store.get_bytes(b)
    assert c.sha256 != a.sha256
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(a))) as tar:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(tar.getnames())


def test_pack_adapter_is_what_the_store_gets(trained, tmp_path: Path, store, tiny_model_dir: Path) -> None:
    from trainer_svc.sft import save_adapter

    model, *_ = trained
    ref = save_adapter(model, "bundled:smollm2-135m-instruct", store, "x/adapter.tar")
    unpacked = unpack_adapter(store.get_bytes(ref), tmp_path / "u")
    assert pack_adapter(unpacked) == store.get_bytes(ref)
    assert (
        '"base_model_name_or_path": "bundled:smollm2-135m-instruct"'
        in (unpacked / "adapter_config.json").read_text()
    )
