"""The whole stack through the CLI: real Temporal dev server, real gRPC services in their own
processes, SQLite and a local artifact store, on the tiny model (the demo runs the bundled one)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from orchestrator.stack import Stack, config_env, free_port
from syllabus.config import Config

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SYLLABUS = [sys.executable, "-m", "syllabus.cli"]


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")
    config = Config(
        home=home,
        temporal_address=f"127.0.0.1:{free_port()}",
        temporal_ui_url=f"http://127.0.0.1:{free_port()}",
        gateway_address=f"127.0.0.1:{free_port()}",
        teacher_address=f"127.0.0.1:{free_port()}",
        student_address=f"127.0.0.1:{free_port()}",
        trainer_address=f"127.0.0.1:{free_port()}",
        task_queue="e2e",
    )
    stack = Stack(config, preload=(str(tiny_model_dir),))
    try:
        asyncio.run(stack.start())
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def task_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = yaml.safe_load((ROOT / "examples/banking77/task.yaml").read_text())
    base = ROOT / "examples/banking77"
    labels = task["labels"][:3]
    seeds = [json.loads(line) for line in (base / task["seeds"]).read_text().splitlines()]
    evals = [json.loads(line) for line in (base / task["eval"]).read_text().splitlines()]
    task.update(
        labels=labels,
        seeds=[s for label in labels for s in seeds if s["label"] == label][::2],  # 2 per label
        eval=[e for label in labels for e in evals if e["label"] == label][::4],  # 2 per label
        teacher={"model": str(tiny_model_dir)},
        student={"model": str(tiny_model_dir)},
        rounds=1,
        generate={"per_label": 2, "max_new_tokens": 12, "seed": 0},
        train={"epochs": 1, "batch_size": 4},
    )
    path = tmp_path_factory.mktemp("task") / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def _cli(stack: Stack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SYLLABUS, *args], env=config_env(stack.config), capture_output=True, text=True, timeout=timeout)


def test_run_completes_and_reports(stack: Stack, task_file: Path) -> None:
    result = _cli(stack, "run", str(task_file), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "completed"
    assert 0.0 <= report["baseline_accuracy"] <= 1.0 and 0.0 <= report["final_accuracy"] <= 1.0
    assert [r["round"] for r in report["rounds"]] == [1]
    names = [s["name"] for s in report["steps"]]
    for step in ("prepare", "baseline-eval", "generate", "critique", "score", "select", "train", "evaluate"):
        assert step in names
    assert all(s["seconds"] >= 0 for s in report["steps"])
    assert report["web_ui_url"].endswith(f"/workflows/{report['workflow_id']}")

    # Temporal itself shows the workflow as Completed.
    temporal = Path(sys.executable).parent / "temporal"
    listing = subprocess.run(
        [str(temporal), "workflow", "list", "--address", stack.config.temporal_address, "--query", f"WorkflowId='{report['workflow_id']}'"],
        capture_output=True, text=True, timeout=60,
    )
    assert "Completed" in listing.stdout, listing.stdout + listing.stderr

    # The artifacts and SQL rows it reports exist.
    prefix = Path(unquote(urlparse(report["artifacts_uri"]).path))
    assert (prefix / "task.yaml").is_file() and (prefix / "seeds.jsonl").is_file()
    assert list((prefix / "round-1").glob("*.jsonl")), "round artifacts missing"
    adapter = Path(unquote(urlparse(report["rounds"][0]["adapter_uri"]).path))
    assert adapter.is_file() and adapter.with_name(adapter.name + ".sha256").is_file()
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    job_id = report["job_id"]
    counts = {t: con.execute(f"select count(*) from {t} where job_id=?", (job_id,)).fetchone()[0]  # noqa: S608
              for t in ("samples", "scores", "training_runs", "evaluations", "rounds")}
    assert counts["samples"] >= 12  # 6 seeds + 6 eval + generated
    assert counts["evaluations"] == 2  # baseline + round 1
    assert counts["rounds"] == 1 and counts["training_runs"] >= 1
    assert con.execute("select status from jobs where id=?", (job_id,)).fetchone()[0] == "completed"

    listed = _cli(stack, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert job_id in [j["job_id"] for j in json.loads(listed.stdout.strip().splitlines()[-1])]
    status = _cli(stack, "jobs", "status", job_id, "--json")
    assert json.loads(status.stdout.strip().splitlines()[-1])["final_accuracy"] == report["final_accuracy"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update(colour="red"), "colour: unknown key"),
        (lambda t: t.pop("eval"), "eval: missing (required)"),
        (lambda t: t["seeds"].append({"input": "hello", "label": "not_a_label"}), "label 'not_a_label' is not in labels"),
    ],
)
def test_bad_task_file_exits_2_and_starts_nothing(stack: Stack, task_file: Path, tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    task = yaml.safe_load(task_file.read_text())
    edit(task)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(task))
    before = json.loads(_cli(stack, "jobs", "list", "--json").stdout.strip().splitlines()[-1])
    result = _cli(stack, "run", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(bad) in lines[0]
    after = json.loads(_cli(stack, "jobs", "list", "--json").stdout.strip().splitlines()[-1])
    assert len(after) == len(before)


def test_unknown_job_is_a_clear_error(stack: Stack) -> None:
    result = _cli(stack, "jobs", "status", "no-such-job")
    assert result.returncode == 2
    assert "not found" in result.stderr and "Traceback" not in result.stderr
