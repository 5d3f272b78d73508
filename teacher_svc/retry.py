"""Generate-and-parse with a per-record retry: a malformed reply never fails the batch.

Every prompt is generated once; the replies that `parse` rejects are generated again (only those),
up to `retries` more times, with `seed + attempt` and at least `RETRY_TEMPERATURE` so a greedy
request does not reproduce the same bad reply. A record that still does not parse comes back with
`value=None`, `error` and the raw text of its last attempt, so the caller can mark it failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from teacher_svc.backend import Backend, ChatPrompt, Sampling

T = TypeVar("T")
RETRY_TEMPERATURE = 0.7


class ParseError(ValueError):
    """A reply that does not have the expected shape; the message says what is missing."""


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """The outcome for one prompt: `value` (None if every attempt failed), the raw reply, attempts made."""

    value: T | None
    raw: str
    attempts: int
    tokens: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


def generate_parsed(
    backend: Backend,
    prompts: Sequence[ChatPrompt],
    parse: Callable[[str], T],
    sampling: Sampling,
    batch_size: int,
    stop: Sequence[str] = (),
    retries: int = 1,
) -> list[Parsed[T]]:
    """One `Parsed` per prompt, in order; `parse` raises ParseError on a malformed reply (blocking)."""
    sampling = replace(sampling, n=1)
    results: list[Parsed[T] | None] = [None] * len(prompts)
    tokens = [0] * len(prompts)
    todo = list(range(len(prompts)))
    for attempt in range(retries + 1):
        if not todo:
            break
        params = sampling
        if attempt:
            params = replace(
                sampling, seed=sampling.seed + attempt, temperature=max(sampling.temperature, RETRY_TEMPERATURE)
            )
        outs = backend.generate([prompts[i] for i in todo], params, batch_size, stop=stop)
        failed = []
        for i, out in zip(todo, outs, strict=True):
            completion = out[0]
            tokens[i] += completion.tokens
            try:
                results[i] = Parsed(parse(completion.text), completion.text, attempt + 1, tokens[i])
            except ParseError as e:
                results[i] = Parsed(None, completion.text, attempt + 1, tokens[i], str(e))
                failed.append(i)
        todo = failed
    return [r for r in results if r is not None]
