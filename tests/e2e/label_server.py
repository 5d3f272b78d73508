"""A deterministic OpenAI-compatible teacher that writes real Banking77 messages, half of them under the
wrong label: the generations whose label a test knows.

An expansion request for label L (the prompt says `messages with the label "L"`) is answered from
Banking77's train split (`../shared/data/banking77/train.csv`), past the rows the banking77 example
takes as seeds and validation (its first 8 per intent; never eval rows): the i-th message the server
writes for L is L's own row i when i is odd, and the next label's row i when i is even, so half of
what L gets is another intent's message labelled L. Rows never repeat across labels (odd rows are
their own label's, even rows another's), so no duplicate filter touches them. `true_label` maps each
text to the intent it was written for in Banking77.
"""

from __future__ import annotations

import csv
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from chat_server import ChatServer, completion, send_json

TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77" / "train.csv"
LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "passcode_forgotten"]  # the demo's
SKIP, ROWS = 8, 16  # the example's seeds and validation rows per intent; rows served per intent
_LABEL = re.compile(r'messages with the label "([^"]+)"')


class LabelServer(ChatServer):
    def __init__(self) -> None:
        super().__init__()
        self.labels = LABELS
        self.rows: dict[str, list[str]] = {label: [] for label in LABELS}
        seen = dict.fromkeys(LABELS, 0)
        with open(TRAIN, newline="") as f:
            for row in csv.DictReader(f):
                label = row["category"]
                if label in seen:
                    seen[label] += 1
                    if seen[label] > SKIP and len(self.rows[label]) < ROWS:
                        self.rows[label].append(row["text"].strip())
        self.true_label = {text: label for label, texts in self.rows.items() for text in texts}
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
