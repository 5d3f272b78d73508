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

from orchestrator.stack import Stack, config_env
from syllabus.records import loads_jsonl

pytestmark = pytest.mark.e2e
SYLLABUS = [sys.executable, "-m", "orchestrator.cli"]

TRAIN = {"epochs": 1, "batch_size": 4}
STAGE = {"epochs": 1, "lr": 5.0e-4, "lora": {"rank": 4, "alpha": 8}}


def artifacts(report: dict) -> Path:
    return Path(unquote(urlparse(report["artifacts_uri"]).path))


def train_set(report: dict, r: int = 1) -> list[dict]:
    (path,) = [p for p in (artifacts(report) / f"round-{r}").glob("select-*.jsonl")]
    return loads_jsonl(path.read_bytes())


def names(report: dict, r: int) -> list[str]:
    return [s["name"] for s in report["steps"] if s["round"] == r]


def db(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(str(stack.config.home / "syllabus.db"))


def test_every_generate_mode_metric_diversity_chain_of_lora_and_tailoring(run_task, stack: Stack, banking77_tiny, tmp_path: Path) -> None:
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
    # ARTE's probe bank and error analysis read a validation split disjoint from the seeds they train on.
    bank = loads_jsonl((Path(__file__).resolve().parents[2] / "examples/banking77/data/validation.jsonl").read_bytes())
    task = banking77_tiny(
        2,
        name="everything",
        rounds=2,
        validation=[v for v in bank if v["label"] in ("card_arrival", "lost_or_stolen_card")][::2],
        generate={"max_new_tokens": 12, "modes": [
            {"mode": "expand", "per_label": 3},
            {"mode": "rationales", "styles": ["step_by_step", "concise"], "max_questions": 2, "max_new_tokens": 16},
            {"mode": "rft", "k": 2, "max_questions": 2, "max_new_tokens": 16},
            {"mode": "targeted", "per_skill": 1},
        ]},
        score={"metrics": ["learnability", "ifd", "rifd", "preference", "compatibility", "difficulty"], "probe_k": 2, "probe_max_new_tokens": 4},
        select={"policy": "diversity", "metric": "learnability", "top_fraction": 0.5, "n_clusters": 2},
        train={**TRAIN, "recipe": recipe},
        tailor={"every": 1, "questions": 2, "draft_max_new_tokens": 16, "probe_k": 2, "probe_max_new_tokens": 4, "batch_size": 2},
    )  # fmt: skip
    report = run_task(task)

    r1 = names(report, 1)
    assert r1[:6] == ["generate", "critique", "rationales", "rft", "reference-train", "score"]
    assert r1[6:9] == ["select", "train-stage-1", "train-stage-2"]
    assert "evaluate" in r1 and "tailor" in r1 and r1.index("tailor") > r1.index("evaluate")
    assert "tailor" not in names(report, 2)  # never after the last round
    # Error-driven generation: round 1's confusions on the validation split feed round 2's targeted mode.
    assert r1[r1.index("evaluate") + 1 : r1.index("evaluate") + 3] == ["validation-eval", "analyze"]
    assert list((artifacts(report) / "round-2").glob("generate-targeted-*.jsonl"))
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
    for col in ("learnability", "ifd_ppl", "rifd_ppl", "arte_s_r", "compatibility", "irt_difficulty", "irt_b", "difficulty100",
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
    assert {"learnability", "ifd_ppl", "rifd_ppl", "arte_s_r", "compatibility", "irt_difficulty"} <= scored
    # CAR per generation method: r = kept / produced (the critique's and the verifiers' acceptance), L the
    # mean base-student loss of the kept records, as the round's score artifact and counts give them.
    car = {c["method"]: c for c in one["car"]}
    assert set(car) >= {"expand", "rationales", "rft"}
    assert car["expand"]["produced"] == one["generated"] - one["targeted"]
    for m in ("rationales", "rft"):
        assert car[m]["produced"] == one["reasoning"][m]["written"]
    (inputs,) = (artifacts(report) / "round-1").glob("score-input-*.jsonl")
    columns = scores_of(report)
    for m, c in car.items():
        mine = [r["id"] for r in loads_jsonl(inputs.read_bytes()) if r["category"] == m]
        assert c["kept"] == len(mine) and c["reward"] == pytest.approx(c["kept"] / c["produced"])
        assert c["car"] == pytest.approx(c["reward"] / (1 + c["loss"]))  # car_beta 1
        # Compatibility is 1 / (1 + L) per record, so L comes back from it: CAR's L is the kept records' mean.
        losses = [1 / columns[i]["compatibility"] - 1 for i in mine]
        assert c["loss"] == pytest.approx(sum(losses) / len(losses) if losses else 0.0, rel=1e-6, abs=1e-9)

    # Dpref's 2PL crowd answered the validation split in round 1: the base student, the round's LoBaSS
    # reference (for the preference score) and the round's adapter (for tailoring).
    crowd: dict[int, set[str]] = {}
    for rnd, uri in con.execute("select round, adapter_uri from evaluations where job_id=? and stage like 'arte-crowd%'", (report["job_id"],)):
        crowd.setdefault(rnd, set()).add(uri)
    assert len(crowd[1]) == 3 and "" in crowd[1] and one["adapter_uri"] in crowd[1]

    # Round 2 generated with the aligned teacher: its examples' provenance names the adapter.
    gen2 = [p for p in (artifacts(report) / "round-2").glob("generate-*.jsonl")]
    assert gen2


def scores_of(report: dict, r: int = 1) -> dict[str, dict]:
    (path,) = [p for p in (artifacts(report) / f"round-{r}").glob("scores-*.jsonl")]
    return {row["id"]: row for row in loads_jsonl(path.read_bytes())}


def candidate_ids(report: dict, r: int = 1) -> list[str]:
    """Ids of the round's candidates (what critique and reasoning kept)."""
    return [row["id"] for row in train_set(report, r) if row["category"] not in ("seed", "heldout")] + [
        i for i, row in scores_of(report, r).items() if i not in {t["id"] for t in train_set(report, r)}
    ]


MODEL_STEPS = {"judge": ["cft_critique"], "cft": ["cft_critique"], "rubric": ["rubric", "rubric_revision"],
               "reflection": ["reflection"]}  # fmt: skip


@pytest.mark.parametrize("mode", ["judge", "cft", "rubric", "reflection"])
def test_model_critique_modes_parse_every_reply_and_follow_it(run_task, stack: Stack, banking77_tiny, tmp_path: Path, mode: str) -> None:
    """Past the rule filter, each model-based mode asks the teacher about every example. Under
    structured output (each step's JSON schema enforced while decoding) even the tiny random teacher's
    replies all parse, so the keep paths run: the loop keeps exactly what the replies say to keep."""
    select = {"policy": "reflection"} if mode == "reflection" else {"metric": "ifd"}
    train = dict(TRAIN)
    if mode == "cft":  # Critique Fine-Tuning as a recipe stage on the critique records, all of them selected
        select = {"metric": "ifd", "top_fraction": 1.0, "ifd_filter": False}
        train["recipe"] = {"stages": [{**STAGE, "data": {"categories": ["seed", "expand"]}},
                                      {**STAGE, "objective": "cft", "data": {"categories": ["cft"]}}]}  # fmt: skip
    task = banking77_tiny(2, name=f"critique-{mode}", generate={"per_label": 2, "max_new_tokens": 12},
                          critique={"mode": mode, "retries": 1, "max_new_tokens": 160},
                          score={"metrics": ["ifd"]}, select=select, train=train)  # fmt: skip
    report = run_task(task)
    (one,) = report["rounds"]
    assert "critique" in names(report, 1)
    dropped = one["critique_dropped"]
    assert sum(dropped.values()) == one["generated"] - one["kept"]
    rows = db(stack).execute("select sample_id, keep, reason, mode from critiques where job_id=?", (report["job_id"],)).fetchall()
    assert {m for *_, m in rows} == {mode}
    rule_codes = ("too_short", "too_long", "empty", "copies_seed", "duplicate", "label_not_in_task")
    rule_kept = one["generated"] - sum(n for code, n in dropped.items() if code in rule_codes)
    assert rule_kept > 0, "the rule filter kept nothing: the teacher was never asked"

    # Every reply parsed, at once or on its retry, and the report says so per step.
    parsing = one["parsing"]
    assert sorted(parsing) == MODEL_STEPS[mode], parsing
    assert all(c["unparsable"] == 0 and c["parsed"] == c["replies"] for c in parsing.values()), parsing
    assert parsing[MODEL_STEPS[mode][-1]]["replies"] == rule_kept
    assert "unparsable" not in dropped
    (critiques,) = [p for p in (artifacts(report) / "round-1").glob(f"critique-{mode}-*-critiques.jsonl")]
    replies = {r["id"]: r for r in loads_jsonl(critiques.read_bytes()) if r["provenance"]["method"] != "rubric"}
    assert len(replies) == rule_kept and all(r["status"] == "ok" for r in replies.values())
    model_rows = {sid: (keep, reason) for sid, keep, reason, _ in rows if sid in replies}
    assert set(model_rows) == set(replies)

    if mode in ("judge", "cft"):
        # Kept exactly when the teacher's verdict is "right", with its critique as the reason.
        for sid, (keep, reason) in model_rows.items():
            verdict, critique = replies[sid]["verdict"], replies[sid]["critique"]
            assert keep == (verdict == "right") and reason.startswith(f"judge_{verdict}: ")
            assert critique.split()[0] in reason
        assert one["kept"] == sum(r["verdict"] == "right" for r in replies.values())
    elif mode == "rubric":
        # A revision keeps its example only when it names exactly one label.
        for sid, (keep, reason) in model_rows.items():
            assert keep == reason.startswith(("rubric_confirmed", "rubric_relabelled")), reason
    else:
        kept_rows = [reason for keep, reason in model_rows.values() if keep]
        assert all(reason.startswith("reflected: ") for reason in kept_rows)
        assert one["kept"] == len(kept_rows)
    if mode != "cft":
        return
    # Every parsed critique is a cft training record, so the cft stage trains (> 0 steps).
    assert names(report, 1)[-3:] == ["train-stage-1", "train-stage-2", "evaluate"]
    (metrics,) = db(stack).execute("select metrics from training_runs where job_id=? and stage='recipe'", (report["job_id"],)).fetchone()
    assert [st["steps"] > 0 for st in json.loads(metrics)["stages"]] == [True, True]
    assert one["candidates"] == one["kept"] + rule_kept  # the kept examples and one critique record each
    cft_rows = [r for r in train_set(report) if r["category"] == "cft"]
    assert len(cft_rows) == rule_kept and all(r["response"].endswith(("Conclusion: right", "Conclusion: wrong")) for r in cft_rows)


def _selected(report: dict) -> list[str]:
    rows = train_set(report)
    return [r["id"] for r in rows if r["category"] not in ("seed", "heldout")]


def test_top_k_selection_and_an_sec_curriculum(run_task, stack: Stack, banking77_tiny, tmp_path: Path) -> None:
    recipe = {"stages": [{**STAGE, "curriculum": {"policy": "sec", "arm_key": "category", "sec_tau": 0.5}}], "batch_size": 4}
    task = banking77_tiny(2, name="topk-sec", generate={"per_label": 3, "max_new_tokens": 12},
                          score={"metrics": ["ifd"]}, select={"policy": "top_k", "metric": "ifd", "k": 2},
                          train={**TRAIN, "recipe": recipe})  # fmt: skip
    report = run_task(task)
    scores = scores_of(report)
    chosen = _selected(report)
    kept = [i for i in scores if i not in {r["id"] for r in train_set(report) if r["category"] == "seed"}]
    assert len(chosen) == min(2, len(kept)) and report["rounds"][0]["selected"] == len(chosen)
    best = sorted(kept, key=lambda i: (-scores[i]["ifd_ppl"], i))[: len(chosen)]
    assert chosen == best  # the k highest IFD, best first
    assert names(report, 1)[-2:] == ["train-stage-1", "evaluate"]
    (metrics,) = db(stack).execute("select metrics from training_runs where job_id=? and stage='recipe'", (report["job_id"],)).fetchone()
    (stage,) = json.loads(metrics)["stages"]
    assert stage["steps"] > 0
    # `syllabus export` of a recipe-trained round: exactly the records trained on, as trained.
    out = tmp_path / "export.jsonl"
    exported = subprocess.run([*SYLLABUS, "export", report["job_id"], "--round", "1", "-o", str(out)], check=False,
                              env=config_env(stack.config), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    trained = {r["id"]: (r["prompt"], r["response"]) for r in train_set(report)}
    assert {r["id"]: (r["prompt"], r["response"]) for r in loads_jsonl(out.read_bytes())} == trained


def test_threshold_selection_and_an_adarft_curriculum(run_task, stack: Stack, banking77_tiny, tmp_path: Path) -> None:
    recipe = {"stages": [{**STAGE, "steps": 3, "curriculum": {"policy": "adarft", "score_key": "difficulty100"}}], "batch_size": 2}
    task = banking77_tiny(2, name="threshold-adarft", generate={"per_label": 3, "max_new_tokens": 12},
                          score={"metrics": ["ifd", "difficulty"]},
                          select={"policy": "threshold", "metric": "ifd", "threshold": 1.0, "ascending": True},
                          train={**TRAIN, "recipe": recipe})  # fmt: skip
    report = run_task(task)
    scores = scores_of(report)
    records = train_set(report)
    seeds = {r["id"] for r in records if r["category"] == "seed"}
    expected = sorted((i for i, row in scores.items() if i not in seeds and row["ifd_ppl"] <= 1.0), key=lambda i: (scores[i]["ifd_ppl"], i))
    assert _selected(report) == expected
    # AdaRFT's difficulty is 100 * (1 - the crowd's success rate), on every training record.
    assert all(r["difficulty100"] == pytest.approx(100 * (1 - r["success_rate"])) for r in records)
    (metrics,) = db(stack).execute("select metrics from training_runs where job_id=? and stage='recipe'", (report["job_id"],)).fetchone()
    assert json.loads(metrics)["stages"][0]["steps"] == 3


def test_random_selection_after_the_ifd_filter_and_a_pudf_curriculum(run_task, stack: Stack, banking77_tiny, tmp_path: Path) -> None:
    recipe = {"stages": [{**STAGE, "epochs": 2, "curriculum": {"policy": "pudf", "score_key": "irt_b"}}]}
    base = banking77_tiny(2)
    # PUDF's held-out split: validation items that are neither seeds nor eval items.
    validation = [{"input": "Has my new card been sent out yet?", "label": "card_arrival"},
                  {"input": "How long until the card gets delivered?", "label": "card_arrival"},
                  {"input": "My wallet with my card inside was stolen", "label": "lost_or_stolen_card"},
                  {"input": "I can't find my card anywhere, please block it", "label": "lost_or_stolen_card"}]  # fmt: skip
    assert not {v["input"] for v in validation} & {e["input"] for e in base["seeds"] + base["eval"]}
    task = banking77_tiny(2, name="random-pudf", validation=validation, generate={"per_label": 3, "max_new_tokens": 12},
                          score={"metrics": ["ifd", "difficulty"]},
                          select={"policy": "random", "top_fraction": 0.5, "ifd_filter": True, "seed": 3},
                          train={**TRAIN, "recipe": recipe})  # fmt: skip
    report = run_task(task)
    (one,) = report["rounds"]
    scores = scores_of(report)
    records = train_set(report)
    heldout = [r for r in records if r.get("heldout")]
    # The validation items are scored, flagged and never trained on.
    assert len(heldout) == len(validation) and all(r["id"].startswith("heldout:") and "irt_b" in r for r in heldout)
    assert {r["input"] for r in heldout} == {v["input"] for v in validation}
    chosen = _selected(report)
    assert all(scores[i]["ifd_ppl"] <= 1.0 for i in chosen)
    assert one["selection_dropped"].get("ifd_above_1", 0) + len(chosen) + one["selection_dropped"].get("not_selected", 0) == one["candidates"]
    con = db(stack)
    (metrics,) = con.execute("select metrics from training_runs where job_id=? and stage='recipe'", (report["job_id"],)).fetchone()
    (stage,) = json.loads(metrics)["stages"]
    assert stage["probe"] == "heldout" and stage["probe_size"] == len(heldout)
    assert len(stage["abilities"]) >= 2  # before the first epoch, then after epochs
    trained = {i for (i,) in con.execute(
        "select s.sample_id from training_run_samples s join training_runs t on s.training_run_id = t.id"
        " where t.job_id=? and t.stage='recipe'",
        (report["job_id"],))}  # fmt: skip
    assert trained and not any(i.startswith("heldout:") for i in trained)


def test_weighted_mix_selection_and_a_shuffled_baseline(run_task, stack: Stack, banking77_tiny, tmp_path: Path) -> None:
    recipe = {"stages": [{**STAGE, "curriculum": {"policy": "shuffled"}}]}
    task = banking77_tiny(2, name="mix-shuffled", generate={"per_label": 3, "max_new_tokens": 12},
                          score={"metrics": ["learnability", "ifd", "compatibility"]},
                          select={"policy": "top_fraction", "top_fraction": 0.5, "weights": {"learnability": 1.0, "ifd": 0.5, "compatibility": 0.5}},
                          train={**TRAIN, "recipe": recipe})  # fmt: skip
    report = run_task(task)
    scores = scores_of(report)
    chosen = _selected(report)
    seeds = {r["id"] for r in train_set(report) if r["category"] == "seed"}
    kept = [i for i in scores if i not in seeds]
    # Recompute the mix by hand: sum of w * z-score over the candidates.
    import statistics

    def z(col: str) -> dict[str, float]:
        xs = [scores[i][col] for i in kept]
        mean, sd = statistics.fmean(xs), statistics.pstdev(xs) or 1.0
        return {i: (scores[i][col] - mean) / sd for i in kept}

    zl, zi, zc = z("learnability"), z("ifd_ppl"), z("compatibility")
    mix = {i: zl[i] + 0.5 * zi[i] + 0.5 * zc[i] for i in kept}
    assert chosen == sorted(kept, key=lambda i: (-mix[i], i))[: len(chosen)]
    assert len(chosen) == -(-len(kept) // 2)
