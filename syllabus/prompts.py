"""How examples become student token sequences. Trainer and student share this, so a sample is
scored exactly as it is trained: chat-templated prompt, response tokens as the only targets."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The prompt as the model sees it, up to where the response starts."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def response_suffix(tokenizer: PreTrainedTokenizerBase) -> str:
    """What ends a response: the end-of-turn token, so the model learns to stop."""
    return tokenizer.eos_token or ""


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_len: int = 512
) -> tuple[list[int], list[int]]:
    """Token ids and labels for (prompt, response); prompt positions get IGNORE_INDEX.

    The prompt is truncated from the left if needed so the response always fits.
    """
    p_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response + response_suffix(tokenizer), add_special_tokens=False)["input_ids"]
    r_ids = r_ids[:max_len]
    p_ids = p_ids[max(0, len(p_ids) - (max_len - len(r_ids))) :] if len(p_ids) + len(r_ids) > max_len else p_ids
    return p_ids + r_ids, [IGNORE_INDEX] * len(p_ids) + r_ids
