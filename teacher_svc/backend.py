"""Text generation backends behind one small protocol.

`TransformersBackend` runs a Hugging Face causal LM in-process (CPU or GPU), batched with left padding
so every prompt's completion starts at the same position (`generate` derives position ids from the
attention mask, so a padded prompt sees the same positions as when alone). `VLLMBackend`
(`teacher_svc.vllm_backend`, the `gpu` extra) and `OpenAIBackend` (`teacher_svc.openai_backend`, any
OpenAI-compatible chat-completions server) implement the same `Backend` protocol; `load_backend` picks
one from a ModelRef base:

- `bundled:NAME` or a local HF directory -> transformers;
- `vllm:<bundled:NAME or directory>` -> vLLM;
- `openai:<endpoint name>` -> HTTP to an endpoint configured on the server
  (`SYLLABUS_TEACHER_ENDPOINTS`: URL, served model, key env var); a URL in the base is refused.

Reproducibility: each batch is seeded with `seed + batch_index` inside a forked RNG, so a retried
request with the same parameters and batch size reproduces the same text and leaves the process's
global RNG untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from syllabus.models import load_model, resolve_model_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters; `temperature == 0` means greedy decoding (then `n` must be 1)."""

    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 64
    n: int = 1
    seed: int = 0


@dataclass(frozen=True)
class ChatPrompt:
    """A one-turn chat request: the user message and text the assistant's reply is forced to start with.
    `schema`: a JSON schema (as JSON text, `teacher_svc.structured`) every backend constrains the reply
    to; a constrained prompt has no prefill, and the prompts of one `generate` call share one schema."""

    user: str
    prefill: str = ""
    schema: str = ""


@dataclass(frozen=True)
class Completion:
    """One generated continuation (after the prefill) and how many new tokens it took."""

    text: str
    tokens: int


class Backend(Protocol):
    """What seed expansion needs from a teacher model."""

    name: str  # recorded as provenance "backend"
    model: str  # the ModelRef base
    revision: str  # sha256[:12] of the model's config.json

    def generate(
        self, prompts: Sequence[ChatPrompt], sampling: Sampling, batch_size: int, stop: Sequence[str] = ()
    ) -> list[list[Completion]]:
        """`sampling.n` completions per prompt, in prompt order; generation of one stops at any `stop` string."""
        ...


def one_schema(prompts: Sequence[ChatPrompt], stop: Sequence[str]) -> str:
    """The schema the prompts of one call share ("" for none); ValueError for a mix, a prefill or stops
    with a schema (a stop string would cut a JSON reply short)."""
    schemas = {p.schema for p in prompts}
    if len(schemas) > 1:
        raise ValueError("the prompts of one generate call share one schema (or none)")
    schema = next(iter(schemas), "")
    if schema and (stop or any(p.prefill for p in prompts)):
        raise ValueError("a schema-constrained prompt takes no prefill and no stop strings")
    return schema


class BackendError(Exception):
    """The backend could not produce completions."""


class BackendRequestError(BackendError):
    """The backend rejected the request (bad model name, auth, malformed parameters): retrying won't help.
    `status`: the HTTP status of an endpoint's refusal (0 otherwise)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class BackendUnavailable(BackendError):
    """The backend stayed unreachable or kept failing after the configured retries."""


def load_backend(base: str, endpoints=None) -> Backend:
    """The backend a ModelRef base names (see the module docstring); raises ModelNotFound or ValueError.
    `endpoints`: the configured HTTP teachers (default: `Config.teacher_endpoints` from the env)."""
    if base.startswith("openai:"):
        from teacher_svc.openai_backend import OpenAIBackend

        return OpenAIBackend.from_base(base, endpoints)
    if base.startswith("vllm:"):
        from teacher_svc.vllm_backend import VLLMBackend

        return VLLMBackend.load(base.removeprefix("vllm:"))
    return TransformersBackend.load(base)


def model_revision(base: str) -> str:
    """sha256[:12] of the model's config.json: which weights' architecture produced the data."""
    return hashlib.sha256((resolve_model_dir(base) / "config.json").read_bytes()).hexdigest()[:12]


def render_chat(tok: PreTrainedTokenizerBase, prompt: ChatPrompt) -> str:
    """The model's chat template around the user message, followed by the prefill (shared by backends)."""
    if tok.chat_template:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt.user}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt.user + "\n"
    return text + prompt.prefill


class TransformersBackend:
    """A causal LM loaded with `syllabus.models.load_model`, generating in batches."""

    name = "transformers"

    def __init__(self, base: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, revision: str) -> None:
        self.model_obj = model
        self.tokenizer = tokenizer
        self.model = base
        self.revision = revision
        self._compiler = None  # xgrammar's GrammarCompiler for this tokenizer, made on first use
        self._grammars: dict[str, object] = {}  # schema text -> compiled grammar

    adapter: str | None = None  # the adapter's sha256 when a LoRA is applied (recorded in provenance)

    @classmethod
    def load(cls, base: str, adapter_dir: str | Path | None = None, adapter_sha256: str = "") -> TransformersBackend:
        """Load `base` (raises `syllabus.models.ModelNotFound` if it names nothing loadable), with the
        peft adapter in `adapter_dir` applied when given (its sha256 joins the revision)."""
        import torch

        model, tok = load_model(base)
        revision = model_revision(base)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
            revision = f"{revision}+{adapter_sha256[:12]}"
        if torch.cuda.is_available():
            model.to("cuda")
        backend = cls(base, model, tok, revision)
        if adapter_dir is not None:
            backend.adapter = adapter_sha256
        return backend

    def render(self, prompt: ChatPrompt) -> str:
        return render_chat(self.tokenizer, prompt)

    def top_logprobs(self, records: Sequence[tuple[str, str]], k: int, max_len: int) -> list:
        """Per (prompt, response), the top-k log-probs of its response targets (`teacher_svc.logprobs`)."""
        from teacher_svc.logprobs import transformers_topk

        return transformers_topk(self.model_obj, self.tokenizer, records, k, max_len)

    def _grammar(self, schema: str):
        """The schema compiled for this tokenizer by xgrammar (cached: compiling costs more than a batch)."""
        if schema not in self._grammars:
            import xgrammar

            if self._compiler is None:
                vocab = max(self.model_obj.config.vocab_size, len(self.tokenizer))
                info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab)
                self._compiler = xgrammar.GrammarCompiler(info)
            # Compact JSON: free whitespace would let a small model pad a reply with newlines.
            self._grammars[schema] = self._compiler.compile_json_schema(schema, any_whitespace=False)
        return self._grammars[schema]

    def generate(
        self, prompts: Sequence[ChatPrompt], sampling: Sampling, batch_size: int, stop: Sequence[str] = ()
    ) -> list[list[Completion]]:
        import torch
        from transformers import GenerationConfig

        if sampling.temperature == 0 and sampling.n != 1:
            raise ValueError("greedy decoding (temperature 0) is deterministic: n must be 1")
        schema = one_schema(prompts, stop)
        grammar = self._grammar(schema) if schema else None
        tok = self.tokenizer
        greedy = sampling.temperature == 0
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else (sampling.top_p or 1.0),
            top_k=None if greedy else 0,  # only temperature and top_p shape the distribution
            num_return_sequences=sampling.n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            stop_strings=list(stop) or None,
        )
        device = self.model_obj.device
        old_side = tok.padding_side
        tok.padding_side = "left"  # decoder-only: pad on the left so completions line up at the end
        texts = [self.render(p) for p in prompts]
        order = list(range(len(prompts)))
        if greedy:
            # Greedy output does not depend on the batch, so batch prompts of similar length together:
            # less left padding to run through the model. (Sampled batches keep request order: their
            # seed is per batch index, so a retry reproduces them.)
            lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
            order.sort(key=lambda i: lengths[i])
        by_index: dict[int, list[Completion]] = {}
        try:
            for b, start in enumerate(range(0, len(prompts), batch_size)):
                idx = order[start : start + batch_size]
                batch = [texts[i] for i in idx]
                enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                with (
                    torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
                    torch.inference_mode(),
                ):
                    torch.manual_seed(sampling.seed + b)
                    constrained = {}
                    if grammar is not None:  # a processor holds per-row matcher state: one per call
                        from xgrammar.contrib.hf import LogitsProcessor

                        constrained["logits_processor"] = [LogitsProcessor(grammar)]
                    out = self.model_obj.generate(**enc, generation_config=config, tokenizer=tok, **constrained)
                new = out[:, enc["input_ids"].shape[1] :]
                for k, i in enumerate(idx):
                    rows = new[k * sampling.n : (k + 1) * sampling.n]
                    by_index[i] = [self._completion(row) for row in rows]
        finally:
            tok.padding_side = old_side
        return [by_index[i] for i in range(len(prompts))]

    def _completion(self, row) -> Completion:
        """Decode one generated row; count tokens up to and including the first end-of-sequence/pad token."""
        ids = row.tolist()
        # Finished rows are padded to the batch's length; padding is not generated text.
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        used = next((i + 1 for i, t in enumerate(ids) if t in ends), len(ids))
        return Completion(self.tokenizer.decode(ids[:used], skip_special_tokens=True), used)
