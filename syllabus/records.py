"""JSONL records: the format of every dataset artifact (HF `datasets` loads it directly)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable


def dumps_jsonl(records: Iterable[dict]) -> bytes:
    """Serialise records deterministically (sorted keys), one JSON object per line."""
    return b"".join(json.dumps(r, sort_keys=True, ensure_ascii=False).encode() + b"\n" for r in records)


def loads_jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def content_id(*parts: str) -> str:
    """A content-addressed id: the same content always gets the same id (16 hex chars)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\x1f")
    return h.hexdigest()[:16]


def stable_hash(obj: object) -> str:
    """Hash of a JSON-serialisable value, for deterministic output keys (12 hex chars)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
