"""The teacher on vLLM (GPU): same prompts, sampling and outputs shape as `TransformersBackend`.

vLLM is the optional `gpu` extra (`pip install -e .[gpu]` on a CUDA machine); it pins its own CUDA
torch, so it is imported only when this backend is loaded. Prompts are rendered with the model's chat
template plus the prefill exactly as `TransformersBackend.render` does, and greedy decoding
(temperature 0) is deterministic on both, which `tests/teacher/test_teacher_vllm.py` checks.
Sampling: `seed + prompt index` per request, so a prompt's draw does not depend on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence

from syllabus.models import load_tokenizer, resolve_model_dir
from syllabus.progress import PROGRESS
from teacher_svc.backend import ChatPrompt, Completion, Sampling, model_revision, one_schema, render_chat

# Prompts per vLLM generate call: large enough for its continuous batching, small enough to report progress.
VLLM_CHUNK = 256


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "the vLLM teacher backend needs the `gpu` extra: pip install -e '.[gpu]' (on a CUDA machine)"
        ) from e
    return vllm


class VLLMBackend:
    """An `vllm.LLM` engine over a local HF model directory."""

    name = "vllm"

    def __init__(self, base: str, llm, tokenizer, revision: str) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.model = base
        self.revision = revision

    @classmethod
    def load(cls, base: str, dtype: str = "float32", gpu_memory_utilization: float = 0.5) -> VLLMBackend:
        """Load `base` into vLLM; fp32 by default so greedy text matches the transformers backend."""
        vllm = _import_vllm()
        path = str(resolve_model_dir(base))
        llm = vllm.LLM(model=path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, seed=0)
        return cls(base, llm, load_tokenizer(base), model_revision(base))

    def generate(
        self, prompts: Sequence[ChatPrompt], sampling: Sampling, batch_size: int, stop: Sequence[str] = ()
    ) -> list[list[Completion]]:
        # batch_size is ignored: vLLM schedules its own continuous batches.
        if sampling.temperature == 0 and sampling.n != 1:
            raise ValueError("greedy decoding (temperature 0) is deterministic: n must be 1")
        vllm = _import_vllm()
        schema = one_schema(prompts, stop)
        constrained = _structured(vllm, schema) if schema else {}
        params = [
            vllm.SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                max_tokens=sampling.max_new_tokens,
                seed=sampling.seed + i,
                stop=list(stop) or None,
                skip_special_tokens=True,
                **constrained,
            )
            for i in range(len(prompts))
        ]
        texts = [render_chat(self.tokenizer, p) for p in prompts]
        # Token ids, not text: vLLM would otherwise add a BOS the chat template already contains.
        inputs = [{"prompt_token_ids": self.tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
        outputs = []
        # In chunks, so a long request ticks the service's progress (syllabus.progress) as it goes
        # and a caller's stall timeout measures vLLM's progress, not the whole request.
        for at in range(0, len(inputs), VLLM_CHUNK):
            outputs += self.llm.generate(inputs[at : at + VLLM_CHUNK], params[at : at + VLLM_CHUNK], use_tqdm=False)
            PROGRESS.tick()
        return [[Completion(c.text, len(c.token_ids)) for c in out.outputs] for out in outputs]


    def top_logprobs(self, records: Sequence[tuple[str, str]], k: int, max_len: int) -> list:
        """Per (prompt, response), the top-k log-probs of its response targets (vLLM prompt log-probs)."""
        from teacher_svc.logprobs import vllm_topk

        return vllm_topk(self.llm, self.tokenizer, records, k, max_len)


def _structured(vllm, schema: str) -> dict:
    """SamplingParams arguments that constrain a reply to `schema`: structured outputs (vLLM >= 0.10),
    else the guided decoding of earlier releases."""
    import json

    params = vllm.sampling_params
    if hasattr(params, "StructuredOutputsParams"):
        return {"structured_outputs": params.StructuredOutputsParams(json=json.loads(schema))}
    return {"guided_decoding": params.GuidedDecodingParams(json=json.loads(schema))}
