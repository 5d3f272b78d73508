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
#: Shared prefixes shorter than this are not worth a separate cached pass.
MIN_SHARED_PREFIX = 8


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
    lengths: Sequence[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
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
        if current and (
            len(current) >= batch_size or (len(current) + 1) * lengths[current[0]] > max_batch_tokens
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def model_device(model: PreTrainedModel):
    return next(model.parameters()).device


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all `seqs` share."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def first_target_position(labels: Sequence[int]) -> int:
    """The position whose logits predict the first response token."""
    for i, t in enumerate(labels):
        if t != IGNORE_INDEX:
            return max(i - 1, 0)
    return len(labels)


def prefix_cache(model: PreTrainedModel, ids: Sequence[int], cache=None):
    """Run `ids` (batch of one) and return the KV cache; extends `cache` (a copy is made) if given."""
    import copy

    import torch

    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([list(ids)], device=model_device(model)),
            cache=copy.deepcopy(cache) if cache is not None else None,
            use_cache=True,
            logits_to_keep=1,
        )
    return out.cache


def suffix_nll(
    model: PreTrainedModel,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_token_id: int,
    prefix: tuple[object, int] | None = None,
) -> list[ResponseNLL]:
    """Summed response NLL of each (input_ids, labels) row, run as one right-padded batch.

    With `prefix=(cache, length)` the rows continue a shared prefix whose KV cache (batch of one)
    is copied and repeated over the batch: the same tokens at the same positions as running the
    full sequences, without recomputing the prefix. Position t predicts labels[t + 1]; logits are
    projected only at those positions.
    """
    import copy

    import torch
    import torch.nn.functional as F

    device = model_device(model)
    width = max(len(ids) for ids, _ in rows)
    ids_t = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labels) in enumerate(rows):
        ids_t[row, : len(ids)] = torch.tensor(list(ids))
        attn[row, : len(ids)] = 1
        targets[row, : len(ids) - 1] = torch.tensor(list(labels[1:]))
    keep = targets != IGNORE_INDEX
    kwargs: dict = {"use_cache": False}
    if prefix is not None:
        cache, length = prefix
        cache = copy.deepcopy(cache)  # the forward appends to it
        cache.batch_repeat_interleave(len(rows))
        attn = torch.cat([torch.ones((len(rows), length), dtype=torch.long), attn], dim=1)
        kwargs = {"cache": cache, "use_cache": True}
    with torch.inference_mode():
        out = model(
            input_ids=ids_t.to(device),
            attention_mask=attn.to(device),
            logits_to_keep=keep.to(device),
            **kwargs,
        )
        logits = out.logits.float()  # (kept positions, vocab), row-major over (batch, position)
        nll = F.cross_entropy(logits, targets[keep].to(device), reduction="none").double()
        rows_idx = keep.nonzero()[:, 0].to(device)
        totals = torch.zeros(len(rows), dtype=torch.float64, device=device).index_add_(0, rows_idx, nll)
    counts = keep.sum(dim=1)
    return [ResponseNLL(total=float(totals[i]), tokens=int(counts[i])) for i in range(len(rows))]


def response_nll(
    model: PreTrainedModel,
    examples: Sequence[Encoded],
    pad_token_id: int,
    batch_size: int = 0,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    share_prefix: bool = True,
) -> list[ResponseNLL]:
    """Summed response-token NLL of each example under `model`, in input order.

    Batches are length-bucketed and right-padded; logits are computed only at the positions that
    predict a response token, in fp32. With `share_prefix`, the token prefix that every example
    shares (chat template, task instructions, label list: most of a task's prompt) is run once
    and its KV cache reused by every batch; it never reaches into a response.
    """
    g = 0
    if share_prefix and len(examples) > 1:
        g = min(
            common_prefix_len([e.input_ids for e in examples]),
            *(first_target_position(e.labels) for e in examples),
        )
        if g < MIN_SHARED_PREFIX:
            g = 0
    shared = (prefix_cache(model, examples[0].input_ids[:g]), g) if g else None
    results: list[ResponseNLL | None] = [None] * len(examples)
    lengths = [len(e) - g for e in examples]
    for batch in length_buckets(lengths, batch_size or DEFAULT_BATCH_SIZE, max_batch_tokens):
        rows = [(examples[i].input_ids[g:], examples[i].labels[g:]) for i in batch]
        for i, r in zip(batch, suffix_nll(model, rows, pad_token_id, shared), strict=True):
            results[i] = r
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
        raise ValueError(
            f"metrics {sorted(REF_METRICS & set(metrics))} need a model with the reference adapter"
        )

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
