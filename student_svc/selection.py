"""Selection policies over per-sample scores, and diversity-first selection on student embeddings.

- `top_k`, `threshold`, `top_ratio`: rank by one score column (descending unless `ascending`).
  Cherry_LLM keeps the top rate (e.g. 6%) by IFD descending; LoBaSS keeps the top-k by learnability.
- `ifd_filter`: drop samples with IFD > 1 (the instruction does not help predict the answer;
  Cherry_LLM / Superfiltering), before any ranking.
- `diversity_first` (Diversify and Conquer, for-ai/iterative-data-selection): k-means on the
  embeddings, a per-cluster quota (proportional to cluster size, or equal), and within a cluster
  sampling without replacement with p ~ exp(quality / temperature). With a per-record reward gap
  (gold answer's reward minus the student's), the clusters are reweighted as in the paper's
  iterations: w = softmax(mean gap per cluster / gap_temperature), each of the `budget` slots draws
  its cluster from w (`reweighted_quotas`), so clusters the student answers worst get more records.
- `embed_records`: mean-pooled last hidden states of the student (attention-masked), in
  length-bucketed batches - no separate embedding model to download.

All functions are deterministic given `seed` and return selected ids in rank (or cluster) order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from syllabus import selection as shared

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _ranked(rows: Sequence[Mapping], column: str, ascending: bool) -> list[Mapping]:
    for i, r in enumerate(rows):
        if not isinstance(r.get(column), (int, float)):
            raise ValueError(f"row {i} ({r.get('id')!r}) has no numeric {column!r}")  # noqa: TRY004 (data, not a type error)
    return shared.ranked(rows, column, ascending)


def ifd_filter(rows: Sequence[Mapping], column: str = "ifd_ppl", max_ifd: float = 1.0) -> list[Mapping]:
    """Rows whose IFD (`column`: ifd_ppl or ifd_loss) is <= `max_ifd` (IFD > 1: prompt does not help)."""
    return [r for r in rows if r[column] <= max_ifd]


def top_k(rows: Sequence[Mapping], column: str, k: int, ascending: bool = False) -> list[str]:
    """Ids of the k best rows by `column`."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return [r["id"] for r in _ranked(rows, column, ascending)[:k]]


def top_ratio(rows: Sequence[Mapping], column: str, ratio: float, ascending: bool = False) -> list[str]:
    """Ids of the best rows, `syllabus.selection.top_count(n, ratio)` of them (Cherry_LLM's "top rate")."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return top_k(rows, column, shared.top_count(len(rows), ratio), ascending)


def threshold(rows: Sequence[Mapping], column: str, value: float, ascending: bool = False) -> list[str]:
    """Ids of rows with `column` >= value (<= value if `ascending`), best first."""
    keep = [r for r in rows if (r[column] <= value if ascending else r[column] >= value)]
    return [r["id"] for r in _ranked(keep, column, ascending)]


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster assignment of each row of `x` (k-means++ init, Lloyd iterations, cosine geometry:
    rows are L2-normalised first)."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = np.min(((x[:, None, :] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
        if d.sum() <= 0:
            centers.append(x[rng.integers(n)])
        else:
            centers.append(x[rng.choice(n, p=d / d.sum())])
    c = np.array(centers)
    assign = np.zeros(n, dtype=int)
    for _ in range(iters):
        new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if _ and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                c[j] = x[assign == j].mean(0)
    return assign


def cluster_quotas(sizes: Sequence[int], budget: int, mode: str = "proportional") -> list[int]:
    """Per-cluster quotas summing to min(budget, total): "proportional" to cluster size (largest
    remainders) or "equal" (round-robin, capped by size)."""
    total = sum(sizes)
    budget = min(budget, total)
    if mode == "proportional":
        raw = [budget * s / total for s in sizes]
        quotas = [math.floor(q) for q in raw]
        for j in sorted(range(len(sizes)), key=lambda j: (-(raw[j] - quotas[j]), j)):
            if sum(quotas) >= budget:
                break
            if quotas[j] < sizes[j]:
                quotas[j] += 1
        return quotas
    if mode == "equal":
        quotas = [0] * len(sizes)
        while sum(quotas) < budget:
            for j in range(len(sizes)):
                if quotas[j] < sizes[j] and sum(quotas) < budget:
                    quotas[j] += 1
        return quotas
    raise ValueError(f"quota mode must be 'proportional' or 'equal', got {mode!r}")


def cluster_weights(mean_gaps: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Diversify and Conquer's iterative reweighting: softmax(mean reward gap per cluster / temperature)."""
    if temperature <= 0:
        raise ValueError(f"gap temperature must be > 0, got {temperature}")
    g = np.asarray(mean_gaps, dtype=np.float64) / temperature
    e = np.exp(g - g.max())
    return (e / e.sum()).tolist()


def reweighted_quotas(
    sizes: Sequence[int], weights: Sequence[float], budget: int, rng: np.random.Generator
) -> list[int]:
    """Per-cluster quotas summing to min(budget, total): each slot draws its cluster from `weights`
    (with replacement, as the paper's next iteration does). The paper drops the draws that exceed a
    cluster's size; here they are drawn again among the clusters with room (weights renormalised),
    so the selection keeps its budget."""
    budget = min(budget, sum(sizes))
    quotas = [0] * len(sizes)
    w = np.asarray(weights, dtype=np.float64)
    while sum(quotas) < budget:
        room = np.array([quotas[j] < sizes[j] for j in range(len(sizes))])
        p = np.where(room, w, 0.0)
        if p.sum() <= 0:  # weights underflowed to 0 on every cluster with room: draw uniformly among them
            p = room.astype(np.float64)
        for j in rng.choice(len(sizes), size=budget - sum(quotas), p=p / p.sum()):
            quotas[j] = min(sizes[j], quotas[j] + 1)
    return quotas


def diversity_first(
    ids: Sequence[str],
    embeddings: np.ndarray,
    budget: int,
    n_clusters: int,
    quality: Sequence[float] | None = None,
    temperature: float = 1.0,
    quota: str = "proportional",
    seed: int = 0,
    gap: Sequence[float] | None = None,
    gap_temperature: float = 1.0,
) -> list[str]:
    """Diversify and Conquer: k-means clusters, per-cluster quotas, within-cluster sampling without
    replacement with p ~ exp(quality / temperature) (uniform without `quality`).

    With `gap` (per record: the gold answer's reward minus the student's answer's, measured under
    the student trained on the earlier iterations' selection), the quotas come from the paper's
    iterative reweighting instead of `quota`: w = softmax(mean gap per cluster / gap_temperature),
    one cluster draw per slot (`reweighted_quotas`)."""
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(ids)} ids but {len(embeddings)} embeddings")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if gap is not None and len(gap) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(gap)} gaps")
    assign = kmeans(embeddings, n_clusters, seed=seed)
    clusters = [np.flatnonzero(assign == j) for j in range(assign.max() + 1)]
    rng = np.random.default_rng(seed)
    if gap is None:
        quotas = cluster_quotas([len(c) for c in clusters], budget, quota)
    else:
        g = np.asarray(gap, dtype=np.float64)
        # an empty cluster (k-means left it without members) can take no slot: its weight is moot
        means = [float(g[c].mean()) if len(c) else 0.0 for c in clusters]
        quotas = reweighted_quotas([len(c) for c in clusters], cluster_weights(means, gap_temperature), budget, rng)
    q = np.zeros(len(ids)) if quality is None else np.asarray(quality, dtype=np.float64)
    chosen: list[str] = []
    for members, n in zip(clusters, quotas, strict=True):
        if n == 0:
            continue
        logits = q[members] / temperature
        p = np.exp(logits - logits.max())
        picked = rng.choice(members, size=n, replace=False, p=p / p.sum())
        chosen.extend(ids[i] for i in picked)
    return chosen


def embed_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 16,
    max_batch_tokens: int = 4096,
    max_len: int = 512,
    dtype: str = "float32",
) -> np.ndarray:
    """Mean-pooled last-layer hidden states of each text (n x hidden), in input order."""
    import torch

    from student_svc.scoring import autocast, length_buckets, model_device, pad_id, resolve_dtype

    device = model_device(model)
    dtype = resolve_dtype(dtype, device)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_len] or [pad_id(tokenizer)] for t in texts]
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for batch in length_buckets([len(e) for e in encoded], batch_size, max_batch_tokens):
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id(tokenizer), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        with torch.inference_mode(), autocast(dtype, device):
            hidden = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True, logits_to_keep=1
            ).hidden_states[-1].float()
        m = mask.to(device).unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1)
        for row, i in enumerate(batch):
            out[i] = pooled[row].cpu().numpy()
    return out
