"""Classification by label likelihood: every label is scored as the student's response.

For an eval item with prompt p, label l scores log p(l + end-of-turn | rendered p), the summed
log-probability of the label's response tokens as `syllabus.prompts.encode_example` tokenizes
them (the same tokens the trainer trains on). The prediction is the most likely label (ties go
to the earlier label in the label set).

All labels of an item share the prompt, so the prompt is run once and its KV cache is repeated
over the labels, which then run as one batch of short continuations. That is exact (the same
tokens at the same positions) whenever every label's encoding has the same prompt tokens; if the
prompt had to be truncated differently per label, the item falls back to full sequences.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from student_svc.scoring import DEFAULT_MAX_LEN, Encoded, model_device, response_nll
from syllabus.prompts import IGNORE_INDEX, encode_example

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Label continuations per forward pass when the caller does not choose.
DEFAULT_LABELS_PER_PASS = 64


@dataclass(frozen=True)
class EvalSummary:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _shared_prefix_logprobs(
    model: PreTrainedModel, prompt_ids: list[int], responses: list[list[int]], pad_token_id: int, per_pass: int
) -> list[float]:
    """Summed log p(response | prompt) for each response, running the prompt once.

    The cache holds prompt[:-1]; each continuation is [prompt[-1]] + response[:-1] and predicts
    response, so every response token's logit comes from the continuation pass.
    """
    import torch
    import torch.nn.functional as F

    device = model_device(model)
    prefix = torch.tensor([prompt_ids[:-1]], device=device)
    out: list[float] = []
    with torch.inference_mode():
        prefix_out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
        prefix_cache = prefix_out.cache
        for start in range(0, len(responses), per_pass):
            chunk = responses[start : start + per_pass]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            targets = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            for row, r in enumerate(chunk):
                ids[row, : len(r)] = torch.tensor([prompt_ids[-1], *r[:-1]])
                targets[row, : len(r)] = torch.tensor(r)
            keep = targets != IGNORE_INDEX
            attn = torch.cat([torch.ones((len(chunk), prefix.shape[1]), dtype=torch.long), keep.long()], dim=1)
            # Continuations append to the cache: each chunk gets its own copy of the prompt's.
            cache = copy.deepcopy(prefix_cache) if start + per_pass < len(responses) else prefix_cache
            cache.batch_repeat_interleave(len(chunk))
            res = model(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                cache=cache,
                use_cache=True,
                logits_to_keep=keep.to(device),
            )
            nll = F.cross_entropy(res.logits.float(), targets[keep].to(device), reduction="none").double()
            rows = keep.nonzero()[:, 0].to(device)
            totals = torch.zeros(len(chunk), dtype=torch.float64, device=device).index_add_(0, rows, nll)
            out.extend(-float(t) for t in totals)
    return out


def label_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    labels: Sequence[str],
    batch_size: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
) -> list[float]:
    """log p(label + end-of-turn | rendered prompt) for each label, summed over the label's tokens."""
    encoded = [encode_example(tokenizer, prompt, label, max_len=max_len) for label in labels]
    prompts = [ids[: sum(1 for t in lab if t == IGNORE_INDEX)] for ids, lab in encoded]
    pad = _pad_id(tokenizer)
    if len(prompts[0]) >= 2 and all(p == prompts[0] for p in prompts):
        responses = [ids[len(prompts[0]) :] for ids, _ in encoded]
        return _shared_prefix_logprobs(model, prompts[0], responses, pad, batch_size or DEFAULT_LABELS_PER_PASS)
    nll = response_nll(model, [Encoded(ids, lab) for ids, lab in encoded], pad, batch_size)
    return [-r.total for r in nll]


def evaluate_classification(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, str]],
    labels: Sequence[str],
    batch_size: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
) -> tuple[list[dict], EvalSummary]:
    """Predict each `{"id", "prompt", "label"}` record's label by label likelihood.

    Returns prediction records `{"id", "label", "prediction", "correct", "label_logprobs"}` in
    input order, and the summary.
    """
    predictions = []
    correct = 0
    for r in records:
        lps = label_logprobs(model, tokenizer, r["prompt"], labels, batch_size=batch_size, max_len=max_len)
        best = max(range(len(labels)), key=lambda j: (lps[j], -j))
        ok = labels[best] == r["label"]
        correct += ok
        predictions.append(
            {
                "id": r["id"],
                "label": r["label"],
                "prediction": labels[best],
                "correct": ok,
                "label_logprobs": dict(zip(labels, lps, strict=True)),
            }
        )
    return predictions, EvalSummary(correct=correct, total=len(records))
