"""Per-sample response loss in length-bucketed batches, and LoBaSS learnability.

Learnability follows LoBaSS, "Learnability-Based Sample Selection" (arXiv 2310.13008):

    s(x) = (L0(x) - Lref(x)) / L0(x)

L0 is the response loss under the base student (adapter disabled) and Lref the loss under the
reference adapter (the student briefly fine-tuned on the candidates, or the previous round's
adapter). s is high when the student does not know the sample yet (L0 high) but can learn it
(Lref low), and low when both losses are low (nothing to learn) or both high (too hard).

Both losses come from one model load: the caller passes a peft model wrapping the base with the
reference adapter, and L0 is computed inside `with model.disable_adapter():`.

"Response loss" is the mean NLL over the response tokens only, with the sample tokenized by
`syllabus.prompts.encode_example`, exactly as the trainer tokenizes it. Samples are sorted by
length into batches (right padding + attention mask), and logits are projected only at the
positions that predict a response token, so memory scales with response tokens, not sequence
length times vocabulary.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from syllabus.prompts import IGNORE_INDEX, encode_example

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LOSS_BASE = "loss_base"
LOSS_REF = "loss_ref"
LEARNABILITY = "learnability"
ALL_METRICS = (LOSS_BASE, LOSS_REF, LEARNABILITY)
#: Metrics that need the reference adapter.
REF_METRICS = frozenset({LOSS_REF, LEARNABILITY})

DEFAULT_MAX_LEN = 512
DEFAULT_BATCH_SIZE = 16
#: Padded tokens per forward pass; bounds activations and the (response tokens x vocab) logits.
DEFAULT_MAX_BATCH_TOKENS = 4096


@dataclass(frozen=True)
class Encoded:
    """One tokenized (prompt, response): ids and labels (IGNORE_INDEX on prompt positions)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class ResponseNLL:
    """Summed NLL of a sample's response tokens and how many there are."""

    total: float
    tokens: int

    @property
    def mean(self) -> float:
        return self.total / self.tokens


def encode_records(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, str]], max_len: int = DEFAULT_MAX_LEN
) -> list[Encoded]:
    """Tokenize `{"prompt", "response"}` records the way the trainer does."""
    out = []
    for r in records:
        ids, labels = encode_example(tokenizer, r["prompt"], r["response"], max_len=max_len)
        out.append(Encoded(ids, labels))
    return out


def length_buckets(
    lengths: Sequence[int], batch_size: int = DEFAULT_BATCH_SIZE, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small.

    A batch holds at most `batch_size` items and at most `max_batch_tokens` padded tokens (a single
    longer item still gets a batch of its own).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted descending: the batch's padded length is its first item's length.
        if current and (len(current) >= batch_size or (len(current) + 1) * lengths[current[0]] > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def model_device(model: PreTrainedModel):
    return next(model.parameters()).device


def response_nll(
    model: PreTrainedModel,
    examples: Sequence[Encoded],
    pad_token_id: int,
    batch_size: int = 0,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
) -> list[ResponseNLL]:
    """Summed response-token NLL of each example under `model`, in input order.

    Batches are length-bucketed and right-padded; logits are computed only at the positions that
    predict a response token (`logits_to_keep` with a boolean mask), in fp32.
    """
    import torch
    import torch.nn.functional as F

    device = model_device(model)
    results: list[ResponseNLL | None] = [None] * len(examples)
    buckets = length_buckets([len(e) for e in examples], batch_size or DEFAULT_BATCH_SIZE, max_batch_tokens)
    with torch.inference_mode():
        for batch in buckets:
            width = max(len(examples[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(examples[i])
                ids[row, :n] = torch.tensor(examples[i].input_ids)
                attn[row, :n] = 1
                labels[row, :n] = torch.tensor(examples[i].labels)
            # Position t predicts token t+1: keep t where labels[t+1] is a response token.
            targets = torch.full_like(labels, IGNORE_INDEX)
            targets[:, :-1] = labels[:, 1:]
            keep = targets != IGNORE_INDEX
            out = model(
                input_ids=ids.to(device), attention_mask=attn.to(device), logits_to_keep=keep.to(device), use_cache=False
            )
            logits = out.logits.float()  # (kept positions, vocab), row-major over (batch, position)
            nll = F.cross_entropy(logits, targets[keep].to(device), reduction="none").double()
            rows = keep.nonzero()[:, 0].to(device)
            totals = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, nll)
            counts = keep.sum(dim=1)
            for row, i in enumerate(batch):
                results[i] = ResponseNLL(total=float(totals[row]), tokens=int(counts[row]))
    return results  # type: ignore[return-value]


def learnability(loss_base: float, loss_ref: float) -> float:
    """LoBaSS learnability (L0 - Lref) / L0 (arXiv 2310.13008); 0.0 when L0 is 0 (nothing to learn)."""
    if loss_base <= 0.0:
        return 0.0
    return (loss_base - loss_ref) / loss_base


def score_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, str]],
    metrics: Collection[str] = ALL_METRICS,
    batch_size: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
) -> list[dict]:
    """Score `{"id", "prompt", "response"}` records: `{"id", <metric>: float, ...}` in input order.

    `model` is the base student, or (required for loss_ref / learnability) a `peft.PeftModel`
    wrapping it with the reference adapter; base losses are then taken with the adapter disabled.
    """
    from peft import PeftModel

    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {list(ALL_METRICS)}")
    need_ref = bool(REF_METRICS & set(metrics))
    need_base = LOSS_BASE in metrics or LEARNABILITY in metrics
    if need_ref and not isinstance(model, PeftModel):
        raise ValueError(f"metrics {sorted(REF_METRICS & set(metrics))} need a model with the reference adapter")

    examples = encode_records(tokenizer, records, max_len=max_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base: list[ResponseNLL] = []
    ref: list[ResponseNLL] = []
    if need_base:
        if isinstance(model, PeftModel):
            with model.disable_adapter():
                base = response_nll(model, examples, pad, batch_size)
        else:
            base = response_nll(model, examples, pad, batch_size)
    if need_ref:
        ref = response_nll(model, examples, pad, batch_size)

    out = []
    for i, r in enumerate(records):
        row: dict = {"id": r["id"]}
        if LOSS_BASE in metrics:
            row[LOSS_BASE] = base[i].mean
        if LOSS_REF in metrics:
            row[LOSS_REF] = ref[i].mean
        if LEARNABILITY in metrics:
            row[LEARNABILITY] = learnability(base[i].mean, ref[i].mean)
        out.append(row)
    return out
