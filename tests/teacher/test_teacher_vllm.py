"""vLLM backend vs transformers backend: same prompts, greedy, the same text (needs a CUDA GPU and the
`gpu` extra; not run by default: `pytest -m gpu tests/teacher/test_teacher_vllm.py`)."""

from __future__ import annotations

import pytest

from syllabus.models import DEFAULT_MODEL
from teacher_svc.backend import ChatPrompt, Sampling, TransformersBackend

pytestmark = pytest.mark.gpu


def test_vllm_greedy_matches_transformers() -> None:
    pytest.importorskip("vllm", reason="the gpu extra is not installed")
    from teacher_svc.vllm_backend import VLLMBackend

    prompts = [ChatPrompt(f"Write a short message from a bank customer about problem number {i}.", 'Message: "')
               for i in range(16)]  # fmt: skip
    greedy = Sampling(temperature=0.0, max_new_tokens=32, n=1)
    vllm_out = VLLMBackend.load(DEFAULT_MODEL).generate(prompts, greedy, batch_size=16, stop=["\n"])
    hf_out = TransformersBackend.load(DEFAULT_MODEL).generate(prompts, greedy, batch_size=1, stop=["\n"])
    assert [len(cs) for cs in vllm_out] == [1] * 16
    same = [v[0].text == h[0].text for v, h in zip(vllm_out, hf_out, strict=True)]
    differing = [(p.user, v[0].text, h[0].text) for p, v, h, s in zip(prompts, vllm_out, hf_out, same, strict=True) if not s]
    assert sum(same) >= 15, differing  # fp32 on both; at most one kernel-order tie flip


def test_vllm_top_logprobs_match_transformers() -> None:
    pytest.importorskip("vllm", reason="the gpu extra is not installed")
    import numpy as np

    from teacher_svc.vllm_backend import VLLMBackend

    records = [(f"Classify: customer message number {i} about a late card", "card_arrival") for i in range(8)]
    v = VLLMBackend.load(DEFAULT_MODEL).top_logprobs(records, 20, 512)
    h = TransformersBackend.load(DEFAULT_MODEL).top_logprobs(records, 20, 512)
    for a, b in zip(v, h, strict=True):
        assert len(a) == len(b)
        assert (a.ids[:, 0] == b.ids[:, 0]).mean() >= 0.95  # the argmax token, position by position
        np.testing.assert_allclose(a.chosen.astype(np.float32), b.chosen.astype(np.float32), atol=5e-2)
