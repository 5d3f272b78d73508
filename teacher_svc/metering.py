"""The teacher's throughput metric: every token a backend generates, whichever backend it is.

`TeacherServicer._run_model` hands model work a `MeteredBackend`, so generation through any backend
(transformers, vLLM, an OpenAI-compatible endpoint) is counted in one place;
`rate(syllabus_teacher_generated_tokens_total[1m])` is the teacher's tokens per second.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter

from teacher_svc.backend import Backend, ChatPrompt, Completion, Sampling

GENERATED_TOKENS = Counter(
    "syllabus_teacher_generated_tokens",
    "Tokens the teacher's model generated (completions' new tokens; an HTTP endpoint's own count or estimate).",
)


class MeteredBackend:
    """A backend whose `generate` counts the tokens it returns; everything else is the backend's."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def generate(
        self, prompts: Sequence[ChatPrompt], sampling: Sampling, batch_size: int, stop: Sequence[str] = ()
    ) -> list[list[Completion]]:
        out = self._backend.generate(prompts, sampling, batch_size, stop=stop)
        GENERATED_TOKENS.inc(sum(c.tokens for completions in out for c in completions))
        return out

    def __getattr__(self, name: str):  # name, model, revision, and what a backend adds (e.g. adapter)
        return getattr(self._backend, name)
