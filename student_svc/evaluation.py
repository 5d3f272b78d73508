"""Classification by label likelihood: every label is scored as the student's response.

For an eval item with prompt p, label l scores log p(l + end-of-turn | rendered p), the summed
log-probability of the label's response tokens as `syllabus.prompts.encode_example` tokenizes
them (the same tokens the trainer trains on). The prediction is the most likely label (ties go
to the earlier label in the label set).

Prompts are run once and their KV caches reused: the prefix every item's prompt shares (chat
template, instructions, label list: most of the tokens) once per eval set; then, for a batch of
items, one pass over the items' own prompt tails and one pass over all their labels as short
continuations of those caches. That is exact (the same tokens at the same positions as full
sequences) whenever every label's encoding has the same prompt tokens; if the prompt had to be
truncated differently per label, that item falls back to full sequences.
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
)
from syllabus.answers import LABEL, answers_match, normalize
from syllabus.prompts import IGNORE_INDEX, encode_example

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Label continuations (items x labels) per forward pass when the caller does not choose.
DEFAULT_CONTINUATIONS_PER_PASS = 256


@dataclass(frozen=True)
class EvalSummary:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _continue_items(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[Sequence[int]]],
    shared: tuple[object, int] | None,
    pad_token_id: int,
) -> list[list[float]]:
    """Summed log p(response | prompt) for every item's responses, in two forward passes.

    Pass 1 runs each prompt's tail after the shared prefix (prompt[g:-1], right-padded, batch of
    items) on a copy of the shared cache. Pass 2 repeats that cache over each item's responses and
    runs [prompt[-1]] + response as continuations, with explicit position ids (the tails have
    different lengths, so a cache row has masked padding between its prompt and its continuation).
    """
    import copy

    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    n_items, n_resp = len(prompts), len(responses[0])
    g = shared[1] if shared is not None else 0
    cache = None
    if shared is not None:
        cache = copy.deepcopy(shared[0])
        cache.batch_repeat_interleave(n_items)
    tails = [list(p[g:-1]) for p in prompts]
    width = max(len(t) for t in tails)
    context = torch.ones((n_items, g), dtype=torch.long)
    with torch.inference_mode():
        if width:
            ids = torch.full((n_items, width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((n_items, width), dtype=torch.long)
            for i, t in enumerate(tails):
                ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
                mask[i, : len(t)] = 1
            context = torch.cat([context, mask], dim=1)
            out = model(
                input_ids=ids.to(device),
                attention_mask=context.to(device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.cache
        cache.batch_repeat_interleave(n_resp)

        rows = [(prompts[i][-1], r, len(prompts[i]) - 1) for i in range(n_items) for r in responses[i]]
        cwidth = max(len(r) for _, r, _ in rows)
        ids = torch.full((len(rows), cwidth), pad_token_id, dtype=torch.long)
        targets = torch.full((len(rows), cwidth), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), cwidth), dtype=torch.long)
        for k, (last, r, start) in enumerate(rows):
            ids[k, : len(r)] = torch.tensor([last, *r[:-1]], dtype=torch.long)
            targets[k, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            position_ids[k] = torch.arange(start, start + cwidth)
        keep = targets != IGNORE_INDEX
        attn = torch.cat([context.repeat_interleave(n_resp, dim=0), keep.long()], dim=1)
        out = model(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            position_ids=position_ids.to(device),
            cache=cache,
            use_cache=True,
            logits_to_keep=keep.to(device),
        )
        nll = F.cross_entropy(out.logits.float(), targets[keep].to(device), reduction="none").double()
        row_idx = keep.nonzero()[:, 0].to(device)
        totals = torch.zeros(len(rows), dtype=torch.float64, device=device).index_add_(0, row_idx, nll)
    logprobs = (-totals).tolist()
    return [logprobs[i * n_resp : (i + 1) * n_resp] for i in range(n_items)]


def label_logprobs_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    labels: Sequence[str],
    batch_size: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
) -> list[list[float]]:
    """For each prompt, log p(label + end-of-turn | rendered prompt) of each label (summed over
    the label's tokens), as `syllabus.prompts.encode_example` tokenizes them.

    The prompts' common prefix runs once; then `batch_size` items (default: as many as keep a pass
    under ~256 label continuations) run per pair of passes (see `_continue_items`).
    """
    pad = _pad_id(tokenizer)
    encoded = [[encode_example(tokenizer, p, label, max_len=max_len) for label in labels] for p in prompts]
    results: list[list[float] | None] = [None] * len(prompts)
    shareable: list[int] = []
    for i, item in enumerate(encoded):
        p_lens = [sum(1 for t in lab if t == IGNORE_INDEX) for _, lab in item]
        p_ids = [ids[:n] for (ids, _), n in zip(item, p_lens, strict=True)]
        if p_lens[0] >= 2 and all(p == p_ids[0] for p in p_ids):
            shareable.append(i)
        else:
            # Truncation cut the prompt differently per label: score the full sequences.
            nll = response_nll(
                model, [Encoded(ids, lab) for ids, lab in item], pad, batch_size, share_prefix=False
            )
            results[i] = [-r.total for r in nll]
    if not shareable:
        return results  # type: ignore[return-value]

    def prompt_of(i: int) -> list[int]:
        ids, lab = encoded[i][0]
        return ids[: sum(1 for t in lab if t == IGNORE_INDEX)]

    item_prompts = {i: prompt_of(i) for i in shareable}
    g = min(common_prefix_len(list(item_prompts.values())), *(len(p) - 1 for p in item_prompts.values()))
    shared = (prefix_cache(model, item_prompts[shareable[0]][:g]), g) if g >= MIN_SHARED_PREFIX else None
    per_pass = batch_size or max(1, DEFAULT_CONTINUATIONS_PER_PASS // max(1, len(labels)))
    for start in range(0, len(shareable), per_pass):
        chunk = shareable[start : start + per_pass]
        responses = [[ids[len(item_prompts[i]) :] for ids, _ in encoded[i]] for i in chunk]
        for i, lps in zip(
            chunk,
            _continue_items(model, [item_prompts[i] for i in chunk], responses, shared, pad),
            strict=True,
        ):
            results[i] = lps
    return results  # type: ignore[return-value]


def label_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    labels: Sequence[str],
    batch_size: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
) -> list[float]:
    """log p(label + end-of-turn | rendered prompt) for each label of one prompt."""
    return label_logprobs_batch(model, tokenizer, [prompt], labels, batch_size=batch_size, max_len=max_len)[0]


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
    all_lps = label_logprobs_batch(
        model, tokenizer, [r["prompt"] for r in records], labels, batch_size=batch_size, max_len=max_len
    )
    predictions = []
    correct = 0
    for r, lps in zip(records, all_lps, strict=True):
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


# -- generation-based scorers ---------------------------------------------------------------------

# The matches (EXACT, NUMERIC, LABEL) and the checker itself live in syllabus.answers: one checker for
# the teacher's verifier, the loop and evaluation.
DEFAULT_MAX_NEW_TOKENS = 32


def label_from_generation(prediction: str, labels: Sequence[str]) -> str | None:
    """The label a free generation names: the longest label that the normalized text equals or
    starts with, else the longest label it contains; None if it names none."""
    p = normalize(prediction)
    by_len = sorted(labels, key=len, reverse=True)
    for label in by_len:
        n = normalize(label)
        if n and (p == n or p.startswith(n)):
            return label
    for label in by_len:
        if (n := normalize(label)) and n in p:
            return label
    return None


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
    max_len: int = DEFAULT_MAX_LEN,
    dtype: str = "float32",
) -> list[str]:
    """Greedy completions (temperature 0) of chat `conversations` ([{"role", "content"}, ...]), in
    input order: length-bucketed, left-padded batches; generation stops at end of turn."""
    return generate_texts(model, tokenizer, conversations, max_new_tokens, batch_size, max_len, dtype)


def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
    max_len: int = DEFAULT_MAX_LEN,
    dtype: str = "float32",
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Completions of chat `conversations`, greedy at temperature 0, else sampled; each length
    bucket draws from its own generator state (seed + the bucket's first index), so a retry
    samples the same text."""
    import torch

    from student_svc.scoring import autocast, length_buckets, model_device, resolve_dtype

    device = model_device(model)
    dtype = resolve_dtype(dtype, device)
    prompts = []
    for conv in conversations:
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True)
        else:
            text = "\n".join(m["content"] for m in conv) + "\n"
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"][-(max_len - max_new_tokens) :])
    pad = _pad_id(tokenizer)
    out: list[str] = [""] * len(prompts)
    for batch in length_buckets([len(p) for p in prompts], batch_size or 16, 1 << 30):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else {"do_sample": False}
        if temperature > 0:
            torch.manual_seed(seed + batch[0])
        with torch.inference_mode(), autocast(dtype, device):
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
        for row, i in enumerate(batch):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    return out


def evaluate_generation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, str]],
    match: str,
    labels: Sequence[str] = (),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
    dtype: str = "float32",
) -> tuple[list[dict], EvalSummary]:
    """Greedy-generate an answer to each `{"id", "prompt", "label"}` record and check it against
    "label": exact match, numeric match, or (classification, `labels` given) the label the
    generation names. Records `{"id", "label", "prediction", "generation", "correct"}`."""
    gens = generate_greedy(
        model, tokenizer, [[{"role": "user", "content": r["prompt"]}] for r in records],
        max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype,
    )
    rows, correct = [], 0
    for r, g in zip(records, gens, strict=True):
        if match == LABEL:
            prediction = label_from_generation(g, labels) or ""
            ok = prediction == r["label"]
        else:
            prediction = g
            ok = answers_match(g, r["label"], match)
        correct += ok
        rows.append({"id": r["id"], "label": r["label"], "prediction": prediction, "generation": g, "correct": ok})
    return rows, EvalSummary(correct=correct, total=len(records))
