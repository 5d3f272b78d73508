"""ARTE student preference (Aligning Teacher with Student Preferences, arXiv 2406.19227).

For a draft question q with rationales R_q (the teacher's answers in several reasoning styles),
each rationale r is scored by how much it helps the student as a one-shot demonstration on a
probe set Dpref of (q', a') pairs, with greedy decoding:

    s_r = (1 / |Dpref|) * sum_{(q', a') in Dpref} 1[student(demo (q, r); q') == a']
    s_q = mean over r in R_q of s_r

The student's answer is its final answer (`syllabus.answers.final_answer`: after the last "Answer:"
line) before it is matched, so a one-shot rationale demo that makes the student reason does not hide
a right answer.

Dpref is the k most discriminative questions of a validation bank (k = 40 of 100 per task in the
paper); discrimination comes from a 2PL IRT model fitted on several small models' right/wrong
answers (`student_svc.irt.fit_irt(..., "2pl")`, `most_discriminative`). Preference pairs (top vs
bottom quartile by s_q; argmax vs argmin s_r per question) are built by the caller for DPO on the
teacher.

Cost: |records| x |Dpref| student generations - all of them run as length-bucketed batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from student_svc.evaluation import DEFAULT_MAX_NEW_TOKENS, generate_greedy
from syllabus.answers import EXACT, answers_match, final_answer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def one_shot(demo_question: str, demo_rationale: str, question: str) -> list[dict]:
    """The student's conversation: the demonstration as a completed turn, then the probe question."""
    return [
        {"role": "user", "content": demo_question},
        {"role": "assistant", "content": demo_rationale},
        {"role": "user", "content": question},
    ]


def arte_preference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, str]],
    probes: Sequence[Mapping[str, str]],
    match: str = EXACT,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
    dtype: str = "float32",
) -> list[dict]:
    """Rows `{"id", "question_id", "arte_s_r", "arte_s_q"}` for `{"id", "prompt", "response"}`
    records (prompt = draft question, response = one rationale; optional "question_id" groups the
    rationales of one question, default the prompt text). `probes` are `{"prompt", "answer"}`."""
    if not probes:
        raise ValueError("the probe set is empty")
    convs = [one_shot(r["prompt"], r["response"], p["prompt"]) for r in records for p in probes]
    gens = generate_greedy(model, tokenizer, convs, max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype)
    n = len(probes)
    rows = []
    for k, r in enumerate(records):
        hits = [answers_match(final_answer(gens[k * n + j]), probes[j]["answer"], match) for j in range(n)]
        rows.append({"id": r["id"], "question_id": str(r.get("question_id") or r["prompt"]), "arte_s_r": sum(hits) / n})
    by_q: dict[str, list[float]] = {}
    for row in rows:
        by_q.setdefault(row["question_id"], []).append(row["arte_s_r"])
    for row in rows:
        scores = by_q[row["question_id"]]
        row["arte_s_q"] = sum(scores) / len(scores)
    return rows


def probe_set_by_discrimination(
    probes: Sequence[Mapping], responses: Sequence[Mapping], k: int, steps: int = 2000, lr: float = 0.05
) -> list[Mapping]:
    """The k most discriminative probes under a 2PL fit of `responses` (`{"item_id", "subject",
    "correct"}`, item_id = a probe's "id"). Probes nobody answered are not eligible."""
    import numpy as np

    from student_svc.irt import fit_irt, most_discriminative

    items = [p["id"] for p in probes]
    index = {item: i for i, item in enumerate(items)}
    subjects = sorted({str(r["subject"]) for r in responses})
    s_index = {s: j for j, s in enumerate(subjects)}
    y = np.zeros((len(subjects), len(items)))
    mask = np.zeros_like(y)
    for r in responses:
        if r["item_id"] not in index:
            raise ValueError(f"probe response for unknown item {r['item_id']!r}")
        y[s_index[str(r["subject"])], index[r["item_id"]]] = float(bool(r["correct"]))
        mask[s_index[str(r["subject"])], index[r["item_id"]]] = 1.0
    answered = mask.sum(0) > 0
    fit = fit_irt(y[:, answered], "2pl", steps=steps, lr=lr, mask=mask[:, answered])
    eligible = [items[i] for i in np.flatnonzero(answered)]
    chosen = {eligible[i] for i in most_discriminative(fit, k)}
    return [p for p in probes if p["id"] in chosen]
