"""Token-level distillation through `syllabus run` on the shared stack: a `kd` recipe whose teacher
is another model with the student's tokenizer (the 1-layer `tiny_scorer_dir`, wider init: a peaked
distribution), and a teacher whose chat template differs, refused before any work.

The kd assertions read the job's own artifacts against numbers recomputed here: the stored top-k
must be the teacher's (a plain forward under the teacher model), and the trained adapter must sit
closer to that distribution than the base student does. SFT on the same records moves the student
away from it (tests/trainer/test_objectives.py), so a kd stage that trained plain SFT, or on another
model's log-probs, fails.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
import yaml

from orchestrator.stack import Stack, config_env
from syllabus import topk
from syllabus.models import load_model, load_tokenizer
from syllabus.prompts import IGNORE_INDEX, encode_example
from syllabus.records import loads_jsonl

pytestmark = pytest.mark.e2e

RECIPE = {"name": "kd", "max_seq_len": 128, "packing": False, "batch_size": 4, "stages": [
    {"name": "kd", "objective": "kd", "epochs": 4, "lr": 5.0e-2, "lora": {"rank": 8, "alpha": 16},
     "distill": {"alpha": 1.0, "top_k": 8}}]}  # fmt: skip


def _artifacts(report: dict) -> Path:
    return Path(unquote(urlparse(report["artifacts_uri"]).path))


def _at_targets(model, tok, records: list[dict], tset: topk.TopKSet):
    """Per record: the model's logits at the positions that predict its response targets, the
    targets, and the teacher's stored rows for them."""
    for r in records:
        ids, labels = encode_example(tok, r["prompt"], r["response"], 128)
        at = [t - 1 for t, lab in enumerate(labels) if lab != IGNORE_INDEX]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, at].float()
        yield logits, torch.tensor([labels[t + 1] for t in at]), tset.for_record(r["prompt"], r["response"], len(at))


def _kl(model, tok, records: list[dict], tset: topk.TopKSet) -> float:
    """Mean over response tokens of KL(teacher top-k || model on the same ids), both renormalised."""
    total, n = 0.0, 0
    for logits, targets, row in _at_targets(model, tok, records, tset):
        p = torch.log_softmax(torch.from_numpy(row.logprobs.astype("float32")), -1)
        q = torch.log_softmax(logits.gather(1, torch.from_numpy(row.ids.astype("int64"))), -1)
        total += float((p.exp() * (p - q)).sum())
        n += len(targets)
    return total / n


def _student(base: Path | str, adapter_uri: str, work: Path):
    """The base model with a job's adapter merged in."""
    from peft import PeftModel

    from syllabus.models import unpack_adapter

    unpacked = unpack_adapter(Path(unquote(urlparse(adapter_uri).path)).read_bytes(), work)
    adapter_dir = next(unpacked.rglob("adapter_config.json")).parent
    return PeftModel.from_pretrained(load_model(str(base))[0], str(adapter_dir)).merge_and_unload()


def test_kd_recipe_learns_the_teacher_distribution(run_task, stack: Stack, banking77_tiny, tiny_model_dir: Path,
                                                   tiny_scorer_dir: Path, tmp_path: Path) -> None:  # fmt: skip
    task = banking77_tiny(2, name="kd", teacher={"model": str(tiny_scorer_dir)}, generate={"per_label": 2, "max_new_tokens": 8},
                          train={"epochs": 1, "batch_size": 4, "recipe": RECIPE}, baselines={"arms": ["sft"]})  # fmt: skip
    report = run_task(task)
    steps = [(s["name"], s["round"]) for s in report["steps"]]
    assert ("distill-check", 0) in steps
    r1 = [name for name, r in steps if r == 1]
    assert r1.index("teacher-logprobs") < r1.index("train-stage-1")

    round_dir = _artifacts(report) / "round-1"
    (lp_path,) = round_dir.glob("teacher-logprobs-*.npz")
    tset = topk.loads(lp_path.read_bytes())
    assert tset.k == 8 and tset.teacher["model"] == str(tiny_scorer_dir)
    (select_path,) = round_dir.glob("select-*.jsonl")
    trained = [r for r in loads_jsonl(select_path.read_bytes()) if not r.get("heldout")]
    assert len(trained) >= 4

    # The stored rows are the teacher's: its own forward, recomputed here, gives the same top-k.
    teacher, tok = load_model(str(tiny_scorer_dir))
    for r in trained:
        ids, labels = encode_example(tok, r["prompt"], r["response"], 128)
        at = [t - 1 for t, lab in enumerate(labels) if lab != IGNORE_INDEX]
        with torch.no_grad():
            logp = torch.log_softmax(teacher(input_ids=torch.tensor([ids])).logits[0, at].float(), -1)
        row = tset.for_record(r["prompt"], r["response"], len(at))
        top = logp.topk(8, -1)
        assert (row.ids[:, 0] == top.indices[:, 0].numpy()).all()
        np.testing.assert_allclose(row.logprobs.astype(np.float32), top.values.numpy(), atol=2e-2)

    # The adapter learnt the teacher's distribution: nearer to it than the base student.
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    runs = {stage: (run_id, uri, json.loads(params)) for run_id, stage, uri, params in con.execute(
        "select id, stage, adapter_uri, params from training_runs where job_id=? and round=1", (report["job_id"],))}  # fmt: skip
    run_id, adapter_uri, params = runs["recipe"]
    base, _ = load_model(str(tiny_model_dir))
    before = _kl(base, tok, trained, tset)
    after = _kl(_student(tiny_model_dir, adapter_uri, tmp_path / "loop"), tok, trained, tset)
    assert after < 0.8 * before, (before, after)  # seen: 0.106 -> 0.068

    # The sft arm: the same records, the kd stage trained by plain SFT, no teacher; the report shows
    # it beside the loop, and its adapter is no nearer the teacher than the base student.
    (arm,) = report["baselines"]
    assert arm["arm"] == "sft" and arm["comparison"] == "distillation objective" and arm["ci_low"] <= arm["lift"] <= arm["ci_high"]
    _, arm_uri, arm_params = runs["baseline-sft"]
    assert "objective: sft" in arm_params["recipe"] and "objective: kd" not in arm_params["recipe"] and "teacher" not in arm_params
    arm_kl = _kl(_student(tiny_model_dir, arm_uri, tmp_path / "arm"), tok, trained, tset)
    assert arm_kl > 0.9 * before and after < 0.8 * arm_kl, (before, after, arm_kl)

    # The teacher manifest is stored with the run, and lineage shows it.
    manifest = params["teacher"]
    assert manifest["model"] == str(tiny_scorer_dir) and manifest["logprobs_uri"].endswith(lp_path.name)
    lineage = subprocess.run([sys.executable, "-m", "orchestrator.cli", "lineage", "--training-run", str(run_id), "--json"],
                             env=config_env(stack.config), capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert lineage.returncode == 0, lineage.stderr
    assert json.loads(json.loads(lineage.stdout.strip().splitlines()[-1])["params_json"])["teacher"]["id"] == manifest["id"]
    # ... and so does the HTML report, beside the sft arm's verdict
    page = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", report["job_id"], "-o", str(tmp_path / "report")],
                          env=config_env(stack.config), capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert page.returncode == 0, page.stderr[-2000:]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<h2>Teachers</h2>" in html and str(tiny_scorer_dir) in html and lp_path.name in html
    assert "(vs sft," in html


def test_a_teacher_that_tokenizes_differently_is_refused_in_one_line(stack: Stack, banking77_tiny, tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    other = tmp_path / "other-template"
    shutil.copytree(tiny_model_dir, other)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ 'You are a teacher.\\n' }}" + (cfg.get("chat_template") or load_tokenizer(str(tiny_model_dir)).chat_template)
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    (other / "chat_template.jinja").unlink(missing_ok=True)
    task = banking77_tiny(2, name="kd-mismatch", teacher={"model": str(other)}, train={"epochs": 1, "batch_size": 4, "recipe": RECIPE})
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--json"], env=config_env(stack.config),
                            capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "failed"
    assert "tokenize differently: chat templates render differently" in report["error"]
    assert "\n" not in report["error"] and "Traceback" not in result.stderr
    # refused before any generation or training
    assert not list(_artifacts(report).glob("round-1/*"))
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    assert con.execute("select count(*) from training_runs where job_id=?", (report["job_id"],)).fetchone() == (0,)


def test_context_distillation_with_the_bundled_model_as_its_own_privileged_teacher(
    run_task, stack: Stack, banking77_tiny, tmp_path: Path
) -> None:
    from syllabus.models import DEFAULT_MODEL

    bundled = {"model": DEFAULT_MODEL}
    # fp32: bf16 autocast is emulated (slow) on a CPU without AVX512-BF16/AMX
    recipe = {**RECIPE, "bf16": False, "stages": [{**RECIPE["stages"][0], "epochs": 3, "lr": 2.0e-3, "distill": {"alpha": 1.0, "top_k": 20}}]}
    # Small on purpose (the bundled model on 2 CPU cores): 2 intents, one generation each, the base
    # student's loss as the only score (no reference adapter to train).
    task = banking77_tiny(2, name="context-distill", student=bundled, teacher={**bundled, "context": {"seeds": 2}},
                          generate={"per_label": 1, "max_new_tokens": 16}, score={"metrics": ["compatibility"]},
                          select={"metric": "compatibility", "top_fraction": 1.0},
                          train={"epochs": 1, "batch_size": 4, "recipe": recipe})  # fmt: skip
    report = run_task(task)
    round_dir = _artifacts(report) / "round-1"
    (lp_path,) = round_dir.glob("teacher-logprobs-*.npz")
    tset = topk.loads(lp_path.read_bytes())
    assert tset.teacher["model"] == DEFAULT_MODEL and tset.teacher["context_sha256"]
    (select_path,) = round_dir.glob("select-*.jsonl")
    trained = [r for r in loads_jsonl(select_path.read_bytes()) if not r.get("heldout")]

    # The same weights with the seeds in front answer differently: the context is information the
    # student lacks (KL > 0 before training), and the kd stage moves the student towards it.
    base, tok = load_model(DEFAULT_MODEL)
    before = _kl(base, tok, trained, tset)
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    ((uri, params),) = con.execute("select adapter_uri, params from training_runs where job_id=? and round=1 and stage='recipe'",
                                   (report["job_id"],)).fetchall()  # fmt: skip
    after = _kl(_student(DEFAULT_MODEL, uri, tmp_path / "ctx"), tok, trained, tset)
    assert before > 0.02, before  # seen: 0.085 before, 0.017 after (8 records, 3 intents)
    assert after < 0.8 * before, (before, after)  # chunk 2 closes the gap chunk 1 left on its own samples
    assert json.loads(params)["teacher"]["context_sha256"] == tset.teacher["context_sha256"]


def _gap(model, tok, records: list[dict], tset: topk.TopKSet) -> float:
    """Mean |log p_model(x_t) - log p_teacher(x_t)| over the records' response tokens (opd's target: 0)."""
    total, n = 0.0, 0
    for logits, targets, row in _at_targets(model, tok, records, tset):
        logp = torch.log_softmax(logits, -1)[range(len(targets)), targets]
        total += float((logp - torch.from_numpy(row.chosen.astype("float32"))).abs().sum())
        n += len(targets)
    return total / n


def test_opd_recipe_samples_the_student_and_trains_on_the_teachers_scores_chunk_by_chunk(
    run_task, stack: Stack, banking77_tiny, tiny_model_dir: Path, tiny_scorer_dir: Path, tmp_path: Path
) -> None:
    recipe = {"name": "opd", "max_seq_len": 128, "packing": False, "batch_size": 4, "stages": [
        # a LoRA on the output layer too: the tiny model's attention alone can barely move its log-probs
        {"name": "opd", "objective": "opd", "epochs": 8, "lr": 2.0e-2, "lora": {"rank": 8, "alpha": 16, "targets": [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]},
         "distill": {"top_k": 4}, "on_policy": {"chunks": 2, "max_new_tokens": 8, "temperature": 1.0}}]}  # fmt: skip
    task = banking77_tiny(2, name="opd", teacher={"model": str(tiny_scorer_dir)}, generate={"per_label": 2, "max_new_tokens": 8},
                          train={"epochs": 1, "batch_size": 4, "recipe": recipe}, baselines={"arms": ["sft"]})  # fmt: skip
    report = run_task(task)
    r1 = [s["name"] for s in report["steps"] if s["round"] == 1]
    i = r1.index("sample")
    assert r1[i : i + 6] == ["sample", "teacher-logprobs", "train-stage-1"] * 2, r1

    # Chunk 2 samples from chunk 1's adapter and trains from it: the chain is in SQL.
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    runs = {stage: (uri, json.loads(params)) for stage, uri, params in con.execute(
        "select stage, adapter_uri, params from training_runs where job_id=? and round=1", (report["job_id"],))}  # fmt: skip
    first_uri, first = runs["recipe-chunk-1"]
    last_uri, last = runs["recipe"]
    assert first["init_adapter"] is None and last["init_adapter"] == first_uri
    assert report["rounds"][0]["adapter_uri"] == last_uri and "baseline-sft" in runs

    round_dir = _artifacts(report) / "round-1"
    (samples2,) = round_dir.glob("opd-samples-2-*.jsonl")
    samples = loads_jsonl(samples2.read_bytes())
    train = loads_jsonl(next(round_dir.glob("select-*.jsonl")).read_bytes())
    assert {s["source_id"] for s in samples} == {r["id"] for r in train if not r.get("heldout")}
    # The samples are the chunk-1 student's own text, not the teacher's records.
    assert not {s["response"] for s in samples} & {r["response"] for r in train}
    tset = topk.loads(Path(unquote(urlparse(last["teacher"]["logprobs_uri"]).path)).read_bytes())
    _, tok = load_model(str(tiny_model_dir))
    before = _gap(_student(tiny_model_dir, first_uri, tmp_path / "chunk1"), tok, samples, tset)
    after = _gap(_student(tiny_model_dir, last_uri, tmp_path / "chunk2"), tok, samples, tset)
    assert after < 0.8 * before, (before, after)  # chunk 2 closes the gap chunk 1 left on its own samples


def test_two_teachers_share_the_expansion_by_car_and_each_teaches_its_own_records(
    run_task, stack: Stack, banking77_tiny, tiny_model_dir: Path, tiny_scorer_dir: Path
) -> None:
    from orchestrator.budget import budget_scales
    from orchestrator.types import MethodCar

    a, b = str(tiny_model_dir), str(tiny_scorer_dir)
    task = banking77_tiny(2, name="two-teachers", rounds=2, teachers=[{"model": a}, {"model": b}],
                          generate={"per_label": 2, "max_new_tokens": 8}, score={"metrics": ["compatibility"]},
                          select={"metric": "compatibility", "top_fraction": 1.0}, train={"epochs": 1, "batch_size": 4, "recipe": RECIPE})  # fmt: skip
    report = run_task(task)
    one, two = report["rounds"]

    # Round 1: both teachers expanded the seeds; each has its CAR from the student's scores, and round 2's
    # shares are those CARs normalised (CAR-weighted budget, as the methods' generate.budget car).
    round1 = _artifacts(report) / "round-1"
    generated = [r for p in round1.glob("generate-*.jsonl") if "-all-" not in p.name for r in loads_jsonl(p.read_bytes())]
    assert {r["provenance"]["model"] for r in generated} == {a, b}
    cars = {c["method"]: c for c in one["car"] if c["method"].startswith("teacher:")}
    assert set(cars) == {f"teacher:{a}", f"teacher:{b}"}
    want = budget_scales([MethodCar(**c) for c in cars.values()], list(cars))
    assert {k: v for k, v in two["budget"].items() if k.startswith("teacher:")} == pytest.approx(want)

    # kd routed per record source: each trained record's stored top-k is its own teacher's forward.
    (lp_path,) = round1.glob("teacher-logprobs-routed-*.npz")
    tset = topk.loads(lp_path.read_bytes())
    manifest = {m["model"]: m for m in json.loads(tset.teacher["teachers"])}
    assert set(manifest) == {a, b}
    trained = [r for r in loads_jsonl(next(round1.glob("select-*.jsonl")).read_bytes()) if not r.get("heldout")]
    by_source = {r["id"]: (r.get("provenance") or {}).get("model") or a for r in trained}  # seeds: the first teacher
    assert set(by_source.values()) == {a, b}
    models = {m: load_model(m) for m in (a, b)}
    for r in trained:
        model, tok = models[by_source[r["id"]]]
        ids, labels = encode_example(tok, r["prompt"], r["response"], 128)
        at = [t - 1 for t, lab in enumerate(labels) if lab != IGNORE_INDEX]
        with torch.no_grad():
            top1 = model(input_ids=torch.tensor([ids])).logits[0, at].argmax(-1)
        assert (tset.for_record(r["prompt"], r["response"], len(at)).ids[:, 0] == top1.numpy()).all(), r["id"]
    assert sum(int(m["records"]) for m in manifest.values()) == len(trained)

    # The adapter's run records both teachers (lineage and the report read it from there).
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    ((params,),) = con.execute("select params from training_runs where job_id=? and round=1 and stage='recipe'", (report["job_id"],)).fetchall()
    assert {m["model"] for m in json.loads(json.loads(params)["teacher"]["teachers"])} == {a, b}
