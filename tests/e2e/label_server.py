"""A deterministic OpenAI-compatible teacher that writes real Banking77 messages, half of them under the
wrong label: the generations whose label a test knows.

An expansion request for label L (the prompt says `messages with the label "L"`) is answered from the
banking77 example's validation split (never the seeds or eval): the i-th message the server writes for
L is L's own validation row i when i is odd, and the next label's row i when i is even, so half of
what L gets is another intent's message labelled L. Rows never repeat across labels (odd rows are
their own label's, even rows another's), so no duplicate filter touches them. `true_label` maps each
text to the intent it was written for in Banking77.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from chat_server import ChatServer, completion, send_json

DATA = Path(__file__).resolve().parents[2] / "examples" / "banking77" / "data" / "validation.jsonl"
_LABEL = re.compile(r'messages with the label "([^"]+)"')


class LabelServer(ChatServer):
    def __init__(self) -> None:
        super().__init__()
        rows = [json.loads(line) for line in DATA.read_text().splitlines()]
        self.labels = list(dict.fromkeys(r["label"] for r in rows))
        self.rows = {label: [r["input"] for r in rows if r["label"] == label] for label in self.labels}
        self.true_label = {r["input"]: r["label"] for r in rows}
        self.written: dict[str, int] = {}

    def text(self, label: str, i: int) -> str:
        """The i-th message written for `label`: its own row when i is odd, the next label's (in the
        data's label order) when i is even."""
        if i % 2:
            return self.rows[label][i % len(self.rows[label])]
        other = self.labels[(self.labels.index(label) + 1) % len(self.labels)]
        return self.rows[other][i % len(self.rows[other])]

    def handle(self, h: BaseHTTPRequestHandler, i: int, body: dict) -> None:
        prompt = body["messages"][0]["content"]
        label = m.group(1) if (m := _LABEL.search(prompt)) else ""
        if label not in self.rows:
            send_json(h, {"error": {"message": f"no label in the prompt: {prompt[:80]}"}}, 400)
            return
        with self.lock:
            first = self.written.get(label, 0)
            self.written[label] = first + body.get("n", 1)
        # The prefill `New message: "` is open: the closing quote ends the message.
        texts = [self.text(label, k) + '"' for k in range(first, first + body.get("n", 1))]
        send_json(h, completion(texts, 9))
