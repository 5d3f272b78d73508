"""A deterministic OpenAI-compatible teacher for the critique modes: fixed, schema-valid replies.

The tiny random-init teacher's critiques are junk, so its judge, cft, rubric and reflection replies
decide nothing a test can predict. This server (real HTTP on loopback, `tests/chat_server.py`)
answers every step with a reply chosen from the request alone:

- an expansion (no `response_format`) writes distinct messages `<7 words> case <k>`, k counting the
  messages it wrote from 1, so consecutive cases alternate in every rule below;
- a reply whose schema has a `verdict` (judge, cft) says "right" for odd cases, "wrong" for even ones;
- a rubric (`criteria`) has one criterion naming the question type, `Names <type>.`;
- a revision (`revised_answer`) names the type of its rubric for odd cases and no label for even ones;
- a reflection (`new_instruction`) drops the label for cases divisible by 6, leaves the instruction
  as it is for cases 1 mod 6, and rewrites it (a phrase before or after it) for the other four.

The first reply about an example whose case is 5 mod 6 is cut in half (not JSON), as a reply cut off
by its token budget is; asked again, the server answers in full, so the teacher's bounded retry
parses it.

Tests read the same rules (`case_of`, `cft_reply`, ...) to know what each record's reply said, and
`replies` holds every reply the server sent.
"""

from __future__ import annotations

import json
import random
import re
from http.server import BaseHTTPRequestHandler

from chat_server import ChatServer, completion, send_json

VOCAB = [
    "account",
    "balance",
    "transfer",
    "pending",
    "yesterday",
    "morning",
    "online",
    "banking",
    "statement",
    "branch",
    "phone",
    "wallet",
    "travel",
    "abroad",
    "refund",
    "merchant",
    "salary",
    "friend",
    "address",
    "delivery",
    "tracking",
    "weekend",
    "holiday",
    "laptop",
    "grocery",
    "rent",
    "invoice",
    "landlord",
    "cousin",
    "airport",
    "hotel",
    "taxi",
    "coffee",
    "receipt",
    "monthly",
]
_CASE = re.compile(r"\bcase (\d+)\b")
_TYPE = re.compile(r'questions of the type "(.+?)"')
_NAMES = re.compile(r"Names (.+?)\.$", re.MULTILINE)
_REFLECT = re.compile(r"\AInstruction: (.*)\nAnswer: (.*)\n\nExplain", re.DOTALL)
REWRITES = ("{} What should I do next, and how soon?", "Urgent question from a customer: {}",
            "{} This happened twice already.", "Hello, I need some help please. {}")  # fmt: skip


def message(k: int) -> str:
    """The k-th message an expansion writes (k >= 1): seven words of its own, then `case k`."""
    return " ".join(random.Random(k).sample(VOCAB, 7)) + f" case {k}"


def case_of(text: str) -> int:
    """The case number of a message (or of a prompt quoting one)."""
    return int(_CASE.findall(text)[-1])


def cft_reply(k: int) -> dict:
    if k % 2:
        return {"critique": f"Case {k}: the label fits the message.", "verdict": "right"}
    return {"critique": f"Case {k}: the message asks for something else.", "verdict": "wrong"}


def rubric_reply(qtype: str) -> dict:
    return {"criteria": [f"Names {qtype}."]}


def revision_reply(k: int, qtype: str) -> dict:
    return {"revised_answer": f"The intent is {qtype}." if k % 2 else "The request is unclear."}


def reflected(k: int, instruction: str) -> str:
    """The new instruction of case k (not divisible by 6)."""
    return instruction if k % 6 == 1 else REWRITES[k % 6 - 2].format(instruction)


def reflection_reply(k: int, instruction: str, answer: str) -> dict:
    if k % 6 == 0:
        return {"weaknesses": f"Case {k} is vague.", "new_instruction": instruction, "better_answer": "Hard to say."}
    new = reflected(k, instruction)
    return {
        "weaknesses": f"Case {k} lacks detail.",
        "new_instruction": new,
        "better_answer": f"The intent is {answer}.",
    }


def retried(k: int) -> bool:
    """Whether the first reply about case k is cut short (and the second is whole)."""
    return k % 6 == 5


def reply_to(prompt: str, schema: dict) -> tuple[int | None, dict]:
    """(the case the reply is about, None for a rubric; the reply) to one schema step's prompt."""
    fields = schema["properties"]
    if "verdict" in fields:
        k = case_of(prompt.split("\n\nSolution:")[0])
        return k, cft_reply(k)
    if "criteria" in fields:
        return None, rubric_reply(_TYPE.search(prompt).group(1))
    if "revised_answer" in fields:
        k = case_of(prompt.split("\n\nRubric:")[0])
        return k, revision_reply(k, _NAMES.search(prompt).group(1))
    if "new_instruction" in fields:
        instruction, answer = _REFLECT.match(prompt).groups()
        return case_of(instruction), reflection_reply(case_of(instruction), instruction, answer)
    raise ValueError(f"no scripted reply for a schema with {sorted(fields)}")


class CriticServer(ChatServer):
    """Expansions write `message(k)`; every schema step answers `reply_to(prompt, schema)`."""

    def __init__(self) -> None:
        self.written = 0  # messages written so far: the next is case written + 1
        self.replies: list[tuple[str, dict]] = []  # (prompt, reply) of every schema step, in order
        self.asked: set[str] = set()  # schema prompts answered before
        super().__init__()

    def handle(self, h: BaseHTTPRequestHandler, i: int, body: dict) -> None:
        prompt = body["messages"][0]["content"]
        if "response_format" in body:
            k, reply = reply_to(prompt, body["response_format"]["json_schema"]["schema"])
            text = json.dumps(reply)
            with self.lock:
                first = prompt not in self.asked
                self.asked.add(prompt)
                self.replies.append((prompt, reply))
            texts = [text[: len(text) // 2] if first and k is not None and retried(k) else text]
        else:  # the prefill `New message: "` is open: the closing quote ends the message
            with self.lock:
                first, self.written = self.written + 1, self.written + body.get("n", 1)
            texts = [message(k) + '"' for k in range(first, self.written + 1)]
        send_json(h, completion(texts, 9))
