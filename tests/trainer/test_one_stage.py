"""A plain SFT request on the tiny model: the one-stage recipe `plan_from_request` builds, run through
the staged trainer. Dataset checks, completion-only labels and loss, learning, publishing, continuing,
seeding. (Multi-stage recipes, DPO, packing and resume: test_staged.py.)"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from syllabus.models import load_model, load_tokenizer, unpack_adapter
from syllabus.prompts import IGNORE_INDEX
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.trainer.v1 import trainer_pb2
from trainer_svc.jobs import DatasetError, TrainingPlan, plan_from_request, read_dataset
from trainer_svc.packing import CompletionLM, build_batch
from trainer_svc.staged import encode_records, new_adapter, run_recipe, save_outputs, sft_step_loss, train_recipe

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
RECORDS = [{"prompt": p, "response": r} for p, r in PAIRS]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def plan(base: Path, *, rank: int = 4, dropout: float = 0.0, **training) -> TrainingPlan:
    """The plan of a plain SFT request (objective unset), as the service validates it."""
    spec = {"epochs": 3, "learning_rate": 3e-2, "batch_size": 4, "max_seq_len": 128, **training}
    req = trainer_pb2.StartTrainingRequest(
        job_key="k",
        model=common_pb2.ModelRef(base=str(base)),
        dataset=common_pb2.ArtifactRef(uri="file:///x/train.jsonl"),
        lora=trainer_pb2.LoraSpec(rank=rank, alpha=2.0 * rank, dropout=dropout, target_modules=TARGETS),
        training=trainer_pb2.TrainingSpec(**spec),
        output_key="jobs/t/a.tar",
    )
    p = plan_from_request(req)
    assert p.pairs_only and len(p.recipe.stages) == 1 and p.recipe.stages[0].objective == "sft"
    return p


def dataset_loss(model, tok) -> float:
    """Mean NLL over all response tokens of RECORDS, one plain forward per record (no packing code)."""
    nll, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ((ids, labels),) in encode_records(tok, RECORDS, "sft", 128, range(len(RECORDS)), {}).values():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            targets = torch.tensor(labels[1:])
            nll += F.cross_entropy(logits[:-1], targets, ignore_index=IGNORE_INDEX, reduction="sum").item()
            n += int((targets != IGNORE_INDEX).sum())
    return nll / n


def lora_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path):
    """One short run of a plain request: 8 records, 4 per step, 3 epochs = 6 steps."""
    p = plan(tiny_model_dir)
    lm, tok = load_model(str(tiny_model_dir))
    loss_before = dataset_loss(lm, tok)  # a fresh LoRA has B = 0: the base's loss
    steps = []
    model, snapshots, result = train_recipe(lm, tok, RECORDS, p.recipe, on_step=steps.append)
    return model, snapshots, tok, result, loss_before, steps


def test_read_dataset_names_bad_records() -> None:
    good = b'{"prompt": "p", "response": "r", "id": "x"}\n\n{"prompt": "q", "response": "s"}\n'
    assert read_dataset(good) == [("p", "r"), ("q", "s")]
    with pytest.raises(DatasetError, match="line 2: 'response'"):
        read_dataset(b'{"prompt": "p", "response": "r"}\n{"prompt": "q"}\n')
    with pytest.raises(DatasetError, match="line 1: 'prompt' must be a non-empty string"):
        read_dataset(b'{"prompt": "", "response": "r"}\n')
    with pytest.raises(DatasetError, match="line 1 is not valid JSON"):
        read_dataset(b"{nope\n")
    with pytest.raises(DatasetError, match="line 2 is not a JSON object"):
        read_dataset(b'{"prompt": "p", "response": "r"}\n["p", "r"]\n')
    with pytest.raises(DatasetError, match="no records"):
        read_dataset(b"\n")


def test_labels_are_ignored_on_prompt_tokens_and_only_responses_are_targets(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    enc = encode_records(tok, RECORDS, "sft", 128, [0, 1], {})
    for i in (0, 1):
        ((ids, labels),) = enc[i]
        response_ids = tok(PAIRS[i][1], add_special_tokens=False)["input_ids"]
        n_prompt = len(ids) - len(response_ids) - 1  # the response ends with the EOS token
        assert n_prompt > 5
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:] == response_ids + [tok.eos_token_id]
    # Packed into one row, the step's targets are exactly the responses' tokens, each predicted
    # from the position before it.
    seqs = [enc[0][0], enc[1][0]]
    batch = build_batch([[0, 1]], seqs, tok.pad_token_id)
    want = [t for _, labels in seqs for t in labels[1:] if t != IGNORE_INDEX]
    got = batch.targets[0][batch.targets[0] != IGNORE_INDEX].tolist()
    assert got == want


def test_step_loss_is_the_mean_over_the_steps_response_tokens(tiny_model_dir: Path) -> None:
    lm, tok = load_model(str(tiny_model_dir))
    enc = encode_records(tok, RECORDS, "sft", 128, [0, 1, 2], {})
    seqs = [enc[i][0] for i in (0, 1, 2)]
    batch = build_batch([[0, 1], [2]], seqs, tok.pad_token_id)
    with torch.no_grad():
        _, reported, per_item = sft_step_loss(CompletionLM(lm), batch, 3, False, 1)
        # By hand: each sample alone; the token at t is predicted from t-1; only response tokens count.
        terms = []
        for ids, labels in seqs:
            logprobs = torch.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
            terms.append([-logprobs[t - 1, labels[t]].item() for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX])
    flat = [x for ts in terms for x in ts]
    assert reported == pytest.approx(sum(flat) / len(flat), rel=1e-4)  # token mean, not mean of samples
    assert per_item == pytest.approx([sum(ts) / len(ts) for ts in terms], rel=1e-4)


def test_training_changes_lora_weights_and_lowers_the_loss(trained) -> None:
    model, snapshots, tok, result, loss_before, steps = trained
    assert snapshots == []  # one stage, after: continue: the live adapter is the output
    after = lora_state(model)
    b = [k for k in after if "lora_B" in k]
    assert len(b) == 2 * len(TARGETS)  # q,k,v,o in 2 layers
    assert all(after[k].abs().sum() > 0 for k in b)  # B starts at 0
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    # A random-init model starts near ln(vocab) ~ 10.8 nats and LoRA on attention moves it slowly;
    # 0.1 nats in 6 steps is well clear of noise (the run is seeded, so this is deterministic).
    assert dataset_loss(model, tok) < loss_before - 0.1
    assert sum(result.losses[-2:]) < sum(result.losses[:2])  # last epoch vs first epoch
    # Progress: one call per optimiser step, 3 epochs x 2 steps of 4 records.
    assert [(s.global_step, s.global_total) for s in steps] == [(i, 6) for i in range(1, 7)]
    assert [s.loss for s in steps] == result.losses


def test_published_adapter_reproduces_the_trained_logits(trained, tiny_model_dir: Path, store, tmp_path: Path) -> None:
    from peft import PeftModel

    model, snapshots, tok, *_ = trained
    ref, merged = save_outputs(model, snapshots, "bundled:smollm2-135m-instruct", tok, store, "adapters/t.tar", None)
    assert merged is None
    adapter_dir = unpack_adapter(store.get_bytes(ref), tmp_path / "adapter")
    # The adapter names its base by ModelRef, not by this machine's path.
    assert (
        '"base_model_name_or_path": "bundled:smollm2-135m-instruct"'
        in (adapter_dir / "adapter_config.json").read_text()
    )
    base, _ = load_model(str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(base, adapter_dir)
    ids = torch.tensor([encode_records(tok, RECORDS, "sft", 128, [3], {})[3][0][0]])
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    with torch.no_grad(), loaded.disable_adapter():
        assert not torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-4)  # the adapter matters


def test_continuing_starts_from_the_init_adapter(trained, tiny_model_dir: Path, tmp_path: Path) -> None:
    model, *_ = trained
    init_dir = tmp_path / "init"
    model.save_pretrained(init_dir, save_embedding_layers=False)
    # A different seed and rank in the request: the adapter's own weights and config win.
    other = plan(tiny_model_dir, rank=2, seed=123).recipe
    base, _ = load_model(str(tiny_model_dir))
    cont = new_adapter(base, other.stages[0], other.seed, init_adapter=init_dir)
    want, got = lora_state(model), lora_state(cont)
    assert want.keys() == got.keys()
    assert all(got[k].equal(want[k]) for k in want)
    assert cont.peft_config["default"].r == 4
    assert all(p.requires_grad for n, p in cont.named_parameters() if "lora_" in n)


def test_same_seed_gives_identical_adapter_bytes(tiny_model_dir: Path, store) -> None:
    def publish(seed: int, key: str):
        p = plan(tiny_model_dir, epochs=1, learning_rate=1e-2, batch_size=3, dropout=0.1, seed=seed)
        return run_recipe(str(tiny_model_dir), RECORDS, p.recipe, store, key)[0]

    a, b, c = publish(7, "a.tar"), publish(7, "b.tar"), publish(8, "c.tar")
    assert a.sha256 == b.sha256
    assert store.get_bytes(a) == store.get_bytes(b)
    assert c.sha256 != a.sha256
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(a))) as tar:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(tar.getnames())
