"""An OpenAI-compatible chat-completions server on loopback, for tests that need a real HTTP teacher.

`ChatServer` owns the parts every such test shares: a threaded HTTP server on a free loopback port,
each request body recorded in order, concurrency counted, JSON replies. A test subclasses it and
says what a request gets (`handle`), usually a completion built by `completion`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(texts: Sequence[str], tokens: int) -> dict:
    """A chat.completion body with one choice per text."""
    choices = [{"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)]
    return {"object": "chat.completion", "choices": choices, "usage": {"completion_tokens": tokens}}


def send(h: BaseHTTPRequestHandler, payload: bytes, status: int = 200) -> None:
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(payload)))
    h.end_headers()
    h.wfile.write(payload)


def send_json(h: BaseHTTPRequestHandler, body: dict, status: int = 200) -> None:
    send(h, json.dumps(body).encode(), status)


class ChatServer:
    """POST /v1/chat/completions; request i (0-based, in arrival order) is answered by `handle`.
    `url` is the base URL a `teacher_endpoints` entry names; `close()` stops it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    i = len(server.bodies)
                    server.bodies.append(body)
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    server.handle(self, i, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, h: BaseHTTPRequestHandler, i: int, body: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
