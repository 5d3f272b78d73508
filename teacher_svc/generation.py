"""Seed expansion (Self-Instruct, Wang et al. 2023): the teacher writes new labelled examples from seeds.

For each label the teacher gets `per_label` prompts. Each prompt shows the task instructions, the
label and up to `EXAMPLES_PER_PROMPT` seed examples of that label, rotated from prompt to prompt so
the prompts (and hence the completions) differ, and asks for one new message with the same label.
The assistant's reply is prefilled with an opening quote and generation stops at the end of the
line, which keeps a small teacher on task and makes the reply easy to parse. Each completion is
parsed into one input text and deduplicated against the seeds and every earlier completion
(`teacher_svc.dedupe`); survivors become dataset records in the format of docs/contracts.md.

For the question kinds (exact answer, numeric, open-ended: no label set) the teacher writes new
questions like the seed questions instead, label "" and method "question_expansion"; answers come
from the teacher's rationales in a later step of the loop.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from syllabus.kinds import CLASSIFICATION
from syllabus.records import content_id
from teacher_svc.backend import Backend, ChatPrompt, Completion, Sampling
from teacher_svc.dedupe import DuplicateIndex

METHOD = "seed_expansion"
QUESTION_METHOD = "question_expansion"  # the question kinds: new questions, answered later
EXAMPLES_PER_PROMPT = 3
MIN_INPUT_CHARS = 8  # shorter replies ("Yes.", "Hi") are not usable examples
MAX_INPUT_CHARS = 400  # longer ones are rambling, not one customer message
DEFAULT_BATCH_SIZE = 16

TEMPLATE = """Task: {instructions}

Here are messages with the label "{label}":
{examples}

Write one more, different message with the same label "{label}". Reply with only the new message."""
PREFILL = 'New message: "'
QUESTION_TEMPLATE = """Task: {instructions}

Here are example questions:
{examples}

Write one more, different question of the same kind, complete in itself. Reply with only the new question."""
QUESTION_PREFILL = 'New question: "'
STOP = ("\n",)
PROMPT_TEMPLATE_HASH = hashlib.sha256(
    json.dumps({"template": TEMPLATE, "prefill": PREFILL, "stop": STOP}, sort_keys=True).encode()
).hexdigest()[:12]
QUESTION_TEMPLATE_HASH = hashlib.sha256(
    json.dumps({"template": QUESTION_TEMPLATE, "prefill": QUESTION_PREFILL, "stop": STOP}, sort_keys=True).encode()
).hexdigest()[:12]


@dataclass(frozen=True)
class Seed:
    """A seed example; `id` is its record id (content id of input and label when the record has none)."""

    id: str
    input: str
    label: str


@dataclass(frozen=True)
class ExpansionPrompt:
    """One generation prompt: its label, the id of the first seed it shows, and the chat request."""

    label: str
    parent_id: str | None
    chat: ChatPrompt


@dataclass(frozen=True)
class ExpansionRequest:
    """Everything seed expansion needs besides the backend."""

    instructions: str
    labels: Sequence[str]
    seeds: Sequence[Seed]
    per_label: int
    sampling: Sampling
    batch_size: int = DEFAULT_BATCH_SIZE
    round: int = 0


@dataclass(frozen=True)
class ExpansionResult:
    """Records written and what was dropped on the way."""

    records: list[dict]
    duplicates_removed: int
    unparsable: int
    tokens_generated: int


def parse_seeds(records: Sequence[dict]) -> list[Seed]:
    """Seeds from JSONL records with "input" and "label"; raises ValueError naming the bad record."""
    seeds = []
    for i, rec in enumerate(records):
        text, label = (rec.get("input"), rec.get("label")) if isinstance(rec, dict) else (None, None)
        if not isinstance(text, str) or not text.strip() or not isinstance(label, str) or not label:
            raise ValueError(f'record {i} needs a non-empty string "input" and "label"')
        seeds.append(Seed(rec.get("id") or content_id(text, label), text, label))
    return seeds


def build_prompts(
    instructions: str, labels: Sequence[str], seeds: Sequence[Seed], per_label: int
) -> list[ExpansionPrompt]:
    """`per_label` prompts per label, label-major; raises ValueError if a label has no seed. Without
    labels (the question kinds), `per_label` question prompts over all seeds, label ""."""
    if not labels:
        return _question_prompts(instructions, seeds, per_label)
    prompts = []
    for label in labels:
        own = [s for s in seeds if s.label == label]
        if not own:
            raise ValueError(f"no seed example has label {label!r}")
        k = min(EXAMPLES_PER_PROMPT, len(own))
        for j in range(per_label):
            # Prompt j starts where prompt j-1 stopped, so consecutive prompts show different seeds.
            shown = [own[(j * k + i) % len(own)] for i in range(k)]
            user = TEMPLATE.format(
                instructions=instructions.strip(),
                label=label,
                examples="\n".join(f"- {s.input.strip()}" for s in shown),
            )
            prompts.append(ExpansionPrompt(label, shown[0].id, ChatPrompt(user, PREFILL)))
    return prompts


def _question_prompts(instructions: str, seeds: Sequence[Seed], n: int) -> list[ExpansionPrompt]:
    if not seeds:
        raise ValueError("no seed question")
    k = min(EXAMPLES_PER_PROMPT, len(seeds))
    prompts = []
    for j in range(n):
        shown = [seeds[(j * k + i) % len(seeds)] for i in range(k)]
        user = QUESTION_TEMPLATE.format(instructions=instructions.strip(), examples="\n".join(f"- {s.input.strip()}" for s in shown))
        prompts.append(ExpansionPrompt("", shown[0].id, ChatPrompt(user, QUESTION_PREFILL)))
    return prompts


_BULLET = re.compile(r"^\s*(?:[-*•>]+|#?\d+[.):]|\(\d+\))\s*")
_PREFIX = re.compile(r"^(?:new\s+)?(?:customer\s+)?(?:message|input|example|text)\s*\d*\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"


def input_length_problem(text: str) -> str | None:
    """Why `text` cannot be an example input ("empty", "too_short", "too_long"), or None."""
    stripped = text.strip()
    if not stripped or not any(c.isalnum() for c in stripped):
        return "empty"
    if len(stripped) < MIN_INPUT_CHARS:
        return "too_short"
    if len(stripped) > MAX_INPUT_CHARS:
        return "too_long"
    return None


def parse_completion(text: str) -> str | None:
    """One input text from a completion, or None if there is none.

    The completion continues the prefill `New message: "`, so the message normally ends at the next
    double quote. Tolerated junk: blank lines, intro lines ending in ":", bullets, numbering,
    "Message:"-style prefixes and surrounding quotes.
    """
    for line in text.splitlines():
        line = line.strip()
        if not line or line.endswith(":"):
            continue
        line = _PREFIX.sub("", _BULLET.sub("", line))
        if '"' in line.lstrip(_QUOTES):  # the prefill's quote closes here
            line = line.lstrip(_QUOTES).split('"', 1)[0]
        line = line.strip().strip(_QUOTES).strip()
        return line if input_length_problem(line) is None else None
    return None


def template_hash(*parts: object) -> str:
    """sha256[:12] of a prompt template and everything else that shapes the prompt (prefill, stop)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def provenance(
    backend: Backend,
    sampling: Sampling,
    round_: int,
    method: str = METHOD,
    prompt_template_hash: str = PROMPT_TEMPLATE_HASH,
) -> dict:
    """The provenance block every generated record carries (docs/contracts.md)."""
    return {
        "method": method,
        "backend": backend.name,
        "model": backend.model,
        "revision": backend.revision,
        "prompt_template_hash": prompt_template_hash,
        "sampling": {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_new_tokens": sampling.max_new_tokens,
            "n": sampling.n,
            "seed": sampling.seed,
        },
        "round": round_,
    } | ({"adapter": backend.adapter} if getattr(backend, "adapter", None) else {})


def expand_seeds(backend: Backend, req: ExpansionRequest) -> ExpansionResult:
    """Generate, parse and deduplicate; returns contract records in prompt order (blocking)."""
    prompts = build_prompts(req.instructions, req.labels, req.seeds, req.per_label)
    completions = backend.generate([p.chat for p in prompts], req.sampling, req.batch_size, stop=STOP)
    seen = DuplicateIndex()
    for s in req.seeds:
        seen.add(s.input, s.id)
    questions = not req.labels
    prov = provenance(backend, req.sampling, req.round, *((QUESTION_METHOD, QUESTION_TEMPLATE_HASH) if questions else ()))
    labels = list(req.labels)
    records, duplicates, unparsable, tokens = collect_examples(
        ((p.label, {"parent_id": p.parent_id}, outs) for p, outs in zip(prompts, completions, strict=True)),
        seen, req.instructions, labels, prov, chats=[p.chat for p in prompts],
    )
    return ExpansionResult(records, duplicates, unparsable, tokens)


def collect_examples(
    groups: Iterable[tuple[str, dict, Sequence[Completion]]],
    seen: DuplicateIndex,
    instructions: str,
    labels: list[str],
    prov: dict,
    chats: Sequence[ChatPrompt] = (),
) -> tuple[list[dict], int, int, int]:
    """Turn completions into labelled example records: (records, duplicates, unparsable, tokens).

    Each group is (label, extra record fields, its completions). A completion that does not parse into
    one input text is counted unparsable; one that duplicates `seen` (which grows with every kept
    example) is counted duplicate. With `chats` (the group's prompt, in group order) each record
    also carries "generation": the prompt's user message and the reply (prefill included), what
    ARTE's question-level DPO pairs prefer or reject.
    """
    records: list[dict] = []
    duplicates = unparsable = tokens = 0
    for g, (label, extra, outs) in enumerate(groups):
        chat = chats[g] if chats else None
        for out in outs:
            tokens += out.tokens
            text = parse_completion(out.text)
            if text is None:
                unparsable += 1
                continue
            if seen.find(text) is not None:
                duplicates += 1
                continue
            rid = content_id(text, label)
            seen.add(text, rid)
            # A question (no labels) has no answer yet: the caller has it answered (rationales).
            prompt = CLASSIFICATION.prompt(instructions, labels, text) if labels else text
            record = {"id": rid, "input": text, "label": label, "prompt": prompt, "response": label, "provenance": prov, **extra}
            if chat is not None:
                record["generation"] = {"prompt": chat.user, "completion": chat.prefill + out.text}
            records.append(record)
    return records, duplicates, unparsable, tokens
