"""The teacher's model cache: base models stay loaded, adapter backends (a whole model copy each) are
bounded, least recently used out first."""

from __future__ import annotations

from pathlib import Path

import pytest

from teacher_svc.service import ModelCache

pytestmark = pytest.mark.unit


def _adapters(model_dir: Path, out: Path, n: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    from syllabus.models import load_model

    dirs = []
    for i in range(n):
        lm, _ = load_model(str(model_dir))
        peft = get_peft_model(lm, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
        peft.save_pretrained(out / f"a{i}")
        dirs.append(out / f"a{i}")
    return dirs


def test_adapter_backends_are_bounded_and_base_models_stay(tiny_model_dir: Path, tmp_path: Path) -> None:
    a0, a1, a2 = _adapters(tiny_model_dir, tmp_path, 3)
    base = str(tiny_model_dir)
    cache = ModelCache(max_adapters=2)
    plain = cache.get(base)
    first = cache.get(base, a0, "sha0")
    cache.get(base, a1, "sha1")
    assert cache.get(base, a0, "sha0") is first  # a hit, and now the most recently used adapter
    cache.get(base, a2, "sha2")  # a third adapter: sha1, used longest ago, goes
    assert cache.loaded() == [(base, ""), (base, "sha0"), (base, "sha2")]
    assert cache.get(base) is plain
    again = cache.get(base, a1, "sha1")  # loaded anew, and sha0 (now the oldest adapter) goes
    assert again.adapter == "sha1" and [k for k in cache.loaded() if k[1]] == [(base, "sha2"), (base, "sha1")]
