"""Tiny random-init Llama models with the real SmolLM2 tokenizer, saved as local HF directories:
what the unit and e2e tests train and score instead of a real model. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path


def tiny_llama(out: Path, *, layers: int = 2, initializer_range: float = 0.02, seed: int = 0) -> Path:
    """A hidden-64 Llama of `layers` layers, weights drawn with `seed` at `initializer_range`, saved
    with the SmolLM2 tokenizer into `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from syllabus.models import load_tokenizer

    tok = load_tokenizer("bundled:smollm2-135m-instruct")
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=initializer_range,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
