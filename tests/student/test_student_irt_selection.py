"""IRT fitting on synthetic data with known parameters; selection policies."""

from __future__ import annotations

import numpy as np
import pytest

from student_svc import selection
from student_svc.irt import fit_irt, most_discriminative

pytestmark = pytest.mark.unit


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_1pl_recovers_difficulty():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=300)
    b = np.linspace(-2, 2, 20)
    y = (rng.random((300, 20)) < 1 / (1 + np.exp(-(theta[:, None] - b[None])))).astype(float)
    fit = fit_irt(y, "1pl", steps=1500)
    # Difficulty is well identified only where the item discriminates.
    assert _spearman(fit.difficulty[:10], b[:10]) > 0.97
    assert np.abs(fit.difficulty - b).mean() < 0.3
    assert np.allclose(fit.discrimination, 1.0)


def test_2pl_finds_the_discriminative_items():
    rng = np.random.default_rng(1)
    theta = rng.normal(size=400)
    b = rng.normal(scale=0.5, size=30)
    a = np.where(np.arange(30) < 10, 3.0, 0.3)  # items 0-9 discriminate, the rest barely
    y = (rng.random((400, 30)) < 1 / (1 + np.exp(-a[None] * (theta[:, None] - b[None])))).astype(float)
    fit = fit_irt(y, "2pl", steps=2000)
    assert set(most_discriminative(fit, 10)) == set(range(10))
    # Difficulty is well identified only where the item discriminates.
    assert _spearman(fit.difficulty[:10], b[:10]) > 0.9


def test_rank_policies_and_ifd_filter():
    rows = [{"id": f"r{i}", "s": float(i % 5), "ifd_ppl": 0.5 + 0.1 * i} for i in range(10)]
    assert selection.top_k(rows, "s", 3) == ["r4", "r9", "r3"]
    assert selection.top_k(rows, "s", 2, ascending=True) == ["r0", "r5"]
    assert selection.top_ratio(rows, "s", 0.25) == ["r4", "r9", "r3"]  # ceil(2.5) = 3
    assert selection.threshold(rows, "s", 3.0) == ["r4", "r9", "r3", "r8"]
    kept = selection.ifd_filter(rows)
    assert [r["id"] for r in kept] == [f"r{i}" for i in range(6)]  # 0.5 .. 1.0 kept, > 1 dropped


def test_diversity_first_takes_quotas_from_every_cluster():
    rng = np.random.default_rng(0)
    centers = np.eye(4) * 10
    sizes = [40, 20, 10, 10]
    x = np.concatenate([centers[j] + rng.normal(size=(n, 4)) for j, n in enumerate(sizes)])
    ids = [f"c{j}-{i}" for j, n in enumerate(sizes) for i in range(n)]
    quality = np.arange(len(ids), dtype=float)
    picked = selection.diversity_first(ids, x, budget=16, n_clusters=4, quality=quality, seed=0)
    assert len(picked) == len(set(picked)) == 16
    per = {j: sum(p.startswith(f"c{j}-") for p in picked) for j in range(4)}
    assert per == {0: 8, 1: 4, 2: 2, 3: 2}
    equal = selection.diversity_first(ids, x, budget=16, n_clusters=4, quota="equal", seed=0)
    assert sorted(sum(p.startswith(f"c{j}-") for p in equal) for j in range(4)) == [4, 4, 4, 4]
    assert picked == selection.diversity_first(ids, x, budget=16, n_clusters=4, quality=quality, seed=0)


def test_student_embeddings_are_mean_pooled_hidden_states(tiny_models, tiny_model_dir):
    import torch

    model, tok = tiny_models.get(str(tiny_model_dir))
    texts = ["my card is lost", "what is the exchange rate for euros today please", "hi"]
    emb = selection.embed_records(model, tok, texts)
    for text, e in zip(texts, emb, strict=True):
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0)
        assert np.allclose(e, h.numpy(), atol=1e-4)


def test_arte_probe_set_is_the_most_discriminative_items_of_a_small_crowd():
    """ARTE's Dpref on a right/wrong matrix worked by hand: five crowd members (the student's
    checkpoints, weakest first). g1..g3 are Guttman items (right exactly for the members above a
    cut), so they separate the crowd; `flat` everyone gets right (no information); `rev` only the two
    weakest get right (against the ability order). A 2PL fit ranks g1 > g2 > g3 > flat > rev by
    discrimination, so k = 3 picks the three Guttman items, not the bank's first three."""
    from student_svc.arte import probe_set_by_discrimination

    right = {"rev": [1, 1, 0, 0, 0], "flat": [1, 1, 1, 1, 1], "g1": [0, 0, 0, 1, 1], "g2": [0, 0, 1, 1, 1], "g3": [0, 1, 1, 1, 1]}
    probes = [{"id": item, "prompt": f"q {item}", "answer": "a"} for item in right]  # the bank, rev first
    responses = [{"item_id": item, "subject": f"m{s}", "correct": bool(c)} for item, col in right.items() for s, c in enumerate(col)]
    assert [p["id"] for p in probe_set_by_discrimination(probes, responses, 3)] == ["g1", "g2", "g3"]
    assert [p["id"] for p in probe_set_by_discrimination(probes, responses, 4)] == ["flat", "g1", "g2", "g3"]  # bank order kept
    fit = fit_irt(np.array([right[i] for i in ("g1", "g2", "g3", "flat", "rev")]).T, "2pl")
    assert list(np.argsort(-fit.discrimination)) == [0, 1, 2, 3, 4]
