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
