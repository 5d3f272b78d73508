"""The OpenAI-compatible backend against a real chat-completions HTTP server on loopback.

The server answers from the tiny model (so greedy output can be compared with the in-process backend)
and can be told to be slow, to fail with a status code, or to send a malformed body, per request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest
from chat_server import ChatServer, completion, send, send_json

from syllabus.config import Config, TeacherEndpoint, load_config
from syllabus.models import ModelNotFound
from teacher_svc.backend import BackendRequestError, BackendUnavailable, ChatPrompt, Sampling, load_backend
from teacher_svc.openai_backend import HTTPSettings, OpenAIBackend

pytestmark = pytest.mark.integration


class TinyChatServer(ChatServer):
    """Answers from the tiny model; `plan(i)` says what request i gets: "ok", "slow", 500, 429, 400, "malformed"."""

    def __init__(self, backend, plan: Callable[[int], object] = lambda i: "ok", delay: float = 0.0) -> None:
        self.backend, self.plan, self.delay = backend, plan, delay
        self.model_lock = threading.Lock()
        super().__init__()

    def handle(self, h: BaseHTTPRequestHandler, i: int, body: dict) -> None:
        action = self.plan(i)
        if action == "no_schemas" and "response_format" in body:  # a server without structured output
            action = 400
        if self.delay:
            time.sleep(self.delay)
        if action == "slow":
            time.sleep(3.0)
        if isinstance(action, int):
            h.send_response(action)
            if action == 429:
                h.send_header("Retry-After", "0.05")
            h.end_headers()
            h.wfile.write(b'{"error": {"message": "scripted failure"}}')
            return
        if action == "malformed":
            send(h, b'{"choices": [{"message": {"content": "trunc')
        else:
            send_json(h, self.complete(body))

    def complete(self, body: dict) -> dict:
        """Answer with the tiny model, honouring vLLM's continue_final_message prefill."""
        messages = body["messages"]
        prefill = messages[-1]["content"] if body.get("continue_final_message") else ""
        sampling = Sampling(
            temperature=body["temperature"], top_p=body["top_p"], max_new_tokens=body["max_tokens"],
            n=body["n"], seed=body["seed"],
        )  # fmt: skip
        # response_format json_schema is honoured as vLLM's server does: the reply constrained to the schema.
        schema = json.dumps(body["response_format"]["json_schema"]["schema"]) if "response_format" in body else ""
        with self.model_lock:  # torch's RNG is process-global: one seeded generation at a time
            prompt = ChatPrompt(messages[0]["content"], prefill, schema=schema)
            outs = self.backend.generate([prompt], sampling, 1, body.get("stop", ()))[0]
        return completion([c.text for c in outs], sum(c.tokens for c in outs))


@pytest.fixture
def serve(tiny_backend):
    servers = []

    def start(**kw) -> TinyChatServer:
        servers.append(TinyChatServer(tiny_backend, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def client(server: TinyChatServer, **kw) -> OpenAIBackend:
    settings = {"timeout_s": 30.0, "max_retries": 3, "backoff_s": 0.01, "max_backoff_s": 0.1, "concurrency": 4} | kw
    backend = OpenAIBackend(HTTPSettings(server.url, "tiny", **settings))
    backend.waits = []
    backend._sleep = lambda s: (backend.waits.append(s), time.sleep(s))
    return backend


PROMPTS = [ChatPrompt(f"Write message number {i}.", 'New message: "') for i in range(3)]


def test_greedy_over_http_matches_in_process_and_maps_sampling(serve, tiny_backend) -> None:
    server = serve()
    greedy = Sampling(temperature=0.0, max_new_tokens=6, n=1, seed=5)
    remote = client(server).generate(PROMPTS, greedy, batch_size=8, stop=["\n"])
    local = tiny_backend.generate(PROMPTS, greedy, batch_size=1, stop=["\n"])
    assert [[c.text for c in cs] for cs in remote] == [[c.text for c in cs] for cs in local]
    assert [[c.tokens for c in cs] for cs in remote] == [[c.tokens for c in cs] for cs in local]
    body = min(server.bodies, key=lambda b: b["seed"])
    assert body["max_tokens"] == 6 and body["n"] == 1 and body["temperature"] == 0 and body["stop"] == ["\n"]
    assert body["messages"][-1] == {"role": "assistant", "content": 'New message: "'}
    assert body["continue_final_message"] is True
    assert sorted(b["seed"] for b in server.bodies) == [5, 6, 7]  # seed + prompt index

    sampled = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=5, n=3, seed=1)
    out = client(server).generate(PROMPTS[:2], sampled, batch_size=8)
    assert [len(cs) for cs in out] == [3, 3]
    assert out == client(server).generate(PROMPTS[:2], sampled, batch_size=8)  # seeded: reproducible


def test_errors_are_retried_with_backoff_then_succeed(serve) -> None:
    # Request 0 fails with 500, its retry gets 429 (Retry-After 0.05 s), the third attempt succeeds.
    server = serve(plan=lambda i: {0: 500, 1: 429, 2: "malformed"}.get(i, "ok"))
    backend = client(server, concurrency=1)
    out = backend.generate(PROMPTS[:1], Sampling(temperature=0.0, max_new_tokens=4), batch_size=1)
    assert len(out) == 1 and len(server.bodies) == 4
    assert backend.waits[0] == pytest.approx(0.01)  # first backoff
    assert backend.waits[1] >= 0.05  # Retry-After honoured
    assert backend.waits[2] == pytest.approx(0.04)  # doubling
    # Every attempt sent the same request.
    assert len({json.dumps(b, sort_keys=True) for b in server.bodies}) == 1


def test_slow_server_times_out_and_retries(serve) -> None:
    server = serve(plan=lambda i: "slow" if i == 0 else "ok")
    backend = client(server, timeout_s=1.5)
    t0 = time.perf_counter()
    out = backend.generate(PROMPTS[:1], Sampling(temperature=0.0, max_new_tokens=4), batch_size=1)
    assert len(out[0]) == 1 and len(server.bodies) == 2
    assert time.perf_counter() - t0 < 3.0  # gave up on the slow attempt instead of waiting it out


def test_persistent_failures_raise_unavailable_and_client_errors_are_not_retried(serve) -> None:
    always_malformed = serve(plan=lambda i: "malformed")
    with pytest.raises(BackendUnavailable, match="malformed response"):
        client(always_malformed, max_retries=2).generate(PROMPTS[:1], Sampling(temperature=0.0, max_new_tokens=4), 1)
    assert len(always_malformed.bodies) == 3

    always_slow = serve(plan=lambda i: "slow")
    with pytest.raises(BackendUnavailable, match="timed out"):
        client(always_slow, timeout_s=0.2, max_retries=1).generate(PROMPTS[:1], Sampling(temperature=0.0, max_new_tokens=4), 1)

    bad_request = serve(plan=lambda i: 400)
    with pytest.raises(BackendRequestError, match="HTTP 400"):
        client(bad_request).generate(PROMPTS[:1], Sampling(temperature=0.0, max_new_tokens=4), 1)
    assert len(bad_request.bodies) == 1


def test_concurrency_limit_is_respected(serve) -> None:
    server = serve(delay=0.15)
    prompts = [ChatPrompt(f"Prompt {i}") for i in range(10)]
    out = client(server, concurrency=3).generate(prompts, Sampling(temperature=0.0, max_new_tokens=2), batch_size=8)
    assert len(out) == 10 and len(server.bodies) == 10
    assert server.peak == 3


CFT_EXAMPLES = [{"id": f"e{i}", "question": f"What is {i} + 1?", "solution": f"It is {i + 1}."} for i in range(3)]


def test_a_step_schema_goes_as_response_format_and_every_reply_parses(serve) -> None:
    from teacher_svc import structured
    from teacher_svc.critics import cft_critique

    server = serve()
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=160, n=1, seed=2)
    records = cft_critique(client(server), CFT_EXAMPLES, sampling)
    assert [r["status"] for r in records] == ["ok"] * 3 and {r["verdict"] for r in records} <= {"right", "wrong"}
    sent = [b["response_format"] for b in server.bodies]
    assert all(f["type"] == "json_schema" and f["json_schema"]["strict"] for f in sent)
    assert sent[0]["json_schema"]["schema"] == structured.fit(structured.CFT, 160)


def test_an_endpoint_without_structured_output_is_asked_without_it_and_parsed(serve) -> None:
    from teacher_svc.critics import cft_critique

    server = serve(plan=lambda i: "no_schemas")
    backend = client(server, concurrency=1)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=16, n=1, seed=2)
    records = cft_critique(backend, CFT_EXAMPLES, sampling, retries=1)
    # One refusal, then plain requests; the tiny model's free text never parses: failed, not raised.
    assert backend.refuses_response_format
    assert ["response_format" in b for b in server.bodies] == [True] + [False] * (len(server.bodies) - 1)
    assert [r["status"] for r in records] == ["failed"] * 3 and all("not JSON" in r["error"] for r in records)
    assert len(server.bodies) == 1 + 3 * 2  # the refused request, then each example and its one retry


def test_from_base_and_settings_validation() -> None:
    endpoints = Config(teacher_endpoints='{"qwen": {"url": "http://127.0.0.1:9/v1", "model": "qwen-7b"}}').teacher_endpoints
    backend = OpenAIBackend.from_base("openai:qwen", endpoints)
    assert (backend.name, backend.model, backend.settings.base_url) == ("openai", "qwen-7b", "http://127.0.0.1:9/v1")
    assert backend.settings.api_key is None
    with pytest.raises(ModelNotFound, match="no teacher endpoint 'other' is configured"):
        OpenAIBackend.from_base("openai:other", endpoints)
    # A task names a configured endpoint, never a URL (no SSRF, no key sent to a host of the client's choice).
    for base in ("openai:m@http://127.0.0.1:9/v1", "openai:http://evil/v1", "openai:m@HTTPS://x"):
        with pytest.raises(ValueError, match="name a configured endpoint, not a URL"):
            OpenAIBackend.from_base(base, endpoints)
    with pytest.raises(ValueError, match="concurrency"):
        HTTPSettings("http://x/v1", "m", concurrency=0)
    # Nothing listens on port 9: a connection error is retried, then reported as unavailable.
    refused = OpenAIBackend(HTTPSettings("http://127.0.0.1:9/v1", "m", max_retries=1, backoff_s=0.01))
    with pytest.raises(BackendUnavailable, match="connection failed"):
        refused.generate(PROMPTS[:1], Sampling(temperature=0.0, max_new_tokens=2), 1)


def test_configured_endpoint_over_http_sends_its_key_and_never_echoes_the_body(serve, monkeypatch) -> None:
    server = serve(plan=lambda i: "ok" if i == 0 else 400)
    seen: list[str | None] = []
    handle = server.handle
    server.handle = lambda h, i, body: (seen.append(h.headers.get("Authorization")), handle(h, i, body))
    monkeypatch.setenv("TINY_TEACHER_KEY", "k-123")
    config = Config(teacher_endpoints=json.dumps(
        {"tiny": {"url": server.url, "model": "tiny-served", "api_key_env": "TINY_TEACHER_KEY", "timeout_s": 30}}
    ))  # fmt: skip
    backend = load_backend("openai:tiny", config.teacher_endpoints)
    out = backend.generate(PROMPTS[:1], Sampling(temperature=0.0, max_new_tokens=4), 1)
    assert len(out) == 1 and out[0][0].text
    assert server.bodies[0]["model"] == "tiny-served" and seen == ["Bearer k-123"]
    with pytest.raises(BackendRequestError) as err:
        backend.generate(PROMPTS[:1], Sampling(temperature=0.0, max_new_tokens=4), 1)
    text = str(err.value)
    assert "HTTP 400 Bad Request" in text and "teacher endpoint 'tiny'" in text
    assert "scripted failure" not in text and server.url not in text


def test_endpoints_config_is_parsed_from_the_env(monkeypatch) -> None:
    monkeypatch.setenv(
        "SYLLABUS_TEACHER_ENDPOINTS",
        '{"big": {"url": "http://vllm:8000/v1", "model": "Qwen/Qwen2.5-7B-Instruct", "api_key_env": "BIG_KEY"}}',
    )
    endpoint = load_config().teacher_endpoints["big"]
    assert isinstance(endpoint, TeacherEndpoint) and endpoint.url == "http://vllm:8000/v1"
    monkeypatch.setenv("BIG_KEY", "s3cret")
    assert OpenAIBackend.from_base("openai:big").settings.api_key == "s3cret"  # default: the env's config
    for bad in ('{"big": {"url": "file:///etc/passwd", "model": "m"}}', "not json", '{"a b": {"url": "http://x", "model": "m"}}'):
        monkeypatch.setenv("SYLLABUS_TEACHER_ENDPOINTS", bad)
        with pytest.raises(ValueError):
            load_config()
