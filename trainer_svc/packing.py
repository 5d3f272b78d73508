"""Padding-free packing: several tokenised samples share one row, and none sees another.

A packed row holds samples back to back. Every sample keeps its own position ids (restarting at 0)
and an explicit block-diagonal causal mask (`[rows, 1, L, L]`, True = may attend) stops attention
across samples, so a packed row computes exactly what the samples would compute one by one
(`tests/trainer/test_packing.py` checks the logits). The mask is built here rather than trusting
the model to infer sample boundaries from position ids, which depends on the attention backend.

Targets are shifted inside each sample (`targets[t]` is the token after `t` in the same sample), so
the loss needs logits only where `targets != IGNORE_INDEX`: `CompletionLM` runs the model body,
gathers those hidden states and applies the LM head to them alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from syllabus.prompts import IGNORE_INDEX

Example = tuple[list[int], list[int]]
"""One tokenised sample: (input_ids, labels) with IGNORE_INDEX on prompt positions."""


def bfd_pack(lengths: Sequence[int], capacity: int, order: Sequence[int] | None = None) -> list[list[int]]:
    """Best-fit-decreasing bins of sample indices, each at most `capacity` tokens (as TRL's "bfd").

    `order` restricts packing to those indices. Ties keep `order`'s order, so the result is
    deterministic. A sample longer than `capacity` gets a bin of its own.
    """
    idx = list(range(len(lengths))) if order is None else list(order)
    idx = sorted(idx, key=lambda i: -lengths[i])  # stable
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin number), sorted
    for i in idx:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (max(0, capacity - n), len(bins) - 1))
    return bins


def sequential_pack(lengths: Sequence[int], capacity: int, order: Sequence[int]) -> list[list[int]]:
    """Next-fit bins that keep `order` (for curricula, where order is the point)."""
    bins: list[list[int]] = []
    used = capacity + 1
    for i in order:
        if used + lengths[i] > capacity:
            bins.append([])
            used = 0
        bins[-1].append(i)
        used += lengths[i]
    return bins


@dataclass
class PackedBatch:
    """Model inputs for a list of packed rows (right-padded to the longest row)."""

    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L], restarting at 0 for every sample
    attention_mask: torch.Tensor  # [B, 1, L, L] bool, block-diagonal causal
    targets: torch.Tensor  # [B, L], next token within the sample or IGNORE_INDEX
    sample_ids: torch.Tensor  # [B, L], index into `samples`, or -1 on padding and on a shared prefix
    samples: list[int]  # the caller's sample ids, in the order they appear in the rows
    num_tokens: int  # real (non-padding) tokens

    def to(self, device) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.attention_mask.to(device),
            self.targets.to(device),
            self.sample_ids.to(device),
            self.samples,
            self.num_tokens,
        )


def shared_prefix(row: Sequence[int], examples: Sequence[Example]) -> int:
    """Tokens the samples of a row have in common at the start, cut before any position that
    predicts a response token (a shared position may serve no sample's target). 0 for one sample."""
    if len(row) < 2:
        return 0
    seqs = [examples[i][0] for i in row]
    n = min(len(s) for s in seqs)
    for i in row:  # position t predicts token t+1: the prefix must end before the first target
        labels = examples[i][1]
        first = next((t for t, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))
        n = min(n, first - 1)
    p = 0
    first_seq = seqs[0]
    while p < n and all(s[p] == first_seq[p] for s in seqs[1:]):
        p += 1
    return p


def build_batch(
    rows: Sequence[Sequence[int]], examples: Sequence[Example], pad_id: int, share_prefix: bool = False
) -> PackedBatch:
    """Pack `rows` (lists of indices into `examples`) into tensors; see the module docstring.

    With `share_prefix`, the tokens a row's samples share at the start (`shared_prefix`: the
    instructions and label list of a classification prompt, say) are laid out once at the row's
    start; every sample's own tokens follow with positions continuing after the prefix, and attend
    to the prefix and to themselves. Each sample sees exactly the context and positions it would see
    alone, so logits and gradients are those of the unshared row, for fewer tokens."""
    prefixes = [shared_prefix(row, examples) if share_prefix else 0 for row in rows]
    width = max(p + sum(len(examples[i][0]) - p for i in row) for row, p in zip(rows, prefixes, strict=True))
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)
    is_prefix = torch.zeros((n, width), dtype=torch.bool)
    samples: list[int] = []
    num_tokens = 0
    for r, (row, p) in enumerate(zip(rows, prefixes, strict=True)):
        if p:
            input_ids[r, :p] = torch.tensor(examples[row[0]][0][:p])
            position_ids[r, :p] = torch.arange(p)
            is_prefix[r, :p] = True
            num_tokens += p
        pos = p
        for i in row:
            ids, labels = examples[i]
            m = len(ids) - p  # this sample's own tokens
            input_ids[r, pos : pos + m] = torch.tensor(ids[p:])
            position_ids[r, pos : pos + m] = torch.arange(p, p + m)
            if m > 1:
                targets[r, pos : pos + m - 1] = torch.tensor(labels[p + 1 :])
            segment[r, pos : pos + m] = len(samples)
            samples.append(i)
            pos += m
            num_tokens += m
    # Padding positions get their own segment id per position so each attends only to itself
    # (a fully masked row would give NaN in softmax); their outputs are never used.
    pad = (segment < 0) & ~is_prefix
    seg_for_mask = torch.where(pad, -2 - torch.arange(width).expand(n, width), segment)
    same = seg_for_mask[:, :, None] == seg_for_mask[:, None, :]  # prefix positions share id -1
    sees_prefix = is_prefix[:, None, :] & ~pad[:, :, None]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    mask = ((same | sees_prefix) & causal)[:, None, :, :]
    return PackedBatch(input_ids, position_ids, mask, targets, segment, samples, num_tokens)


def completion_model_parts(model) -> tuple:
    """(body, lm_head) of a causal LM, also when wrapped by peft."""
    from peft import PeftModel

    lm = model.get_base_model() if isinstance(model, PeftModel) else model
    return lm.model, lm.lm_head


class CompletionLM(nn.Module):
    """Logits at target positions only: body -> gather hidden states -> LM head.

    It is an `nn.Module` so that DistributedDataParallel can wrap it (DDP synchronises gradients of
    what runs through its forward).
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model  # registered: parameters are visible to DDP and optimisers

    def forward(self, batch: PackedBatch, positions: torch.Tensor) -> torch.Tensor:
        """Logits `[N, vocab]` at the flat positions `positions` (indices into `B*L`)."""
        body, head = completion_model_parts(self.model)
        mask = batch.attention_mask
        if body.config._attn_implementation == "eager":  # eager adds the mask: make it additive
            mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
                ~mask, torch.finfo(torch.float32).min
            )
        hidden = body(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False
        ).last_hidden_state
        hidden = hidden.reshape(-1, hidden.size(-1)).index_select(0, positions)
        return head(hidden)


def token_logprobs(
    lm: CompletionLM, batch: PackedBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(target) per target token [N], sample index per token [N], positions [N])."""
    flat_targets = batch.targets.reshape(-1)
    positions = (flat_targets != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    logits = lm(batch, positions).float()
    tgt = flat_targets.index_select(0, positions)
    logp = -F.cross_entropy(logits, tgt, reduction="none")
    return logp, batch.sample_ids.reshape(-1).index_select(0, positions), positions


def per_sample_sums(values: torch.Tensor, sample_of: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of `values` per sample index in [0, n)."""
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, sample_of, values)
    counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(
        0, sample_of, torch.ones_like(values)
    )
    return sums, counts
