"""A teacher behind an OpenAI-compatible chat-completions endpoint (a remote vLLM server, a hosted model).

One HTTP request per prompt (`n` completions each), at most `concurrency` in flight. Each request has
a timeout; timeouts, connection errors, 429, 5xx and malformed response bodies are retried with
exponential backoff (a `Retry-After` header, when given, is honoured up to `max_backoff_s`); other 4xx
answers are permanent (`BackendRequestError`, no retry). A request that still fails after
`max_retries` retries raises `BackendUnavailable`.

Sampling maps onto the request body as on the other backends: temperature 0 is greedy, `top_p`,
`max_tokens` (= `max_new_tokens`), `n`, `seed` (`seed + prompt index`, so each prompt's draw is
reproducible on servers that honour `seed`), `stop`. A prefill is sent as a final, partial assistant
message with vLLM's `continue_final_message` flag, so the reply continues it as on the in-process
backends; servers without that extension ignore the flag and answer the user message afresh.

Where the endpoint lives and which key it gets come from the server's configuration only
(`SYLLABUS_TEACHER_ENDPOINTS`, see `syllabus.config.TeacherEndpoint`): a ModelRef names a configured
endpoint as `openai:<name>`, never a URL. Errors carry the endpoint's name, the HTTP status and a short
reason, never the upstream body (it could echo prompts or secrets back to the client).

Prompt log-probs (`top_logprobs`, for token-level distillation) come from the legacy completions route
as vLLM's OpenAI server gives them: the record's token ids as the prompt, `echo` with `logprobs: k` and
`return_tokens_as_token_ids`, so the server scores exactly the student's tokens and names every token by
id (text keys would collapse tokens that decode alike). Only an endpoint configured with the
`tokenizer` its model uses offers them; a reply that does not echo the ids is refused as permanent.

Only the standard library is used (urllib), so the backend adds no dependency.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from syllabus.config import TeacherEndpoint
from syllabus.models import ModelNotFound
from syllabus.progress import PROGRESS
from teacher_svc.backend import BackendRequestError, BackendUnavailable, ChatPrompt, Completion, Sampling, one_schema

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HTTPSettings:
    """Where and how to reach the endpoint."""

    base_url: str  # e.g. "http://10.0.0.5:8000/v1"; "/chat/completions" is appended
    model: str  # the served model name sent in each request
    api_key: str | None = None  # sent as "Authorization: Bearer ..." when set
    timeout_s: float = 60.0  # per request attempt (connect + read)
    max_retries: int = 4  # retries after the first attempt
    backoff_s: float = 0.5  # first retry waits this long, doubling each time
    max_backoff_s: float = 8.0  # cap on one wait
    concurrency: int = 8  # requests in flight at most
    label: str = ""  # how errors name the endpoint (its configured name); default "teacher endpoint"

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not (timeout, 429, 5xx, malformed body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend:
    """Chat completions over HTTP; `generate` blocks until every prompt is answered or one fails."""

    name = "openai"

    def __init__(self, settings: HTTPSettings, revision: str = "", tokenizer: str = "") -> None:
        self.settings = settings
        # The local model whose tokenizer the endpoint serves: set only where it returns prompt log-probs.
        self.tokenizer_base = tokenizer
        self._tokenizer = None
        self.model = settings.model
        # A remote server does not tell which weights it serves; the caller may pin a revision.
        self.revision = revision or "remote"
        self._sleep = time.sleep  # tests may replace it to observe backoff
        # Set when the endpoint refused `response_format` once: later schema prompts go without it,
        # and the reply is parsed (and retried) by the step as any unconstrained reply.
        self.refuses_response_format = False

    @classmethod
    def from_base(cls, base: str, endpoints: Mapping[str, TeacherEndpoint] | None = None) -> OpenAIBackend:
        """From a ModelRef base "openai:<name>" naming one of `endpoints` (default: the config's
        `teacher_endpoints`). Raises ValueError for a URL, ModelNotFound for an unknown name."""
        name = base.removeprefix("openai:")
        if is_url_like(name):
            raise ValueError("name a configured endpoint, not a URL")
        if endpoints is None:
            from syllabus.config import load_config

            endpoints = load_config().teacher_endpoints
        endpoint = endpoints.get(name)
        if endpoint is None:
            known = ", ".join(sorted(endpoints)[:20]) or "none"
            raise ModelNotFound(
                f"no teacher endpoint {name[:64]!r} is configured (SYLLABUS_TEACHER_ENDPOINTS); configured: {known}"
            )
        return cls(HTTPSettings(
            endpoint.url, endpoint.model, api_key=endpoint.api_key(), timeout_s=endpoint.timeout_s,
            concurrency=endpoint.concurrency, label=f"teacher endpoint {name!r}",
        ), tokenizer=endpoint.tokenizer)  # fmt: skip

    @property
    def tokenizer(self):
        """The served model's tokenizer (loaded once), or None for an endpoint without prompt log-probs."""
        if self._tokenizer is None and self.tokenizer_base:
            from syllabus.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_base)
        return self._tokenizer

    def top_logprobs(self, records: Sequence[tuple[str, str]], k: int, max_len: int) -> list:
        """Per (prompt, response), the top-k log-probs of its response targets, as the other backends
        give them (`teacher_svc.logprobs`): one completions request per record, `concurrency` in flight."""
        from syllabus.prompts import encode_example

        if self.tokenizer is None:
            raise BackendRequestError(
                f"{self.settings.label or 'teacher endpoint'} gives no prompt log-probs here: configure its `tokenizer` "
                "(SYLLABUS_TEACHER_ENDPOINTS) for a server that returns them (vLLM's OpenAI server)"
            )
        encoded = [encode_example(self.tokenizer, p, r, max_len) for p, r in records]
        if not encoded:
            return []
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(encoded))) as pool:
            return list(pool.map(lambda e: self._score(*e, k), encoded))

    def _score(self, ids: list[int], labels: list[int], k: int):
        from syllabus.prompts import IGNORE_INDEX

        body = json.dumps({
            "model": self.settings.model, "prompt": ids, "echo": True, "logprobs": k, "max_tokens": 1,
            "temperature": 0.0, "return_tokens_as_token_ids": True,
        }).encode()  # fmt: skip
        positions = [t for t, lab in enumerate(labels) if lab != IGNORE_INDEX and t > 0]
        return self._post("/completions", body, "a record's prompt log-probs",
                          lambda raw: _parse_prompt_logprobs(raw, ids, positions, k, self.settings.label))  # fmt: skip

    def generate(
        self, prompts: Sequence[ChatPrompt], sampling: Sampling, batch_size: int, stop: Sequence[str] = ()
    ) -> list[list[Completion]]:
        # batch_size is an in-process notion; over HTTP the server batches, we bound concurrency.
        if sampling.temperature == 0 and sampling.n != 1:
            raise ValueError("greedy decoding (temperature 0) is deterministic: n must be 1")
        if not prompts:
            return []
        one_schema(prompts, stop)
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._one, i, p, sampling, stop) for i, p in enumerate(prompts)]
            return [f.result() for f in futures]

    # -- one request --------------------------------------------------------------------------

    def _body(self, index: int, prompt: ChatPrompt, sampling: Sampling, stop: Sequence[str]) -> dict:
        messages = [{"role": "user", "content": prompt.user}]
        body: dict = {
            "model": self.settings.model,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
            "max_tokens": sampling.max_new_tokens,
            "n": sampling.n,
            "seed": sampling.seed + index,
        }
        if stop:
            body["stop"] = list(stop)
        if prompt.prefill:
            messages.append({"role": "assistant", "content": prompt.prefill})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        if prompt.schema and not self.refuses_response_format:
            body["response_format"] = {
                "type": "json_schema", "json_schema": {"name": "reply", "schema": json.loads(prompt.schema), "strict": True},
            }  # fmt: skip
        return body

    def _one(self, index: int, prompt: ChatPrompt, sampling: Sampling, stop: Sequence[str]) -> list[Completion]:
        try:
            return self._send(index, prompt, sampling, stop)
        except BackendRequestError as e:
            # A server without structured output answers 400 to response_format: ask once more without it.
            if not (prompt.schema and e.status == 400 and not self.refuses_response_format):
                raise
            self.refuses_response_format = True
            return self._send(index, prompt, sampling, stop)

    def _send(self, index: int, prompt: ChatPrompt, sampling: Sampling, stop: Sequence[str]) -> list[Completion]:
        body = json.dumps(self._body(index, prompt, sampling, stop)).encode()
        return self._post("/chat/completions", body, f"prompt {index}", lambda raw: _parse_response(raw, sampling.n))

    def _post(self, path: str, body: bytes, what: str, parse):
        """`parse(reply body)` of a POST to `path`, retried with backoff while it fails retryably."""
        s = self.settings
        last: _Retryable | None = None
        for attempt in range(s.max_retries + 1):
            if attempt:
                wait = min(s.max_backoff_s, s.backoff_s * 2 ** (attempt - 1))
                if last is not None and last.retry_after is not None:
                    wait = min(s.max_backoff_s, max(wait, last.retry_after))
                self._sleep(wait)
            try:
                return parse(self._attempt(path, body))
            except _Retryable as e:
                last = e
        raise BackendUnavailable(
            f"{s.label or 'teacher endpoint'}: {what} failed after {s.max_retries + 1} attempts; last error: {last}"
        )

    def _attempt(self, path: str, body: bytes) -> bytes:
        s = self.settings
        headers = {"Content-Type": "application/json"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        req = urllib.request.Request(
            s.base_url.rstrip("/") + path, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=s.timeout_s) as resp:
                raw = resp.read()
            PROGRESS.tick()  # an endpoint's reply is this teacher's progress
        except urllib.error.HTTPError as e:
            # The status and its standard reason only: the body is the upstream's, never echoed.
            detail = _reason(e.code)
            if e.code in RETRYABLE_STATUS:
                raise _Retryable(f"HTTP {e.code} {detail}", _retry_after(e.headers.get("Retry-After"))) from e
            raise BackendRequestError(f"{s.label or 'teacher endpoint'}: HTTP {e.code} {detail}", status=e.code) from e
        except TimeoutError as e:
            raise _Retryable(f"timed out after {s.timeout_s} s") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError | socket.timeout):
                raise _Retryable(f"timed out after {s.timeout_s} s") from e
            raise _Retryable(f"connection failed ({type(e.reason).__name__})") from e
        except (ConnectionError, http.client.HTTPException) as e:
            raise _Retryable(f"connection failed ({type(e).__name__})") from e
        return raw


def is_url_like(name: str) -> bool:
    """Whether a model name smuggles in a location (a task must name a configured endpoint)."""
    lowered = name.lower()
    return "://" in lowered or "@http" in lowered


def _reason(code: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "(non-standard status)"


def _retry_after(value: str | None) -> float | None:
    try:
        wait = float(value) if value is not None else None
    except ValueError:
        return None
    return wait if wait is not None and 0 <= wait < float("inf") else None


def _parse_response(raw: bytes, n: int) -> list[Completion]:
    """`n` completions from a chat-completions body; a malformed body is retryable (proxies truncate)."""
    try:
        data = json.loads(raw)
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        texts = [c["message"]["content"] for c in choices]
        if len(texts) != n or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"expected {n} string choices, got {len(texts)}")
        usage = data.get("usage") or {}
        total = usage.get("completion_tokens")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _Retryable(f"malformed response body ({type(e).__name__}, {len(raw)} bytes)") from e
    if not isinstance(total, int):
        # No usage block: approximate by whitespace words (documented; providers almost always send usage).
        return [Completion(t, len(t.split())) for t in texts]
    # usage counts all choices together; split it evenly, the remainder going to the first choices.
    share, rest = divmod(total, n)
    return [Completion(t, share + (1 if i < rest else 0)) for i, t in enumerate(texts)]



def _parse_prompt_logprobs(raw: bytes, ids: list[int], positions: list[int], k: int, label: str):
    """The rows at `positions` of a completions reply that echoed the prompt `ids` with their top-k
    log-probs keyed "token_id:<id>". A body that is not JSON is retryable; one that is but lacks the
    echo, the ids or k entries per row is the server's way of working, so permanent."""
    import numpy as np

    from syllabus.topk import TopK

    try:
        logprobs = json.loads(raw)["choices"][0]["logprobs"]
    except ValueError as e:
        raise _Retryable(f"malformed response body ({type(e).__name__}, {len(raw)} bytes)") from e
    except (KeyError, IndexError, TypeError) as e:
        raise BackendRequestError(f"{label or 'teacher endpoint'}: the reply has no logprobs (a completions route with "
                                  "echo and logprobs, as vLLM's OpenAI server gives, is needed)") from e  # fmt: skip
    want = [f"token_id:{i}" for i in ids]
    try:
        echoed, chosen_lp, tops = logprobs["tokens"][: len(ids)], logprobs["token_logprobs"], logprobs["top_logprobs"]
        if echoed != want:
            raise ValueError("the prompt's token ids were not echoed (echo and return_tokens_as_token_ids, as vLLM's OpenAI server gives)")
        top_ids = np.zeros((len(positions), k), dtype=np.int32)
        top_lp = np.zeros((len(positions), k), dtype=np.float16)
        chosen = np.zeros(len(positions), dtype=np.float16)
        for j, t in enumerate(positions):
            best = sorted(((int(key.removeprefix("token_id:")), float(v)) for key, v in tops[t].items()), key=lambda kv: -kv[1])[:k]
            if len(best) < k:
                raise ValueError(f"{len(best)} log-probs at a position, not the {k} asked (the server's max_logprobs?)")
            top_ids[j] = [i for i, _ in best]
            top_lp[j] = [v for _, v in best]
            chosen[j] = float(chosen_lp[t])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise BackendRequestError(f"{label or 'teacher endpoint'}: prompt log-probs unusable: {str(e)[:200]}") from e
    return TopK(top_ids, top_lp, chosen)
