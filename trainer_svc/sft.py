"""One LoRA SFT stage, readable top to bottom: setup -> train -> save.

The recipe the TrainerService runs for every job, usable directly from Python:

    from syllabus.artifacts import open_store
    from trainer_svc.sft import SFTConfig, read_dataset, run_sft

    pairs = read_dataset(open("train.jsonl", "rb").read())      # [(prompt, response), ...]
    ref, result = run_sft("bundled:smollm2-135m-instruct", pairs, SFTConfig(epochs=2),
                          open_store("file:///tmp/artifacts"), "adapters/a.tar")

Data: JSONL records `{"prompt", "response"}` become tokens with `syllabus.prompts.encode_example`
(the function the student scores with), so the loss is on the response tokens only. The loss of a
step is the mean over all response tokens of its batch. The optimiser is AdamW with linear warm-up
and cosine decay; everything random (LoRA init, dropout, data order) follows `SFTConfig.seed`, so
the same inputs give the same adapter bytes.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from syllabus.prompts import IGNORE_INDEX, encode_example

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from syllabus.artifacts import ArtifactRef, ArtifactStore

log = logging.getLogger(__name__)

# Batches are cut from windows of this many batches sorted by length, so a batch pads to similar
# lengths while data order stays random across windows (and across epochs, by the seeded shuffle).
SORT_WINDOW_BATCHES = 4

Example = tuple[list[int], list[int]]
"""One tokenised example: (input_ids, labels) with IGNORE_INDEX on prompt positions."""

ProgressFn = Callable[[int, int, float, float], None]
"""Called after every optimiser step with (step, total_steps, loss, learning_rate); step counts from 1."""


@dataclass(frozen=True)
class SFTConfig:
    """Settings of one LoRA SFT stage (the service fills it from `LoraSpec` and `TrainingSpec`)."""

    epochs: int = 1
    """Passes over the dataset."""
    learning_rate: float = 1e-3
    """Peak learning rate (after warm-up, before cosine decay)."""
    batch_size: int = 8
    """Examples per optimiser step; the last batch of an epoch may be smaller."""
    warmup_ratio: float = 0.0
    """Share of the steps spent in linear warm-up; 0 starts at the peak rate."""
    seed: int = 0
    """Seeds the LoRA initialisation, dropout and the data order of every epoch."""
    max_seq_len: int = 512
    """Examples are truncated to this many tokens (the prompt from the left; see encode_example)."""
    lora_rank: int = 8
    """Rank of the LoRA update matrices (ignored when continuing from an adapter: its own is used)."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator; the update is scaled by alpha / rank."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names that get LoRA updates."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm; 0 disables clipping."""
    bf16_autocast: bool = False
    """Run forward passes under bfloat16 autocast (weights and optimiser stay fp32)."""


@dataclass
class SFTResult:
    """What a training run reports besides the adapter."""

    losses: list[float] = field(default_factory=list)
    """Loss of every optimiser step (mean over the batch's response tokens)."""
    learning_rates: list[float] = field(default_factory=list)
    """Learning rate of every optimiser step."""

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")


class DatasetError(ValueError):
    """The dataset is not JSONL records with string "prompt" and "response"; the message says where."""


class TrainingStopped(Exception):
    """Training was asked to stop (the service is shutting down) before it finished."""


# ---------------------------------------------------------------------------------------------------
# Data


def read_dataset(data: bytes) -> list[tuple[str, str]]:
    """Parse JSONL bytes into (prompt, response) pairs; raise DatasetError naming the bad line."""
    pairs = []
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"line {lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"line {lineno} is not a JSON object")
        for key in ("prompt", "response"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise DatasetError(f"line {lineno}: {key!r} must be a non-empty string")
        pairs.append((record["prompt"], record["response"]))
    if not pairs:
        raise DatasetError("no records")
    return pairs


def encode_dataset(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], max_seq_len: int
) -> list[Example]:
    return [encode_example(tokenizer, prompt, response, max_seq_len) for prompt, response in pairs]


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch: a seeded shuffle, grouped by length."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = batch_size * SORT_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])  # stable: ties keep order
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    # Sorting put short batches first in each window; shuffle again so length does not follow step.
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: padding gets attention 0 and label IGNORE_INDEX."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# ---------------------------------------------------------------------------------------------------
# Objective and schedule


def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's response tokens (labels != IGNORE_INDEX)."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    if not (shift_labels != IGNORE_INDEX).any():
        return shift_logits.sum() * 0.0  # nothing to predict; keep the graph, contribute nothing
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="mean",
    )


def lr_at(step: int, total_steps: int, peak: float, warmup_ratio: float) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then cosine decay towards 0."""
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------
# Recipe: setup -> train -> save


def setup_model(
    base_model: PreTrainedModel, config: SFTConfig, init_adapter: Path | None = None
) -> PeftModel:
    """Wrap the base in a trainable LoRA adapter: a fresh one, or the one in `init_adapter`."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(config.seed)  # LoRA init (A is random) and, later, dropout masks
    if init_adapter is not None:
        model = PeftModel.from_pretrained(base_model, init_adapter, is_trainable=True)
    else:
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base_model, lora)
    model.train()
    return model


def train(
    model: PeftModel,
    examples: Sequence[Example],
    config: SFTConfig,
    pad_id: int,
    on_step: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SFTResult:
    """Optimise the model's trainable (LoRA) parameters on `examples`; return the step losses."""
    import torch

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    lengths = [len(ids) for ids, _ in examples]
    result = SFTResult()
    model.train()
    step = 0
    for epoch in range(config.epochs):
        for batch_indices in epoch_batches(lengths, config.batch_size, config.seed, epoch):
            if should_stop is not None and should_stop():
                raise TrainingStopped(f"stopped at step {step} of {total_steps}")
            lr = lr_at(step, total_steps, config.learning_rate, config.warmup_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = {
                k: v.to(device) for k, v in collate([examples[i] for i in batch_indices], pad_id).items()
            }
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = completion_loss(logits, batch["labels"])
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.losses.append(loss.item())
            result.learning_rates.append(lr)
            if on_step is not None:
                on_step(step, total_steps, result.losses[-1], lr)
    model.eval()
    return result


def save_adapter(model: PeftModel, base: str, store: ArtifactStore, output_key: str) -> ArtifactRef:
    """Publish the adapter as a deterministic tar of its peft directory at `output_key`."""
    from syllabus.models import pack_adapter

    # Name the base by its ModelRef, not by this machine's cache path: the bytes then depend only
    # on the training inputs, and the adapter says what it belongs to.
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = base
    tmp = Path(tempfile.mkdtemp(prefix="syllabus-adapter-"))
    try:
        # save_embedding_layers=False: we never train embeddings, and "auto" would look the base up
        # on the Hugging Face Hub to find out.
        model.save_pretrained(tmp, save_embedding_layers=False)
        return store.put_bytes(output_key, pack_adapter(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_sft(
    base: str,
    pairs: Sequence[tuple[str, str]],
    config: SFTConfig,
    store: ArtifactStore,
    output_key: str,
    init_adapter: Path | None = None,
    on_step: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[ArtifactRef, SFTResult]:
    """The whole stage: load `base`, attach LoRA (or `init_adapter`), train on `pairs`, publish."""
    import torch

    from syllabus.models import load_model

    # setup
    base_model, tokenizer = load_model(base)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = setup_model(base_model.to(device), config, init_adapter)
    examples = encode_dataset(tokenizer, pairs, config.max_seq_len)
    log.info(
        "sft: %d examples, %d epochs, batch %d, %d trainable parameters on %s",
        len(examples),
        config.epochs,
        config.batch_size,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        device,
    )
    # train
    result = train(model, examples, config, tokenizer.pad_token_id, on_step, should_stop)
    # save
    ref = save_adapter(model, base, store, output_key)
    log.info("sft: mean loss %.4f, adapter %s (%d bytes)", result.mean_loss, ref.uri, ref.size_bytes)
    return ref, result
