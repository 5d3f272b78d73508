"""Every method family of the task format through `syllabus run` on the real stack (tiny model).

Each job is one `syllabus run --json`; the assertions read the report, the job's artifacts and its
SQL rows. The tiny random-init teacher writes no parseable rationale or critique, so model-based
steps show up here as what they dropped and why (their keep paths are unit tests on real replies in
tests/orchestrator/test_methods_logic.py); the rule critique keeps enough generated examples for
scoring, selection and the recipes to work on real candidates.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from orchestrator.stack import Stack, config_env
from syllabus.records import loads_jsonl

pytestmark = pytest.mark.e2e
SYLLABUS = [sys.executable, "-m", "orchestrator.cli"]

TRAIN = {"epochs": 1, "batch_size": 4}
STAGE = {"epochs": 1, "lr": 5.0e-4, "lora": {"rank": 4, "alpha": 8}}


def run(stack: Stack, tmp_path: Path, task: dict) -> dict:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    result = subprocess.run([*SYLLABUS, "run", str(path), "--json"], check=False, env=config_env(stack.config),
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "completed", report
    return report


def artifacts(report: dict) -> Path:
    return Path(unquote(urlparse(report["artifacts_uri"]).path))


def train_set(report: dict, r: int = 1) -> list[dict]:
    (path,) = [p for p in (artifacts(report) / f"round-{r}").glob("select-*.jsonl")]
    return loads_jsonl(path.read_bytes())


def names(report: dict, r: int) -> list[str]:
    return [s["name"] for s in report["steps"] if s["round"] == r]


def db(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(str(stack.config.home / "syllabus.db"))


def test_every_generate_mode_metric_diversity_chain_of_lora_and_tailoring(stack: Stack, banking77_tiny, tmp_path: Path) -> None:
    """Two rounds with everything on: expand + rationales + RFT + targeted generation, all six
    metrics, diversity selection, a two-stage Chain-of-LoRA recipe (static easy -> hard), and ARTE
    tailoring after round 1 so round 2 generates with the aligned teacher."""
    recipe = {
        "name": "cola", "max_seq_len": 128, "row_tokens": 256, "checkpoint_every": 2,
        "stages": [
            {"name": "easy", "data": {"score_key": "learnability_pct", "min_score": 0.5}, **STAGE, "after": "merge",
             "curriculum": {"policy": "static", "score_key": "learnability_pct", "descending": True},
             "schedule": {"kind": "cosine", "warmup_ratio": 0.1, "final_lr_ratio": 0.3}},
            {"name": "hard", "data": {"score_key": "learnability_pct", "max_score": 0.5, "replay": 0.2}, **STAGE,
             "after": "merge", "hft": True, "schedule": {"average_last_k": 2}},
        ],
    }  # fmt: skip
    task = banking77_tiny(
        2,
        name="everything",
        rounds=2,
        generate={"max_new_tokens": 12, "modes": [
            {"mode": "expand", "per_label": 3},
            {"mode": "rationales", "styles": ["step_by_step", "concise"], "max_questions": 2, "max_new_tokens": 16},
            {"mode": "rft", "k": 2, "max_questions": 2, "max_new_tokens": 16},
            {"mode": "targeted", "per_skill": 1},
        ]},
        score={"metrics": ["learnability", "ifd", "rifd", "preference", "car", "difficulty"], "probe_k": 2, "probe_max_new_tokens": 4},
        select={"policy": "diversity", "metric": "learnability", "top_fraction": 0.5, "n_clusters": 2},
        train={**TRAIN, "recipe": recipe},
        tailor={"every": 1, "questions": 2, "draft_max_new_tokens": 16, "probe_k": 2, "probe_max_new_tokens": 4, "batch_size": 2},
    )  # fmt: skip
    report = run(stack, tmp_path, task)

    r1 = names(report, 1)
    assert r1[:6] == ["generate", "critique", "rationales", "rft", "reference-train", "score"]
    assert r1[6:9] == ["select", "train-stage-1", "train-stage-2"]
    assert "evaluate" in r1 and "tailor" in r1 and r1.index("tailor") > r1.index("evaluate")
    assert "tailor" not in names(report, 2)  # never after the last round
    assert names(report, 2)[:2] == ["generate", "critique"]

    one, two = report["rounds"]
    # The tiny teacher writes no "Answer:" line: every rationale and RFT sample is counted as dropped.
    assert one["reasoning"]["rationales"]["written"] == 2 * 2  # 2 questions x 2 styles
    assert one["reasoning"]["rationales"]["kept"] == 0
    assert one["reasoning"]["rft"]["written"] == 2 * 2  # 2 questions x k
    assert sum(one["critique_dropped"].values()) == one["generated"] - one["kept"]
    assert one["candidates"] == one["kept"] > 0
    assert one["selected"] + one["selection_dropped"].get("not_selected", 0) == one["candidates"]
    # The tiny student gets every probe wrong whatever the demo: no preference, so the teacher stays.
    assert one["tailor_pairs"] == 0 and "no preference pairs" in one["tailor_skipped"]
    assert one["teacher_adapter_uri"] is None and two["teacher_adapter_uri"] is None

    # Every metric's column reaches the training records, with percentile ranks and the difficulties.
    records = train_set(report)
    for col in ("learnability", "ifd_ppl", "rifd_ppl", "arte_s_r", "car", "irt_difficulty", "irt_b", "difficulty100",
                "learnability_pct"):
        assert all(col in r for r in records), col
    assert {r["category"] for r in records} >= {"seed", "expand"}

    # The recipe ran as one checkpointed run; the trainer's per-stage record is in SQL.
    con = db(stack)
    runs = con.execute("select stage, metrics from training_runs where job_id=? and round=1", (report["job_id"],)).fetchall()
    stages = {s: json.loads(m) for s, m in runs}
    assert set(stages) == {"reference", "recipe"}
    assert [s["name"] for s in stages["recipe"]["stages"]] == ["easy", "hard"]
    scored = {m for (m,) in con.execute("select distinct metric from scores where job_id=?", (report["job_id"],))}
    assert {"learnability", "ifd_ppl", "rifd_ppl", "arte_s_r", "car", "irt_difficulty"} <= scored

    # Round 2 generated with the aligned teacher: its examples' provenance names the adapter.
    gen2 = [p for p in (artifacts(report) / "round-2").glob("generate-*.jsonl")]
    assert gen2
