"""The answer kinds through `syllabus run` on the real stack (tiny model): question expansion, answers
from rationales, RFT on gold answers, scoring, selection and evaluation by the kind's match."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from orchestrator.stack import Stack
from syllabus.answers import extract_number, stated_answer
from syllabus.records import content_id, loads_jsonl

pytestmark = pytest.mark.e2e
SYLLABUS = [sys.executable, "-m", "orchestrator.cli"]
SVAMP = Path(__file__).resolve().parents[2] / "examples" / "svamp" / "data"


def svamp(n: int, split: str, solutions: bool = False) -> list[dict]:
    """The first `n` problems of the SVAMP example's split (seeds keep their worked solution if asked)."""
    rows = loads_jsonl((SVAMP / f"{split}.jsonl").read_bytes())[:n]
    return [r if solutions else {"input": r["input"], "answer": r["answer"]} for r in rows]


@pytest.mark.parametrize("kind", ["numeric", "exact_answer"])
def test_an_answer_kind_runs_the_loop(run_task, stack: Stack, tiny_model_dir: Path, tmp_path: Path, kind: str) -> None:
    task = {
        "name": f"kind-{kind}", "kind": kind, "instructions": "Solve the arithmetic word problem.",
        "seeds": svamp(4, "seeds", solutions=kind == "numeric"), "validation": svamp(3, "validation"), "eval": svamp(4, "eval"),
        "teacher": {"model": str(tiny_model_dir)}, "student": {"model": str(tiny_model_dir)}, "rounds": 1,
        "generate": {"max_new_tokens": 16, "modes": [
            {"mode": "expand", "per_label": 3},
            {"mode": "rationales", "styles": ["step_by_step", "symbolic"], "max_questions": 4, "max_new_tokens": 16},
            {"mode": "rft", "k": 2, "max_questions": 2, "max_new_tokens": 16},
        ]},
        "score": {"metrics": ["ifd", "preference"], "probe_k": 2, "probe_max_new_tokens": 4},
        "train": {"epochs": 1, "batch_size": 4}, "evaluate": {"max_new_tokens": 8},
    }  # fmt: skip
    if kind == "numeric":  # two rounds: error analysis by the teacher feeds targeted questions
        task["rounds"] = 2
        task["generate"]["modes"].append({"mode": "targeted", "per_skill": 1})
    report = run_task(task)
    steps = [s["name"] for s in report["steps"] if s["round"] == 1]
    assert steps[:4] == ["generate", "critique", "rationales", "rft"]
    one = report["rounds"][0]
    prefix = Path(unquote(urlparse(report["artifacts_uri"]).path))
    (generated,) = list((prefix / "round-1").glob("generate-*.jsonl"))
    questions = loads_jsonl(generated.read_bytes())
    # The teacher wrote new questions, without answers, and no label set was involved.
    assert questions and all(q["label"] == "" and q["provenance"]["method"] == "question_expansion" for q in questions)
    # Rationales for the seeds and the kept questions; RFT only on gold-answer questions (the seeds).
    assert one["reasoning"]["rationales"]["written"] == 2 * min(4, 4 + one["kept"])
    assert one["reasoning"]["rft"]["written"] == 2 * 2
    # Nothing unanswered trains: every training record has an answer, the seeds' in the kind's form.
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    trained = {i for (i,) in con.execute("select s.sample_id from training_run_samples s join training_runs t on"
                                          " s.training_run_id = t.id where t.job_id=? and t.stage='sft'", (report["job_id"],))}  # fmt: skip
    q_ids = {q["id"] for q in questions}
    assert trained and not trained & q_ids
    if kind == "numeric":  # a seed trains on its worked solution, then its answer line
        (dataset_uri,) = con.execute("select dataset_uri from training_runs where job_id=? and stage='sft' and round=1", (report["job_id"],)).fetchone()
        records = {r["id"]: r for r in loads_jsonl(Path(unquote(urlparse(dataset_uri).path)).read_bytes())}
        for seed in task["seeds"]:
            assert records[content_id(seed["input"], seed["answer"])]["response"] == f"{seed['solution']}\nAnswer: {seed['answer']}"
    # Evaluation generated answers and matched them by the kind's rule.
    evaluations = [loads_jsonl(p.read_bytes()) for p in (prefix / "round-1").glob("evaluate-*.jsonl")]
    (rows,) = [rows for rows in evaluations if len(rows) == 4]  # the eval set's (the validation split has 3)
    assert all("generation" in r for r in rows)
    assert report["rounds"][0]["accuracy"] == sum(r["correct"] for r in rows) / 4

    if kind == "numeric":
        # The teacher named the skills the wrong answers miss (model-based analysis, no label set),
        # and round 2 asked it for new questions practising them.
        assert steps[-2:] == ["validation-eval", "analyze"]
        (skills,) = list((prefix / "round-1").glob("analyze-*.jsonl"))
        named = loads_jsonl(skills.read_bytes())  # the tiny teacher may name none; the content is unit-tested
        assert all(set(s) >= {"skill", "count", "examples"} and "label" not in s for s in named)
        targeted = list((prefix / "round-2").glob("generate-targeted-*.jsonl"))
        assert len(targeted) == (1 if named else 0)
        for path in targeted:
            assert all(q["label"] == "" and q["provenance"]["method"] == "targeted" for q in loads_jsonl(path.read_bytes()))
    else:
        assert steps[-1] == "evaluate"


def test_open_ended_is_judged_against_the_rubric_with_a_win_rate(run_task, stack: Stack, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The teacher's judge scores the student's answers (the base student's and each round's) against
    the task's rubric; the accuracy is the judge's mean score, with a win rate against the base and the
    judge's reasons kept per answer."""
    items = [{"input": f"Explain in one sentence why a bank might block card number {i}.", "answer": "Suspected fraud."} for i in range(6)]
    task = {
        "name": "kind-open", "kind": "open_ended", "instructions": "Answer the customer's question helpfully.",
        "rubric": "1. States a plausible reason. 2. One sentence.", "seeds": items[:3], "eval": items[3:],
        "teacher": {"model": str(tiny_model_dir)}, "student": {"model": str(tiny_model_dir)}, "rounds": 1,
        "generate": {"max_new_tokens": 16, "modes": [{"mode": "expand", "per_label": 2},
                                                     {"mode": "rationales", "styles": ["concise"], "max_questions": 3, "max_new_tokens": 16}]},
        "score": {"metrics": ["ifd"]}, "train": {"epochs": 1, "batch_size": 4}, "evaluate": {"max_new_tokens": 8},
    }  # fmt: skip
    report = run_task(task)
    names = [(s["round"], s["name"]) for s in report["steps"]]
    assert (0, "baseline-judge") in names and names.index((1, "judge")) == names.index((1, "evaluate")) + 1
    (one,) = report["rounds"]
    assert one["win_rate"] is not None and 0.0 <= one["win_rate"] <= 1.0
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    judged = dict(con.execute("select stage, correct * 1.0 / total from evaluations where job_id=? and stage like '%judge'", (report["job_id"],)).fetchall())
    assert judged == {"baseline-judge": report["baseline_accuracy"], "judge": report["final_accuracy"]}
    (row_accuracy,) = con.execute("select accuracy from rounds where job_id=?", (report["job_id"],)).fetchone()
    assert row_accuracy == report["final_accuracy"]  # the round's row carries the judge's score
    prefix = Path(unquote(urlparse(report["artifacts_uri"]).path))
    (verdicts,) = list((prefix / "round-1").glob("judge-*-verdicts.jsonl"))
    rows = loads_jsonl(verdicts.read_bytes())
    assert len(rows) == 3 and all(r["reason"] for r in rows)  # each verdict keeps the judge's reason
    # The win rate is the judge's verdicts against the base student's, item by item: 1 right where the
    # base was wrong, 0.5 the same verdict, 0 else (recomputed here from both verdict files).
    (base_path,) = list((prefix / "round-0").glob("judge-*-verdicts.jsonl"))
    base = {r["id"]: bool(r["correct"]) for r in loads_jsonl(base_path.read_bytes())}
    assert set(base) == {r["id"] for r in rows}
    wins = [1.0 if r["correct"] and not base[r["id"]] else 0.5 if bool(r["correct"]) == base[r["id"]] else 0.0 for r in rows]
    assert one["win_rate"] == pytest.approx(sum(wins) / len(wins))
    (asked,) = list((prefix / "round-1").glob("judge-*-answers.jsonl")) or [None]
    if asked is not None:  # the judge read the rubric and the reference answer with each question
        assert all("Grade by this rubric:" in q["question"] and "A reference answer:" in q["question"] for q in loads_jsonl(asked.read_bytes()))


# Easy sums the bundled teacher gets right often enough at temperature 0.7 (the draws are seeded).
SUMS = [{"input": f"Tom has {a} apples and buys {b} more. How many apples does Tom have now?", "answer": str(a + b)}
        for a, b in [(2, 3), (4, 1), (3, 3), (5, 2), (1, 6), (2, 2), (6, 3), (4, 4), (3, 1), (5, 5), (2, 6), (7, 1)]]  # fmt: skip


@pytest.mark.parametrize("mode", ["cft", "rubric"])
def test_a_numeric_task_critiques_its_verified_rationales(run_task, stack: Stack, tmp_path: Path, mode: str) -> None:
    """An answer kind's model critique, by the bundled teacher: it reads each rationale that reached
    the gold answer (Question / Solution = the rationale). cft: a wrong or unparsable verdict keeps
    the rationale out of training, and each parsed critique becomes a cft record. rubric: a revision
    trains in place of its rationale only when it reaches the same answer, else the original stays."""
    task = {
        "name": f"kind-numeric-{mode}", "kind": "numeric", "instructions": "Solve the arithmetic word problem.",
        "seeds": SUMS[:6], "eval": SUMS[6:8], "rounds": 1,
        "teacher": {"model": "bundled:smollm2-135m-instruct"}, "student": {"model": "bundled:smollm2-135m-instruct"},
        "generate": {"modes": [{"mode": "rationales", "styles": ["step_by_step", "symbolic"], "per_style": 2, "max_new_tokens": 48}]},
        "critique": {"mode": mode, "max_new_tokens": 96},
        "score": {"metrics": ["ifd"]}, "select": {"policy": "top_fraction", "top_fraction": 1.0},
        "train": {"epochs": 1, "batch_size": 4}, "evaluate": {"max_new_tokens": 24},
    }  # fmt: skip
    report = run_task(task)
    steps = [s["name"] for s in report["steps"] if s["round"] == 1]
    assert steps[:2] == ["rationales", "critique-solutions"]
    (one,) = report["rounds"]
    verified = one["reasoning"]["rationales"]["kept"]
    assert verified > 0, one["reasoning"]  # else the bundled teacher changed: pick easier sums
    prefix = Path(unquote(urlparse(report["artifacts_uri"]).path)) / "round-1"
    (asked,) = list(prefix.glob(f"critique-solutions-*-{mode}-input.jsonl"))
    (rationales,) = list(prefix.glob("rationales-candidates-*.jsonl"))
    solutions = {r["id"]: r for r in loads_jsonl(rationales.read_bytes())}
    # cft: the teacher read every verified rationale as the solution to its question. rubric (CITING):
    # the teacher read the student's own greedy answer to each question, to revise it.
    questions = loads_jsonl(asked.read_bytes())
    assert {q["id"] for q in questions} == set(solutions) and len(questions) == verified
    assert all(q["question"] == solutions[q["id"]]["input"] for q in questions)
    if mode == "cft":
        assert all(q["solution"] == solutions[q["id"]]["response"] for q in questions)
    else:
        (student_answers,) = list(prefix.glob("citing-answers-*.jsonl"))
        student = {p["id"]: p["generation"] for p in loads_jsonl(student_answers.read_bytes())}
        assert all(q["answer"] == student[q["id"]] for q in questions)
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    verdicts = dict(con.execute("select sample_id, keep from critiques where job_id=? and mode=?", (report["job_id"], mode)).fetchall())
    assert set(verdicts) == set(solutions)
    assert sum(one["critique_dropped"].values()) == sum(not keep for keep in verdicts.values())
    (kept_path,) = list(prefix.glob("critique-solutions-*-kept.jsonl"))
    candidates = loads_jsonl(kept_path.read_bytes())
    assert one["candidates"] == len(candidates)
    answers = [c for c in candidates if c["category"] == "rationales"]
    # Every kept solution is a verified one the critique kept, or a revision of one with its answer.
    for c in answers:
        if c["id"] in solutions:
            assert verdicts[c["id"]]
        else:
            parent = solutions[c["parent_id"]]
            assert mode == "rubric" and c["provenance"]["method"] == "rubric_revision" and verdicts[parent["id"]]
            assert extract_number(stated_answer(c["response"])[1]) == float(parent["label"])
    assert len(answers) == sum(verdicts.values())
    # What trains from this round is what the critique kept (beside the seeds' own answers).
    trained = {i for (i,) in con.execute("select s.sample_id from training_run_samples s join training_runs t on"
                                          " s.training_run_id = t.id where t.job_id=? and t.stage='sft'", (report["job_id"],))}  # fmt: skip
    assert trained - {c["id"] for c in candidates} == {i for (i,) in con.execute(
        "select sample_id from samples where job_id=? and split='seed'", (report["job_id"],))}  # fmt: skip
    if mode == "cft":
        extra = [c for c in candidates if c["category"] == "cft"]
        assert all(r["solution"] == solutions[r["parent_id"]]["response"] and r["critique"] for r in extra)
    else:  # the revisions stay answers of the kind: nothing unverified trains
        assert answers and {c["id"] for c in candidates} <= trained
        # Each verified revision also trains as CITING's (question, rubric, own answer) -> revision.
        revised = {c["parent_id"]: c for c in answers if c["id"] not in solutions}
        citing = {c["parent_id"]: c for c in candidates if c["category"] == "citing"}
        assert set(citing) == set(revised)
        assert all(c["response"] == revised[p]["response"] and c["prompt"].endswith(f"Answer: {student[p]}") for p, c in citing.items())


def test_a_numeric_task_runs_a_curriculum_and_tailors_its_teacher(run_task, stack: Stack, tmp_path: Path) -> None:
    """The bundled teacher and student on easy sums over two rounds: a two-stage recipe by IFD band
    trains on verified rationales, and ARTE tailors the teacher after round 1 on the student's
    numeric-match preference over the validation probes."""
    recipe = {
        "name": "bands", "max_seq_len": 256,
        "stages": [
            {"name": "easy", "data": {"score_key": "ifd_ppl_pct", "max_score": 0.5}, "epochs": 1, "lr": 1e-3},
            {"name": "hard", "data": {"score_key": "ifd_ppl_pct", "min_score": 0.5}, "epochs": 1, "lr": 1e-3},
        ],
    }  # fmt: skip
    task = {
        "name": "kind-numeric-arte", "kind": "numeric", "instructions": "Solve the arithmetic word problem.",
        "seeds": SUMS[:6], "validation": SUMS[6:10], "eval": SUMS[10:], "rounds": 2,
        "teacher": {"model": "bundled:smollm2-135m-instruct"}, "student": {"model": "bundled:smollm2-135m-instruct"},
        "generate": {"modes": [{"mode": "rationales", "styles": ["step_by_step", "symbolic"], "per_style": 2, "max_new_tokens": 48}]},
        "score": {"metrics": ["ifd"]}, "select": {"policy": "top_fraction", "top_fraction": 1.0},
        "train": {"recipe": recipe}, "evaluate": {"max_new_tokens": 24},
        "tailor": {"every": 1, "questions": 4, "draft_max_new_tokens": 48, "probe_k": 4, "probe_max_new_tokens": 24, "batch_size": 4},
    }  # fmt: skip
    report = run_task(task)
    r1 = [s["name"] for s in report["steps"] if s["round"] == 1]
    assert r1 == ["rationales", "score", "select", "train-stage-1", "train-stage-2", "evaluate", "tailor"]
    assert "tailor" not in [s["name"] for s in report["steps"] if s["round"] == 2]
    one, two = report["rounds"]
    assert one["reasoning"]["rationales"]["kept"] > 0 and one["candidates"] == one["reasoning"]["rationales"]["kept"]
    # The recipe split the round's training set (seeds + verified rationales) into its two IFD bands.
    con = sqlite3.connect(str(stack.config.home / "syllabus.db"))
    (metrics,) = con.execute("select metrics from training_runs where job_id=? and round=1 and stage='recipe'", (report["job_id"],)).fetchone()
    stages = json.loads(metrics)["stages"]
    assert [s["name"] for s in stages] == ["easy", "hard"] and all(s["samples"] > 0 for s in stages)
    assert sum(s["samples"] for s in stages) == one["trained"]
    # ARTE: the student preferred some rationales as demos (numeric match on the probes), the teacher
    # trained on those pairs, and round 2's rationales came from the aligned teacher.
    assert one["tailor_pairs"] > 0 and one["tailor_skipped"] is None, one
    adapter = Path(unquote(urlparse(two["teacher_adapter_uri"]).path))
    assert adapter.parent.name == "round-1" and adapter.name.startswith("arte-dpo-")
    prefix = Path(unquote(urlparse(report["artifacts_uri"]).path)) / "round-2"
    (written,) = [p for p in prefix.glob("rationales-*.jsonl") if "-candidates-" not in p.name and "-questions-" not in p.name]
    sha = Path(f"{adapter}.sha256").read_text().split()[0]
    assert {r["provenance"]["adapter"] for r in loads_jsonl(written.read_bytes())} == {sha}
