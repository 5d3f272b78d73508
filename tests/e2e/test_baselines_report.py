"""Does the distillation help? The Banking77 example with baseline arms through `syllabus run --json
--report DIR` on the real stack (tiny model): the report's baselines, each arm's exact training set
(lineage), and the HTML report as headless Chromium renders it."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from orchestrator.stack import Stack, config_env
from syllabus.baselines import ROUND_SEED_STRIDE
from syllabus.records import loads_jsonl

pytestmark = pytest.mark.e2e
SYLLABUS = [sys.executable, "-m", "orchestrator.cli"]
ARMS = ["seeds_only", "all_kept", "random"]
PLOTS = {"accuracy.png", "loss.png", "scores.png", "funnel.png"}


def cli(stack: Stack, *args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*SYLLABUS, *args], check=False, env=env or config_env(stack.config), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def job(stack: Stack, banking77_tiny, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One job: 3 intents, 1 round, small budgets, the three arms; its report written at the end."""
    tmp = tmp_path_factory.mktemp("baselines")
    task = banking77_tiny(3, name="baselines", generate={"per_label": 3, "max_new_tokens": 12},
                          select={"top_fraction": 0.5}, train={"epochs": 1, "batch_size": 4}, baselines=ARMS)  # fmt: skip
    path = tmp / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    result = cli(stack, "run", str(path), "--json", "--report", str(tmp / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "completed", report
    return {"report": report, "dir": tmp / "report", "stderr": result.stderr, "tmp": tmp}


def artifacts(report: dict) -> Path:
    return Path(unquote(urlparse(report["artifacts_uri"]).path))


def test_the_report_has_each_arms_accuracy_and_the_loops_lift_with_a_ci(job: dict, stack: Stack) -> None:
    report = job["report"]
    baselines = report["baselines"]
    assert [b["arm"] for b in baselines] == ARMS
    (loop_round,) = report["rounds"]
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    for b in baselines:
        assert b["repeats"] == 1 and len(b["accuracy"]) == 1 and len(b["rounds"]) == 1
        (stage_acc,) = con.execute("select accuracy from evaluations where job_id=? and round=1 and stage=?",
                                   (report["job_id"], f"baseline-{b['arm']}")).fetchone()  # fmt: skip
        assert b["accuracy"] == [pytest.approx(stage_acc)]
        # One repeat, the same eval items: the mean paired difference is the accuracy difference.
        assert b["lift"] == pytest.approx(loop_round["accuracy"] - b["accuracy"][0])
        assert b["ci_low"] <= b["lift"] <= b["ci_high"] and -1 <= b["ci_low"] and b["ci_high"] <= 1
        assert re.fullmatch(rf"{re.escape(b['comparison'])}: [+-]\d+\.\d points \[[+-]\d+\.\d, [+-]\d+\.\d\], .*significant.*", b["verdict"])
    assert {b["arm"]: b["comparison"] for b in baselines} == {"seeds_only": "generated data", "all_kept": "selection",
                                                              "random": "selection vs random"}  # fmt: skip
    assert [s for s in report["steps"] if s["name"] == "baselines"]
    for b in baselines:  # the human report prints each verdict
        assert b["verdict"] in job["stderr"]


def test_each_arm_trained_on_what_its_name_says(job: dict, stack: Stack) -> None:
    report = job["report"]
    seeds = {r["id"] for r in loads_jsonl((artifacts(report) / "seeds.jsonl").read_bytes())}
    (scores,) = list((artifacts(report) / "round-1").glob("scores-*.jsonl"))
    candidates = {r["id"] for r in loads_jsonl(scores.read_bytes())} - seeds
    (loop_round,) = report["rounds"]
    assert candidates and loop_round["candidates"] == len(candidates) and 0 < loop_round["selected"] < len(candidates)
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    runs = dict(con.execute("select stage, id from training_runs where job_id=? and round=1", (report["job_id"],)).fetchall())
    trained = {}
    for arm in ARMS:  # through the gateway's GetLineage, as a user would look
        result = cli(stack, "lineage", "--training-run", str(runs[f"baseline-{arm}"]), "--json")
        assert result.returncode == 0, result.stderr
        lineage = json.loads(result.stdout.strip().splitlines()[-1])
        assert lineage["run"]["stage"] == f"baseline-{arm}"
        trained[arm] = set(lineage["sample_ids"])
    assert trained["seeds_only"] == seeds
    assert trained["all_kept"] == candidates | seeds
    picked = trained["random"] - seeds
    assert trained["random"] >= seeds and picked <= candidates and len(picked) == loop_round["selected"]
    # The loop's own run trained on its selection and the seeds: the arms are counterfactuals of it.
    (loop_samples,) = con.execute("select samples from training_runs where job_id=? and round=1 and stage='sft'", (report["job_id"],)).fetchone()
    assert loop_samples == loop_round["trained"] == loop_round["selected"] + len(seeds)
    # A sample's lineage names the arm runs that trained on it, with the arm's own accuracy after.
    seed = min(seeds)
    result = cli(stack, "lineage", seed, "--job", report["job_id"], "--json")
    (lin,) = json.loads(result.stdout.strip().splitlines()[-1])
    uses = {t["stage"]: t for t in lin["trainings"]}
    assert {"sft", *(f"baseline-{a}" for a in ARMS)} <= set(uses)
    arm = next(b for b in report["baselines"] if b["arm"] == "seeds_only")
    assert uses["baseline-seeds_only"]["accuracy_after"] == pytest.approx(arm["accuracy"][0])
    assert uses["sft"]["accuracy_after"] == pytest.approx(loop_round["accuracy"])


def test_the_html_report_renders_in_chromium_with_every_plot(chromium, job: dict, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    page = job["dir"] / "report.html"
    assert f"Report:      {page}" in job["stderr"]  # `run --report` prints where it wrote it
    text = page.read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert set(sources) == PLOTS
    for src in sources:  # each plot is a real PNG next to the page
        with Image.open(job["dir"] / src) as img:
            img.verify()
    for b in job["report"]["baselines"]:
        assert b["verdict"] in text  # the same numbers as the --json report
        # each arm's accuracy with its 95% band (bootstrap over the eval items), which holds the accuracy
        row = re.search(rf"<tr><td>{b['arm']}</td><td[^>]*>1</td><td[^>]*>([\d.]+)% <span[^>]*>\[([\d.]+), ([\d.]+)\]", text)
        assert row, b["arm"]
        acc, lo, hi = (float(x) for x in row.groups())
        assert acc == pytest.approx(100 * b["accuracy"][0], abs=0.06) and lo <= acc <= hi
        assert hi > lo or acc in (0.0, 100.0)  # a point band only where every item agrees
    assert "Final evaluation" in text and "gold \\ predicted" in text and "Top- and bottom-scored" in text

    # Chromium loads each image of the page: a probe page beside it reports every <img>'s natural size.
    probe = job["dir"] / "probe.html"
    probe.write_text("<!doctype html><html><body>" + "".join(f'<img src="{s}">' for s in sources) +
                     "<script>window.addEventListener('load', () => { document.body.setAttribute('data-sizes', "
                     "[...document.images].map(i => i.complete ? i.naturalWidth + 'x' + i.naturalHeight : 'pending').join(' ')); });"
                     "</script></body></html>")  # fmt: skip
    dom = chromium("--dump-dom", probe.as_uri())
    sizes = re.search(r'data-sizes="([^"]*)"', dom.stdout)
    assert sizes, dom.stderr[-2000:]
    assert len(sizes.group(1).split()) == len(sources)
    assert all(re.fullmatch(r"[1-9]\d*x[1-9]\d*", s) for s in sizes.group(1).split()), sizes.group(1)

    # A screenshot of the page itself is not blank: text, tables and plots, not a white sheet.
    shot = tmp_path / "report.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1200, 2400)
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    ink = float((pixels.min(axis=1) < 200).mean())
    colours = len(np.unique(pixels, axis=0))
    assert ink > 0.02 and colours > 200, (ink, colours)  # plots draw colour, tables draw text
    print(f"screenshot: {shot}")


def test_syllabus_report_through_the_gateway_and_straight_from_the_database(job: dict, stack: Stack, tmp_path: Path) -> None:
    job_id = job["report"]["job_id"]
    result = cli(stack, "report", job_id, "-o", str(tmp_path / "via-gateway"))
    assert result.returncode == 0, result.stderr[-2000:]
    page = Path(result.stdout.strip().splitlines()[-1])
    assert page == tmp_path / "via-gateway" / "report.html" and page.is_file()
    assert "Step wall time" in page.read_text()  # the gateway's job adds the step timings
    # No gateway (a stopped stack): the same report from the metadata DB and the artifact store.
    env = {**config_env(stack.config), "SYLLABUS_GATEWAY_ADDRESS": "127.0.0.1:9"}
    result = cli(stack, "report", job_id, "-o", str(tmp_path / "direct"), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reading" in result.stderr and "directly" in result.stderr
    direct = (tmp_path / "direct" / "report.html").read_text()
    for b in job["report"]["baselines"]:
        assert b["verdict"] in direct
    assert {p.name for p in (tmp_path / "direct").glob("*.png")} == PLOTS
    missing = cli(stack, "report", "no-such-job", "-o", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no-such-job" in missing.stderr


def test_a_shuffled_arm_with_repeats_chains_its_own_adapters_over_rounds(stack: Stack, banking77_tiny, tmp_path: Path) -> None:
    """Two rounds of a static easy-to-hard curriculum against the same data shuffled, twice (seeds 0 and
    1): each repeat trains the loop's own set with the curriculum replaced, from its own previous round."""
    stage = {"epochs": 1, "lr": 5.0e-4, "lora": {"rank": 4, "alpha": 8},
             "curriculum": {"policy": "static", "score_key": "learnability_pct"}}  # fmt: skip
    task = banking77_tiny(2, name="baselines-shuffled", rounds=2, generate={"per_label": 2, "max_new_tokens": 12},
                          train={"epochs": 1, "batch_size": 4, "recipe": {"stages": [stage], "max_seq_len": 128, "row_tokens": 256}},
                          baselines={"arms": ["shuffled"], "repeats": 2})  # fmt: skip
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    result = cli(stack, "run", str(path), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (arm,) = report["baselines"]
    assert (arm["arm"], arm["comparison"], arm["repeats"]) == ("shuffled", "curriculum", 2)
    assert [r["round"] for r in arm["rounds"]] == [1, 2] and all(len(r["accuracies"]) == 2 for r in arm["rounds"])
    assert arm["accuracy"] == [pytest.approx(sum(r["accuracies"]) / 2) for r in arm["rounds"]]
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    runs = {(r, s): (json.loads(p), a, i) for r, s, p, a, i in con.execute(
        "select round, stage, params, adapter_uri, id from training_runs where job_id=?", (report["job_id"],))}  # fmt: skip
    samples = {i: {s for (s,) in con.execute("select sample_id from training_run_samples where training_run_id=?", (i,))}
               for *_, i in runs.values()}  # fmt: skip
    for r in (1, 2):
        loop_params, loop_adapter, loop_id = runs[(r, "recipe")]
        for k, name in enumerate(("baseline-shuffled", "baseline-shuffled-2")):
            params, adapter, run_id = runs[(r, name)]
            recipe = yaml.safe_load(params["recipe"])
            assert [st["curriculum"]["policy"] for st in recipe["stages"]] == ["shuffled"]
            # the loop's recipe seed (0) + the repeat, moved by the round as the loop's own
            assert recipe["seed"] == k + (r - 1) * ROUND_SEED_STRIDE
            assert samples[run_id] == samples[loop_id]  # the loop's own training set, in another order
            # Round 1 starts from the base student, as the loop; round 2 from the repeat's own round-1 adapter.
            assert params["init_adapter"] == (None if r == 1 else runs[(1, name)][1])
            assert adapter != loop_adapter
        assert yaml.safe_load(loop_params["recipe"])["stages"][0]["curriculum"]["policy"] == "static"
        assert yaml.safe_load(loop_params["recipe"])["seed"] == (r - 1) * ROUND_SEED_STRIDE
