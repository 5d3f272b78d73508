"""Every method family of the task format through `syllabus run` on the real stack (tiny model).

Each job is one `syllabus run --json`; the assertions read the report, the job's artifacts and its
SQL rows. A selection is checked against scores recomputed in the test from the model's weights
(`scoring_oracle`), never against the job's own score artifacts, so a broken, constant or random
score fails it. The tiny random-init teacher writes no parseable rationale, so reasoning steps show up
here as what they dropped and why; the rule critique keeps enough generated examples for scoring,
selection and the recipes to work on real candidates. The model-based critique modes run on a
deterministic endpoint teacher instead, in test_critique_modes.py.
"""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from scoring_oracle import Oracle, assert_close, assert_top, compatibility, crowd_correct, learnability

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
        "name": "cola", "max_seq_len": 128, "row_tokens": 256, "checkpoint_every": 2, "log_batches": True,
        "stages": [
            {"name": "easy", "data": {"score_key": "loss_base_pct", "max_score": 0.5}, **STAGE, "after": "merge",
             "curriculum": {"policy": "static", "score_key": "loss_base"},
             "schedule": {"kind": "cosine", "warmup_ratio": 0.1, "final_lr_ratio": 0.3}},
            {"name": "hard", "data": {"score_key": "loss_base_pct", "min_score": 0.5, "replay": 0.2}, **STAGE,
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
        select={"policy": "diversity", "metric": "learnability", "top_fraction": 0.5, "n_clusters": 2, "reweight": "success_gap"},
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
                "learnability_pct", "loss_base", "loss_base_pct"):
        assert all(col in r for r in records), col
    assert {r["category"] for r in records} >= {"seed", "expand"}

    # The recipe ran as one checkpointed run; the trainer's per-stage record is in SQL.
    con = db(stack)
    runs = con.execute("select stage, metrics from training_runs where job_id=? and round=1", (report["job_id"],)).fetchall()
    stages = {s: json.loads(m) for s, m in runs}
    assert set(stages) == {"reference", "recipe"}
    assert [s["name"] for s in stages["recipe"]["stages"]] == ["easy", "hard"]
    # The batches the trainer saw (log_batches): the easy band (the student's lowest-loss half) first,
    # in ascending loss_base (static); then the hard band with a 20% replay of the easy records.
    by_id = {r["id"]: r for r in records}
    easy, hard = ([i for step in s["batches"] for i in step] for s in stages["recipe"]["stages"])
    assert easy and hard
    assert all(by_id[i]["loss_base_pct"] < 0.5 for i in easy)
    assert [by_id[i]["loss_base"] for i in easy] == sorted(by_id[i]["loss_base"] for i in easy)
    own = {i for i in hard if by_id[i]["loss_base_pct"] >= 0.5}
    replayed = set(hard) - own
    assert own and replayed <= set(easy) and len(replayed) == round(0.2 * len(own))
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

    # No pairs, so no aligned teacher: round 2 generated with the untailored teacher, as its provenance says.
    gen2 = [r for p in (artifacts(report) / "round-2").glob("generate-*.jsonl") for r in loads_jsonl(p.read_bytes())]
    assert gen2 and all(r["provenance"]["round"] == 2 and "adapter" not in r["provenance"] for r in gen2)


def scores_of(report: dict, r: int = 1) -> dict[str, dict]:
    (path,) = [p for p in (artifacts(report) / f"round-{r}").glob("scores-*.jsonl")]
    return {row["id"]: row for row in loads_jsonl(path.read_bytes())}




def _selected(report: dict) -> list[str]:
    rows = train_set(report)
    return [r["id"] for r in rows if r["category"] not in ("seed", "heldout")]


def scored_records(report: dict, r: int = 1) -> dict[str, dict]:
    """The records the round's score step read (candidates and seeds, with prompt and response)."""
    (path,) = [p for p in (artifacts(report) / f"round-{r}").glob("score-input-*.jsonl")]
    return {row["id"]: row for row in loads_jsonl(path.read_bytes())}


def candidates_of(records: dict[str, dict]) -> list[str]:
    return [i for i, r in records.items() if r["category"] != "seed"]


def column(report: dict, name: str, ids) -> dict[str, float]:
    scores = scores_of(report)
    return {i: scores[i][name] for i in ids}


def recipe_stages(stack: Stack, report: dict) -> list[dict]:
    query = "select metrics from training_runs where job_id=? and stage='recipe'"
    (metrics,) = db(stack).execute(query, (report["job_id"],)).fetchone()
    return json.loads(metrics)["stages"]


def test_top_k_by_a_small_scorers_loss_form_ifd_and_an_sec_curriculum(
    run_task, stack: Stack, banking77_tiny, tiny_model_dir: Path, tiny_scorer_dir: Path, tmp_path: Path
) -> None:
    """Superfiltering + Cherry: IFD and r-IFD on `score.model` (another tiny model), ranked in the
    loss form; the IFD > 1 candidates are dropped, then the k highest IFD train. The scores are
    recomputed here from the scorer's weights, so random, constant or student-computed scores fail."""
    recipe = {"stages": [{**STAGE, "curriculum": {"policy": "sec", "arm_key": "category", "sec_tau": 0.5}}], "batch_size": 4,
              "log_batches": True}
    score = {"metrics": ["ifd", "rifd"], "model": {"model": str(tiny_scorer_dir)}, "ifd_ratio": "loss"}
    task = banking77_tiny(2, name="topk-sec", generate={"per_label": 3, "max_new_tokens": 12}, score=score,
                          select={"policy": "top_k", "metric": "ifd", "k": 2}, train={**TRAIN, "recipe": recipe})  # fmt: skip
    report = run_task(task)
    (one,) = report["rounds"]
    records = scored_records(report)
    scorer, student = Oracle(tiny_scorer_dir), Oracle(tiny_model_dir)
    ifd = {i: scorer.ifd(r["prompt"], r["response"], "loss") for i, r in records.items()}
    assert_close(column(report, "ifd_loss", records), ifd)
    assert_close(column(report, "ifd_ppl", records), {i: scorer.ifd(r["prompt"], r["response"]) for i, r in records.items()})
    assert_close(column(report, "rifd_ppl", records), {i: scorer.rifd(r["prompt"], r["response"]) for i, r in records.items()})
    # The scorer's IFD, not the student's (the two models' IFDs are far apart), and SQL names the
    # scorer as the model behind the column.
    by_student = {i: student.ifd(r["prompt"], r["response"], "loss") for i, r in records.items()}
    assert max(abs(ifd[i] - by_student[i]) for i in records) > 0.01
    models = db(stack).execute("select distinct model from scores where job_id=? and metric='ifd_loss'", (report["job_id"],)).fetchall()
    assert models == [(str(tiny_scorer_dir),)]

    candidates = candidates_of(records)
    pool = {i: ifd[i] for i in candidates if ifd[i] <= 1.0}
    assert one["selection_dropped"].get("ifd_above_1", 0) == len(candidates) - len(pool)
    assert pool, "every candidate has IFD > 1 under the scorer: nothing left to rank"
    assert_top(_selected(report), pool, 2)  # the k highest IFD (loss form) among IFD <= 1, best first
    assert one["selected"] == len(_selected(report))
    assert names(report, 1)[-2:] == ["train-stage-1", "evaluate"]
    (stage,) = recipe_stages(stack, report)
    assert stage["steps"] > 0 and len(stage["batches"]) == len(stage["trace"]) == stage["steps"]
    # SEC on the trainer's own log: p = softmax(Q / 0.5) before every step, Q <- 0.5 Q + 0.5 r with r
    # the arm's mean loss drop over the step (0 for an arm not drawn), every batch from arms p allows.
    category = {r["id"]: r["category"] for r in train_set(report)}
    arms = stage["trace"][0]["arms"]
    assert arms == sorted({category[i] for step in stage["batches"] for i in step} | set(arms))
    q = [0.0] * len(arms)
    for batch, tr in zip(stage["batches"], stage["trace"], strict=True):
        e = [math.exp(x / 0.5) for x in q]
        assert tr["q"] == pytest.approx(q) and tr["probs"] == pytest.approx([x / sum(e) for x in e])
        assert sorted(batch) == sorted(tr["items"])
        drops: dict[str, list[float]] = {}
        for rec, before, after in zip(tr["items"], tr["loss_before"], tr["loss_after"], strict=True):
            drops.setdefault(category[rec], []).append(before - after)
        q = [0.5 * qc + 0.5 * (sum(drops[a]) / len(drops[a]) if a in drops else 0.0) for qc, a in zip(q, arms, strict=True)]
    # `syllabus export` of a recipe-trained round: exactly the records trained on, as trained.
    out = tmp_path / "export.jsonl"
    exported = subprocess.run([*SYLLABUS, "export", report["job_id"], "--round", "1", "-o", str(out)], check=False,
                              env=config_env(stack.config), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    trained = {r["id"]: (r["prompt"], r["response"]) for r in train_set(report)}
    assert {r["id"]: (r["prompt"], r["response"]) for r in loads_jsonl(out.read_bytes())} == trained


def test_threshold_on_the_students_rifd_and_an_adarft_curriculum(
    run_task, stack: Stack, banking77_tiny, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Every candidate whose reverse IFD under the student is <= the threshold, lowest first,
    recomputed here. The random-init student's r-IFDs lie within about 1 +- 0.02, so the threshold
    sits inside that range (at 1.0 one candidate would pass, by 5e-5)."""
    recipe = {"stages": [{**STAGE, "steps": 3, "curriculum": {"policy": "adarft", "score_key": "difficulty100"}}], "batch_size": 2,
              "log_batches": True}
    task = banking77_tiny(2, name="threshold-adarft", generate={"per_label": 3, "max_new_tokens": 12},
                          score={"metrics": ["rifd", "difficulty"]},
                          select={"policy": "threshold", "metric": "rifd", "threshold": 1.005, "ascending": True},
                          train={**TRAIN, "recipe": recipe})  # fmt: skip
    report = run_task(task)
    records = scored_records(report)
    student = Oracle(tiny_model_dir)
    rifd = {i: student.rifd(r["prompt"], r["response"]) for i, r in records.items()}
    assert_close(column(report, "rifd_ppl", records), rifd)
    candidates = candidates_of(records)
    passing = {i: rifd[i] for i in candidates if rifd[i] <= 1.005}
    assert 0 < len(passing) < len(candidates), f"the threshold should split the candidates: {rifd}"
    chosen = _selected(report)
    assert set(chosen) == set(passing)
    assert_top(chosen, passing, len(passing), descending=False)
    # PUDF's artificial crowd in round 1 is the base student and the round's reference adapter: each
    # member's label choice, recomputed here, gives crowd_correct; 1PL's difficulty falls as it rises.
    query = "select adapter_uri from training_runs where job_id=? and round=1 and stage='reference'"
    ((reference_uri,),) = db(stack).execute(query, (report["job_id"],)).fetchall()
    crowd = [student, Oracle(tiny_model_dir, Path(unquote(urlparse(reference_uri).path)), tmp_path)]
    correct = {i: crowd_correct(crowd, r["prompt"], r["label"], task["labels"]) for i, r in records.items()}
    assert column(report, "crowd_correct", records) == correct
    b = column(report, "irt_difficulty", records)
    assert all(b[i] > b[j] for i in records for j in records if correct[i] < correct[j]), (b, correct)
    # AdaRFT's difficulty is 100 * (1 - the crowd's success rate), on every training record.
    train = train_set(report)
    assert all(r["difficulty100"] == pytest.approx(100 * (1 - correct[r["id"]] / len(crowd))) for r in train)
    (stage,) = recipe_stages(stack, report)
    assert stage["steps"] == 3 and len(stage["batches"]) == 3
    # The first batch the trainer saw: the 2 records nearest the initial target T0 = 0 (the easiest;
    # ties by dataset order), not a shuffle's draw.
    pool = [(r["difficulty100"], n, r["id"]) for n, r in enumerate(train) if not r.get("heldout")]
    assert sorted(stage["batches"][0]) == sorted(i for _, _, i in sorted(pool)[:2])
    # Every step, from the trainer's log: the batch is the 2 nearest the target T, and
    # T <- clip(T + 50 tanh(2 (R - 0.5)), 0, 100), R = the batch's mean exp(-loss) (the defaults).
    t = 0.0
    for batch, tr in zip(stage["batches"], stage["trace"], strict=True):
        assert tr["target"] == pytest.approx(t)
        assert sorted(batch) == sorted(i for _, _, i in sorted(pool, key=lambda p: (abs(p[0] - t), p[1]))[:2])
        r_avg = sum(math.exp(-x) for x in tr["loss_before"]) / len(tr["loss_before"])
        t = min(100.0, max(0.0, t + 50 * math.tanh(2 * (r_avg - 0.5))))


def test_random_selection_after_the_ifd_filter_and_a_pudf_curriculum(
    run_task, stack: Stack, banking77_tiny, tiny_scorer_dir: Path, tmp_path: Path
) -> None:
    """The IFD > 1 filter (on the scorer, whose IFDs lie on both sides of 1) before a random sample:
    exactly the candidates the recomputed IFD drops are dropped, and the sample is of the rest."""
    recipe = {"stages": [{**STAGE, "epochs": 2, "curriculum": {"policy": "pudf", "score_key": "irt_b"}}]}
    base = banking77_tiny(2)
    # PUDF's held-out split: validation items that are neither seeds nor eval items.
    validation = [{"input": "Has my new card been sent out yet?", "label": "card_arrival"},
                  {"input": "How long until the card gets delivered?", "label": "card_arrival"},
                  {"input": "My wallet with my card inside was stolen", "label": "lost_or_stolen_card"},
                  {"input": "I can't find my card anywhere, please block it", "label": "lost_or_stolen_card"}]  # fmt: skip
    assert not {v["input"] for v in validation} & {e["input"] for e in base["seeds"] + base["eval"]}
    task = banking77_tiny(2, name="random-pudf", validation=validation, generate={"per_label": 3, "max_new_tokens": 12},
                          score={"metrics": ["ifd", "difficulty"], "model": {"model": str(tiny_scorer_dir)}},
                          select={"policy": "random", "top_fraction": 0.5, "ifd_filter": True, "seed": 3},
                          train={**TRAIN, "recipe": recipe})  # fmt: skip
    report = run_task(task)
    (one,) = report["rounds"]
    records = scored_records(report)
    scorer = Oracle(tiny_scorer_dir)
    ifd = {i: scorer.ifd(records[i]["prompt"], records[i]["response"]) for i in candidates_of(records)}
    assert_close(column(report, "ifd_ppl", ifd), ifd)
    kept = {i for i, v in ifd.items() if v <= 1.0}
    assert 0 < len(kept) < len(ifd), f"the filter needs candidates on both sides of IFD 1: {ifd}"
    chosen = _selected(report)
    assert one["selection_dropped"]["ifd_above_1"] == len(ifd) - len(kept)
    assert set(chosen) <= kept and len(chosen) == -(-len(kept) // 2)  # half of what the filter kept
    records = train_set(report)
    heldout = [r for r in records if r.get("heldout")]
    # The validation items are scored, flagged and never trained on.
    assert len(heldout) == len(validation) and all(r["id"].startswith("heldout:") and "irt_b" in r for r in heldout)
    assert {r["input"] for r in heldout} == {v["input"] for v in validation}
    (stage,) = recipe_stages(stack, report)
    assert stage["probe"] == "heldout" and stage["probe_size"] == len(heldout)
    assert len(stage["abilities"]) >= 2  # before the first epoch, then after epochs
    trained = {i for (i,) in db(stack).execute(
        "select s.sample_id from training_run_samples s join training_runs t on s.training_run_id = t.id"
        " where t.job_id=? and t.stage='recipe'",
        (report["job_id"],))}  # fmt: skip
    assert trained and not any(i.startswith("heldout:") for i in trained)


def test_weighted_mix_of_learnability_ifd_and_compatibility_and_a_shuffled_baseline(
    run_task, stack: Stack, banking77_tiny, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """LoBaSS learnability (base vs the round's reference adapter), IFD and compatibility, all recomputed here
    from the weights; the selection is the top half by the recomputed z-score mix."""
    recipe = {"stages": [{**STAGE, "curriculum": {"policy": "shuffled"}}]}
    task = banking77_tiny(2, name="mix-shuffled", generate={"per_label": 3, "max_new_tokens": 12},
                          score={"metrics": ["learnability", "ifd", "compatibility"]},
                          select={"policy": "top_fraction", "top_fraction": 0.5, "weights": {"learnability": 1.0, "ifd": 0.5, "compatibility": 0.5}},
                          train={**TRAIN, "recipe": recipe})  # fmt: skip
    report = run_task(task)
    records = scored_records(report)
    query = "select adapter_uri from training_runs where job_id=? and round=1 and stage='reference'"
    ((reference_uri,),) = db(stack).execute(query, (report["job_id"],)).fetchall()
    base = Oracle(tiny_model_dir)
    reference = Oracle(tiny_model_dir, Path(unquote(urlparse(reference_uri).path)), tmp_path)
    pairs = {i: (r["prompt"], r["response"]) for i, r in records.items()}
    want = {
        "learnability": {i: learnability(base, reference, *pr) for i, pr in pairs.items()},
        "ifd_ppl": {i: base.ifd(*pr) for i, pr in pairs.items()},  # round 1: the current student is the base
        "compatibility": {i: compatibility(base, *pr) for i, pr in pairs.items()},
    }
    for name, values in want.items():
        assert_close(column(report, name, records), values)
    assert max(want["learnability"].values()) - min(want["learnability"].values()) > 1e-4  # the reference learnt something

    # Cherry's IFD > 1 filter first (IFD is in the weights), then sum of w * z-score over what is left.
    pool = [i for i in candidates_of(records) if want["ifd_ppl"][i] <= 1.0]
    assert pool

    def z(name: str) -> dict[str, float]:
        xs = [want[name][i] for i in pool]
        mean, sd = statistics.fmean(xs), statistics.pstdev(xs) or 1.0
        return {i: (want[name][i] - mean) / sd for i in pool}

    zl, zi, zc = z("learnability"), z("ifd_ppl"), z("compatibility")
    mix = {i: zl[i] + 0.5 * zi[i] + 0.5 * zc[i] for i in pool}
    assert_top(_selected(report), mix, -(-len(pool) // 2))
