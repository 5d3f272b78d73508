"""Teacher test fixtures: the Banking77 task of the shipped example, and a tiny-model backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from syllabus.records import loads_jsonl

BANKING77 = Path(__file__).resolve().parents[2] / "examples" / "banking77"


@dataclass(frozen=True)
class Task:
    instructions: str
    labels: list[str]
    seeds: list[dict]


@pytest.fixture(scope="session")
def banking77() -> Task:
    return Task(
        instructions="Classify the bank customer's message into one of the intents. Answer with the intent only.",
        labels=[
            "card_arrival",
            "lost_or_stolen_card",
            "exchange_rate",
            "top_up_failed",
            "passcode_forgotten",
        ],
        seeds=loads_jsonl((BANKING77 / "data" / "seeds.jsonl").read_bytes()),
    )


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    from teacher_svc.backend import TransformersBackend

    return TransformersBackend.load(str(tiny_model_dir))
