"""Label agreement through `syllabus run` on the shared stack: the bundled student, and a teacher
(`label_server.py`, real HTTP on loopback) that writes real Banking77 messages, half of them under
the wrong intent, so the test knows which generation is mislabelled.

`score.metrics: [agreement]` with `select.min_agreement: 0` must train a judge on the seeds alone,
score every candidate by the intended label's log-prob margin under it, and drop the candidates the
judge reads as another intent. A method that returns random scores fails the ranking assertion; a
filter that drops nothing (or everything) fails the selection assertions.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from label_server import LabelServer

from orchestrator.stack import Stack
from syllabus.records import loads_jsonl

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "banking77"
PER_LABEL = 8  # 5 intents x 8 = 40 generations, 20 of them another intent's message


def demo_task() -> dict:
    task = yaml.safe_load((EXAMPLE / "task.yaml").read_text())
    seeds = [json.loads(x) for x in (EXAMPLE / task["seeds"]).read_text().splitlines()]
    evals = [json.loads(x) for x in (EXAMPLE / task["eval"]).read_text().splitlines()]
    return {**task, "seeds": seeds, "eval": evals[::4]}


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a random positive scores above a random negative); ties count half."""
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_agreement_drops_the_generations_the_seeds_judge_reads_as_another_intent(
    run_task, stack: Stack, labeler: LabelServer
) -> None:
    task = demo_task() | {
        "name": "agreement",
        "rounds": 1,
        "teacher": {"model": "openai:labels"},
        "generate": {"per_label": PER_LABEL, "max_new_tokens": 40},
        "score": {"metrics": ["agreement"]},
        "select": {"metric": "agreement", "min_agreement": 0.0, "top_fraction": 1.0},
    }
    report = run_task(task)
    (r1,) = report["rounds"]
    round_dir = Path(unquote(urlparse(report["artifacts_uri"]).path)) / "round-1"
    seeds = {s["input"] for s in task["seeds"]}

    (gen_path,) = round_dir.glob("generate-*.jsonl")
    generated = {r["id"]: r for r in loads_jsonl(gen_path.read_bytes())}
    assert len(generated) == 5 * PER_LABEL
    wrong = {i for i, r in generated.items() if labeler.true_label[r["input"]] != r["label"]}
    assert len(wrong) == len(generated) // 2  # the server's rule: every even message is another intent's

    # The judge trained on the seeds alone (train.* epochs), before the round's own training.
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    runs = con.execute("select stage, samples from training_runs where job_id=? and round=1", (report["job_id"],)).fetchall()
    assert ("agreement", len(task["seeds"])) in runs, runs

    # The margins rank the mislabelled generations below the right ones; the filter drops exactly the
    # candidates with a negative margin, and more of them are mislabelled than of what it keeps. (The
    # judge is the bundled model after 3 epochs on 20 seeds: it reads about 3 in 4 pairs right, where
    # random scores read 1 in 2; the bounds below sit between.)
    (scores_path,) = round_dir.glob("scores-*.jsonl")
    agreement = {r["id"]: r["agreement"] for r in loads_jsonl(scores_path.read_bytes()) if r["id"] in generated}
    assert set(agreement) == set(generated)
    right = [v for i, v in agreement.items() if i not in wrong]
    mislabelled = [v for i, v in agreement.items() if i in wrong]
    (select_path,) = round_dir.glob("select-*.jsonl")
    trained = {r["input"] for r in loads_jsonl(select_path.read_bytes())} - seeds
    kept = {i for i, r in generated.items() if r["input"] in trained}
    dropped = set(generated) - kept
    seen = {"auc": auc(right, mislabelled), "kept": len(kept), "kept_wrong": len(kept & wrong),
            "dropped": len(dropped), "dropped_wrong": len(dropped & wrong)}  # fmt: skip
    assert kept == {i for i, v in agreement.items() if v >= 0.0}, seen
    assert r1["selection_dropped"].get("agreement_below_min") == len(dropped) > 0, seen
    assert seen["auc"] >= 0.65, seen
    assert seen["dropped_wrong"] / len(dropped) - seen["kept_wrong"] / max(1, len(kept)) >= 0.2, seen
