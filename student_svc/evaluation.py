"""Classification by label likelihood: every label is scored as the student's response.

For an eval item with prompt p, label l scores log p(l + end-of-turn | rendered p), the summed
log-probability of the label's response tokens as `syllabus.prompts.encode_example` tokenizes
them (the same tokens the trainer trains on). The prediction is the most likely label (ties go
to the earlier label in the label set).

Prompts are run once and their KV caches reused: the prefix every item's prompt shares (chat
template, instructions, label list: most of the tokens) once per eval set, each item's own tail
once per item, and the item's labels then run as one batch of short continuations of that cache.
That is exact (the same tokens at the same positions as full sequences) whenever every label's
encoding has the same prompt tokens; if the prompt had to be truncated differently per label, the
item falls back to full sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from student_svc.scoring import (
    DEFAULT_MAX_LEN,
    MIN_SHARED_PREFIX,
    Encoded,
    common_prefix_len,
    prefix_cache,
    response_nll,
    suffix_nll,
)
from syllabus.prompts import IGNORE_INDEX, encode_example, render_prompt

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


class PromptCache:
    """KV caches for label scoring: the prefix shared by every item's prompt (chat template,
    instructions, label list) runs once per eval set; each item then runs only its own tail."""

    def __init__(self, model: PreTrainedModel, prompts: Sequence[Sequence[int]]) -> None:
        self.model = model
        g = min(common_prefix_len(prompts), *(len(p) - 1 for p in prompts)) if prompts else 0
        self.prefix = list(prompts[0][:g]) if g >= MIN_SHARED_PREFIX else []
        self.cache = prefix_cache(model, self.prefix) if self.prefix else None

    def for_prompt(self, prompt_ids: Sequence[int]) -> tuple[object, int]:
        """(cache, length) holding prompt_ids[:-1]: the last prompt token starts each continuation."""
        n = len(self.prefix)
        if self.cache is not None and len(prompt_ids) > n and list(prompt_ids[:n]) == self.prefix:
            if len(prompt_ids) - 1 == n:
                return self.cache, n  # callers copy before appending
            return prefix_cache(self.model, prompt_ids[n:-1], cache=self.cache), len(prompt_ids) - 1
        return prefix_cache(self.model, prompt_ids[:-1]), len(prompt_ids) - 1


def label_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    labels: Sequence[str],
    batch_size: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
    prompts: PromptCache | None = None,
) -> list[float]:
    """log p(label + end-of-turn | rendered prompt) for each label, summed over the label's tokens.

    The prompt runs once (continuing `prompts`' shared prefix if given) and the labels run as a
    batch of continuations of its KV cache, `batch_size` (default 64) labels per pass.
    """
    encoded = [encode_example(tokenizer, prompt, label, max_len=max_len) for label in labels]
    prompt_ids = [ids[: sum(1 for t in lab if t == IGNORE_INDEX)] for ids, lab in encoded]
    pad = _pad_id(tokenizer)
    if len(prompt_ids[0]) < 2 or any(p != prompt_ids[0] for p in prompt_ids):
        # Truncation cut the prompt differently per label: score the full sequences.
        nll = response_nll(model, [Encoded(ids, lab) for ids, lab in encoded], pad, batch_size, share_prefix=False)
        return [-r.total for r in nll]
    prompts = prompts or PromptCache(model, [])
    cache, length = prompts.for_prompt(prompt_ids[0])
    per_pass = batch_size or DEFAULT_LABELS_PER_PASS
    out: list[float] = []
    for start in range(0, len(encoded), per_pass):
        rows = [(ids[length:], lab[length:]) for ids, lab in encoded[start : start + per_pass]]
        out.extend(-r.total for r in suffix_nll(model, rows, pad, prefix=(cache, length)))
    return out


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
    rendered = [tokenizer(render_prompt(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"] for r in records]
    prompts = PromptCache(model, rendered)
    predictions = []
    correct = 0
    for r in records:
        lps = label_logprobs(
            model, tokenizer, r["prompt"], labels, batch_size=batch_size, max_len=max_len, prompts=prompts
        )
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
