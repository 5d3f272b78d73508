"""The teacher's top-k log-probs of (prompt, response) records (TeacherService.TopLogprobs), and
the check that teacher and student see the same tokens.

Token-level distillation compares the two models position by position, so they must tokenize a
record identically: the same vocabulary and the same chat-template rendering. A template mismatch
biased teacher log-probs by +0.287 nats/token in one report (tinker-cookbook #796); mismatched
vocabularies make the top-k ids meaningless. `first_difference` names the first disagreement.

Sequences are tokenized by `syllabus.prompts.encode_example`, exactly as the trainer does, and the
rows are those of the response targets (the response tokens and the end-of-turn token).
"""

from __future__ import annotations

from collections.abc import Sequence

from syllabus.prompts import IGNORE_INDEX, encode_example, render_prompt
from syllabus.topk import TopK, topk_from_logits

#: What the compatibility check renders with both tokenizers.
PROBE_PROMPT = "Classify: my card was charged twice — what now? Ünïcode, 12.5%, <tag>"
PROBE_RESPONSE = "duplicate_charge\nThe answer is 42."
#: Padded tokens per forward pass of the transformers backend.
MAX_BATCH_TOKENS = 4096


def first_difference(teacher, student) -> str | None:
    """None when two tokenizers give the same tokens for every record, else the first difference
    in one line (vocabulary, special tokens, or the chat-template rendering of a probe)."""
    tv, sv = teacher.get_vocab(), student.get_vocab()
    if len(tv) != len(sv):
        return f"vocabularies differ in size: teacher {len(tv)} tokens, student {len(sv)}"
    for token, i in sorted(tv.items(), key=lambda kv: kv[1]):
        if sv.get(token) != i:
            return f"token {token!r} is id {i} in the teacher's vocabulary, {sv.get(token)} in the student's"
    for name in ("eos_token", "bos_token", "pad_token"):
        if getattr(teacher, name) != getattr(student, name):
            return f"{name} differs: teacher {getattr(teacher, name)!r}, student {getattr(student, name)!r}"
    t_text, s_text = render_prompt(teacher, PROBE_PROMPT), render_prompt(student, PROBE_PROMPT)
    if t_text != s_text:
        at = next((j for j, (a, b) in enumerate(zip(t_text, s_text, strict=False)) if a != b), min(len(t_text), len(s_text)))
        return f"chat templates render differently from character {at}: teacher {t_text[at:at + 30]!r}, student {s_text[at:at + 30]!r}"
    t_ids, _ = encode_example(teacher, PROBE_PROMPT, PROBE_RESPONSE)
    s_ids, _ = encode_example(student, PROBE_PROMPT, PROBE_RESPONSE)
    if t_ids != s_ids:
        at = next((j for j, (a, b) in enumerate(zip(t_ids, s_ids, strict=False)) if a != b), min(len(t_ids), len(s_ids)))
        return f"the probe tokenizes differently from token {at}"
    return None


def transformers_topk(model, tokenizer, records: Sequence[tuple[str, str]], k: int, max_len: int) -> list[TopK]:
    """Per record, the rows of its response targets: right-padded batches of similar length (the
    padding sits after every real token, so it changes no real position), logits projected only at
    the positions that predict a target."""
    import torch

    encoded = [encode_example(tokenizer, p, r, max_len) for p, r in records]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out: list[TopK | None] = [None] * len(encoded)
    device = next(model.parameters()).device
    body, head = _parts(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = 0
    while start < len(order):
        width = len(encoded[order[start]][0])
        n = max(1, MAX_BATCH_TOKENS // width)
        batch = order[start : start + n]
        start += n
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            seq = encoded[i][0]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.no_grad():
            hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            for row, i in enumerate(batch):
                seq, labels = encoded[i]
                at = [t - 1 for t, lab in enumerate(labels) if lab != IGNORE_INDEX and t > 0]
                targets = [labels[t + 1] for t in at]
                logits = head(hidden[row, at])
                out[i] = topk_from_logits(logits, targets, k)
    return out  # type: ignore[return-value]


def _parts(model):
    """(body, lm_head) of a causal LM, also under peft (the teacher may carry an adapter)."""
    from peft import PeftModel

    lm = model
    if isinstance(model, PeftModel):  # the adapter's layers stay live inside the body
        lm = model.base_model.model
    return lm.model, lm.lm_head


def vllm_topk(llm, tokenizer, records: Sequence[tuple[str, str]], k: int, max_len: int) -> list[TopK]:
    """The same rows from vLLM's prompt log-probs (`prompt_logprobs=k`: per prompt position the k
    most likely tokens and the actual one), one generated token per record that is thrown away."""
    import numpy as np
    import vllm

    encoded = [encode_example(tokenizer, p, r, max_len) for p, r in records]
    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=k, temperature=0.0)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids, _ in encoded], params, use_tqdm=False)
    rows = []
    for (ids, labels), out in zip(encoded, outputs, strict=True):
        positions = [t for t, lab in enumerate(labels) if lab != IGNORE_INDEX and t > 0]
        top_ids = np.zeros((len(positions), k), dtype=np.int32)
        top_lp = np.zeros((len(positions), k), dtype=np.float16)
        chosen = np.zeros(len(positions), dtype=np.float16)
        for j, t in enumerate(positions):
            entry = out.prompt_logprobs[t]  # {token id: Logprob}, the prompt's token at t included
            best = sorted(entry.items(), key=lambda kv: -kv[1].logprob)[:k]
            top_ids[j] = [tid for tid, _ in best]
            top_lp[j] = [lp.logprob for _, lp in best]
            chosen[j] = entry[ids[t]].logprob
        rows.append(TopK(top_ids, top_lp, chosen))
    return rows
