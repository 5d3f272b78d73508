"""Fixtures for the student service tests: a shared tiny-model cache and a real LoRA adapter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from student_svc.models import ModelCache
from syllabus.artifacts import ArtifactRef


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir: Path) -> ModelCache:
    """One CPU model cache for the session, so the tiny model loads once."""
    return ModelCache(device="cpu")


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved peft LoRA adapter for the tiny model whose B weights are perturbed (so it is not a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    out = tmp_path_factory.mktemp("tiny-adapter")
    peft_model.save_pretrained(out)
    return out


@pytest.fixture
def put_adapter(tiny_adapter_dir: Path) -> Callable[..., ArtifactRef]:
    """Pack the tiny adapter into a store: `put_adapter(store, key="adapters/ref.tar")`."""
    from syllabus.models import pack_adapter

    def put(store, key: str = "adapters/ref.tar") -> ArtifactRef:
        return store.put_bytes(key, pack_adapter(tiny_adapter_dir))

    return put


@pytest.fixture
def mixed_records() -> list[dict]:
    """12 score records of very different lengths (short and long prompts and responses mixed)."""
    n = 12
    words = ["card", "arrived", "exchange", "rate", "top", "up", "failed", "passcode", "forgot", "lost"]
    out = []
    for i in range(n):
        prompt = " ".join(words[(i + j) % len(words)] for j in range(1 + (i * 37) % 60))
        response = " ".join(words[(i * 3 + j) % len(words)] for j in range(1 + (i * 11) % 25))
        out.append({"id": f"s{i}", "prompt": prompt, "response": response})
    return out
