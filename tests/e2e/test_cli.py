"""The whole stack through the CLI: real Temporal dev server, real gRPC services in their own
processes, SQLite and a local artifact store, on the tiny model (the demo runs the bundled one)."""

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

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SYLLABUS = [sys.executable, "-m", "orchestrator.cli"]


@pytest.fixture(scope="module")
def task_file(banking77_tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = banking77_tiny(3, generate={"per_label": 2, "max_new_tokens": 12, "seed": 0},  # 2 seeds, 2 evals a label
                          train={"epochs": 1, "batch_size": 4})
    path = tmp_path_factory.mktemp("task") / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def _cli(stack: Stack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SYLLABUS, *args], check=False, env=config_env(stack.config), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(stack: Stack, task_file: Path) -> dict:
    """One job run to completion through `syllabus run --json`."""
    result = _cli(stack, "run", str(task_file), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _last_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_run_completes_and_reports(stack: Stack, report: dict) -> None:
    assert report["status"] == "completed"
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
        check=False, capture_output=True, text=True, timeout=60,
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
    counts = {t: con.execute(f"select count(*) from {t} where job_id=?", (job_id,)).fetchone()[0]
              for t in ("samples", "scores", "training_runs", "evaluations", "rounds")}
    assert counts["samples"] >= 12  # 6 seeds + 6 eval + generated
    assert counts["evaluations"] == 2  # baseline + round 1
    assert counts["rounds"] == 1 and counts["training_runs"] >= 1
    # Each reported accuracy is its evaluation's correct / total over the 6 eval examples.
    evaluations = dict(con.execute("select round, correct from evaluations where job_id=? and total=6", (job_id,)).fetchall())
    assert report["baseline_accuracy"] == evaluations[0] / 6 and report["final_accuracy"] == evaluations[1] / 6
    assert report["rounds"][0]["accuracy"] == report["final_accuracy"]
    # The leakage guard's count reaches the report and the round row: the teacher's own Generate stats, summed.
    stats = list((prefix / "round-1").rglob("*.stats.json"))
    assert stats, "the teacher published no Generate stats"
    leaked = sum(json.loads(f.read_text()).get("leaked_removed", 0) for f in stats)  # proto JSON omits a 0
    assert report["rounds"][0]["leaked"] == leaked
    assert con.execute("select leaked from rounds where job_id=?", (job_id,)).fetchone()[0] == leaked
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
def test_bad_task_file_exits_2_and_starts_nothing(stack: Stack, task_file: Path, tmp_path: Path, edit, message: str) -> None:
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


def test_web_ui_shows_the_workflow_completed(stack: Stack, report: dict) -> None:
    import urllib.request

    url = f"{stack.config.temporal_ui_url}/api/v1/namespaces/default/workflows/{report['workflow_id']}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read().decode()
    assert "WORKFLOW_EXECUTION_STATUS_COMPLETED" in body


def test_lineage_prints_the_full_chain(stack: Stack, report: dict) -> None:
    job_id = report["job_id"]
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    (sample_id,) = con.execute(
        "select s.sample_id from selections s join samples m on m.sample_id = s.sample_id and m.job_id = s.job_id "
        "where s.job_id = ? and m.split = 'generated' order by s.rank limit 1", (job_id,)
    ).fetchone()
    human = _cli(stack, "lineage", sample_id, "--job", job_id)
    assert human.returncode == 0, human.stderr
    for needle in ("generated by: seed_expansion", "parent:", "critique (rules): keep", "learnability",
                   "selected in rounds: 1", "trained in run", "eval accuracy"):
        assert needle in human.stdout, (needle, human.stdout)
    (lin,) = _last_json(_cli(stack, "lineage", sample_id, "--job", job_id, "--json"))
    gen = lin["generation"]
    assert gen["teacher_model"] and gen["teacher_revision"] and gen["prompt_template_hash"] and gen["parent_id"]
    assert json.loads(gen["provenance_json"])["sampling"]["seed"] == 1  # generate.seed 0 + round 1
    assert {s["metric"] for s in lin["scores"]} >= {"loss_base", "loss_ref", "learnability"}
    sft = [t for t in lin["trainings"] if t["stage"] == "sft"]
    assert len(sft) == 1 and sft[0]["accuracy_after"] == report["rounds"][0]["accuracy"]
    assert sft[0]["accuracy_before"] == report["baseline_accuracy"]

    run = _last_json(_cli(stack, "lineage", "--training-run", str(sft[0]["training_run_id"]), "--json"))
    selected = {r[0] for r in con.execute("select sample_id from selections where job_id = ? and round = 1", (job_id,))}
    seeds = {r[0] for r in con.execute("select sample_id from samples where job_id = ? and split = 'seed'", (job_id,))}
    assert set(run["sample_ids"]) == selected | seeds
    assert len(run["sample_ids"]) == report["rounds"][0]["trained"]

    missing = _cli(stack, "lineage", "0000000000000000")
    assert missing.returncode == 2 and "not found" in missing.stderr


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_loads_with_hf_datasets(stack: Stack, report: dict, tmp_path: Path, fmt: str) -> None:
    from datasets import load_dataset

    out = tmp_path / f"train.{fmt}"
    result = subprocess.run(
        [*SYLLABUS, "export", report["job_id"], "--round", "1", "--format", fmt, "-o", str(out)],
        check=False, env=config_env(stack.config), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    ds = load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(out), split="train")
    assert len(ds) == report["rounds"][0]["trained"]
    assert {"id", "input", "label", "prompt", "response", "learnability", "provenance"} <= set(ds.column_names)
    generated = [r for r in ds if r["split"] == "generated"]
    assert generated and all(r["learnability"] is not None for r in generated)
    bad = subprocess.run([*SYLLABUS, "export", report["job_id"], "--round", "7"], check=False,
                         env=config_env(stack.config),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no trained round 7" in bad.stderr


def test_killed_worker_restarts_without_duplicates(stack: Stack, task_file: Path, tmp_path: Path) -> None:
    import time

    task = yaml.safe_load(task_file.read_text())
    task["name"] = "killed-worker"
    task["train"] = {"epochs": 40, "batch_size": 2}  # long enough to kill the worker mid-training
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    job_id = _last_json(_cli(stack, "run", str(path), "--no-wait", "--json"))["job_id"]

    deadline = time.monotonic() + 300
    while True:
        job = _last_json(_cli(stack, "jobs", "status", job_id, "--json"))
        assert job["status"] == "running", job
        if job["steps"] and job["steps"][-1]["name"] in ("select",):  # round 1's train step has begun
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    stack.kill("worker")
    stack.supervise()  # restarts the worker, as `syllabus up` would
    while (job := _last_json(_cli(stack, "jobs", "status", job_id, "--json")))["status"] == "running":
        assert time.monotonic() < deadline, "job did not finish after the worker restart"
        time.sleep(1)
    assert job["status"] == "completed", job

    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    one = lambda sql: con.execute(sql, (job_id,)).fetchone()[0]
    (generated,) = [r["generated"] for r in job["rounds"]]
    assert one("select count(*) from samples where job_id = ?") == 6 + 6 + generated
    assert one("select count(*) from samples where job_id = ?") == one("select count(distinct sample_id) from samples where job_id = ?")
    n_scores = one("select count(*) from scores where job_id = ?")
    assert n_scores == one("select count(*) from (select distinct round, sample_id, metric from scores where job_id = ?)")
    assert n_scores <= 3 * (job["rounds"][0]["kept"] + 6)  # LoBaSS's three columns of the candidates and 6 seeds
    assert one("select count(*) from training_runs where job_id = ?") == 2  # reference + sft, once each

    prefix = Path(unquote(urlparse(job["artifacts_uri"]).path))
    files = [p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if p.is_file()]
    assert not [f for f in files if "/.tmp-" in f or f.startswith(".tmp-")], "half-written objects left behind"
    published = [f for f in files if not f.endswith(".sha256")]
    for step in ("generate-", "critique-", "reference-", "score-input-", "score-lobass-", "scores-", "select-", "train-", "evaluate-"):
        outputs = [f for f in published if f.startswith(f"round-1/{step}") and not f.endswith((".metrics.json", ".ckpt"))
                   and not f.endswith("-critiques.jsonl") and not f.endswith(".stats.json")]
        assert len(outputs) == 1, (step, outputs)
    indexed = [r[0] for r in con.execute("select uri from artifacts where job_id = ?", (job_id,))]
    assert len(indexed) == len(set(indexed))
    assert all(Path(unquote(urlparse(u).path)).is_file() for u in indexed)
