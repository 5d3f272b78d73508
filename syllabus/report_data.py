"""What a job's report shows, gathered from the metadata (SQL) and the artifact store as one JSON-able dict.

The gateway serves it (JobService.GetJobReport, tenant-scoped) and `syllabus report` reads it
straight from the database when no gateway runs, as `syllabus export` and `lineage` do; the renderer
(`orchestrator.report`) draws it. Everything is recomputed from what the orchestrator recorded, so a
finished job's report needs no running workflow.

The document:

    job        job_id, task, kind, status, rounds_total, baseline_accuracy, final_accuracy, labels
    rounds     [{round, generated, leaked, kept, selected, trained, accuracy, train_loss}]
    accuracy   {"loop": [[round, accuracy], ...], "loop_ci": [[round, low, high], ...]} from round 0
               (the base student); the band is `stats.accuracy_interval` over eval items (None: no predictions)
    baselines  [{arm, comparison, repeats, rounds: [{round, accuracy, accuracies (per repeat),
               accuracy_ci: [low, high] (pooled over repeats and items), trained, lift, ci_low, ci_high,
               verdict}], lift, ci_low, ci_high, verdict}]  (the last round's lift on top)
    training   [{round, stage, samples, steps, mean_loss, losses: [per step], stages: [{name, steps,
               mean_loss}]}]  (the loop's runs and the arms')
    scores     {column, rounds: [{round, selected: [values], dropped: [values]}]}  (the candidates only)
    funnel     {generated, leaked, kept, selected, trained}  (summed over rounds; generated counts
               what the teacher wrote, leaked included)
    evaluation {round, accuracy, correct, total, labels, confusion: [[count]] (gold row x predicted
               column, classification), errors: [{id, input, label, prediction}]}
    examples   {column, round, top: [example], bottom: [example]}: the best and worst scored candidates
               of the last scored round, each {sample_id, input, label, score, selected, method,
               teacher_model, parent_input, critiques: [{mode, keep, reason}], trainings: [{round, stage}]}

Accuracies, lifts and interval ends are fractions (0.03 = 3 points).
"""

from __future__ import annotations

import json
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from syllabus import db, stats
from syllabus.artifacts import ArtifactRef, ArtifactStore
from syllabus.baselines import ARMS, COMPARISONS, arm_stage, parse_arm_stage
from syllabus.lineage import sample_lineage
from syllabus.tasks import METRIC_COLUMNS, TaskSpec, TaskSpecError, parse_task

EXAMPLES = 5  # top- and bottom-scored examples shown
ERRORS = 20  # wrong answers listed
OTHER = "(other)"  # a prediction outside the label set


class ReportDataError(ValueError):
    """No report for this job; the message says why."""


def _read_jsonl(s: Session, store: ArtifactStore, uri: str) -> list[dict]:
    """Records of a recorded artifact (its checksum from the artifacts index)."""
    row = s.execute(select(db.Artifact).where(db.Artifact.uri == uri)).scalar()
    if row is None:
        return []
    data = store.get_bytes(ArtifactRef(uri=row.uri, sha256=row.sha256, size_bytes=row.size_bytes))
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def _score_column(task: TaskSpec | None, available: set[str]) -> str | None:
    """The score the selection ranked by (a weighted mix: its first metric), else the first scored."""
    if task is not None:
        sel = task.select
        metric = next(iter(sel.weights)) if sel.weights else sel.metric
        if metric in METRIC_COLUMNS and task.score.column(metric) in available:
            return task.score.column(metric)
        for m in task.score.metrics:
            if task.score.column(m) in available:
                return task.score.column(m)
    return min(available) if available else None


def job_report_data(s: Session, store: ArtifactStore, job_id: str) -> dict:
    job = s.get(db.Job, job_id)
    if job is None:
        raise ReportDataError(f"job {job_id!r} not found")
    try:
        task: TaskSpec | None = parse_task(job.task_yaml, source=f"job {job_id} task")
    except TaskSpecError:
        task = None  # a task recorded by an older version: the report draws what it can
    evaluations = s.execute(select(db.Evaluation).where(db.Evaluation.job_id == job_id).order_by(db.Evaluation.round)).scalars().all()
    loop_evals = {e.round: e for e in evaluations if e.stage in ("baseline", "sft")}
    rounds = s.execute(select(db.Round).where(db.Round.job_id == job_id).order_by(db.Round.round)).scalars().all()
    runs = s.execute(select(db.TrainingRun).where(db.TrainingRun.job_id == job_id).order_by(db.TrainingRun.round, db.TrainingRun.id)).scalars().all()
    samples = {x.sample_id: x for x in s.execute(select(db.Sample).where(db.Sample.job_id == job_id)).scalars()}

    data: dict = {
        "job": {
            "job_id": job.id, "task": job.task_name, "kind": task.kind if task else "", "status": job.status,
            "rounds_total": job.rounds_total, "baseline_accuracy": job.baseline_accuracy, "final_accuracy": job.final_accuracy,
            "labels": list(task.labels) if task else [],
        },
        "rounds": [
            {"round": r.round, "generated": r.generated, "leaked": r.leaked, "kept": r.kept, "selected": r.selected,
             "trained": r.trained, "accuracy": r.accuracy, "train_loss": r.train_loss}
            for r in rounds
        ],
        "accuracy": {"loop": [[r, e.accuracy] for r, e in sorted(loop_evals.items())],
                     "loop_ci": [[r, *_interval(s, store, [e])[1:]] for r, e in sorted(loop_evals.items())]},
        "training": [
            {"round": t.round, "stage": t.stage, "samples": t.samples, "steps": t.steps, "mean_loss": t.mean_loss,
             "losses": list((t.metrics or {}).get("losses", [])),
             "stages": [{"name": st.get("name", ""), "steps": int(st.get("steps", 0)), "mean_loss": st.get("mean_loss")}
                        for st in (t.metrics or {}).get("stages", [])]}
            for t in runs
        ],
    }  # fmt: skip
    data["funnel"] = {
        "generated": sum(r.generated + r.leaked for r in rounds), "leaked": sum(r.leaked for r in rounds),
        "kept": sum(r.kept for r in rounds), "selected": sum(r.selected for r in rounds), "trained": sum(r.trained for r in rounds),
    }  # fmt: skip
    # the teacher manifest of every run that learnt a teacher's distribution (kd / opd)
    data["teachers"] = [{"round": t.round, "stage": t.stage, **{k: str(v) for k, v in (t.params or {})["teacher"].items()}}
                        for t in runs if isinstance((t.params or {}).get("teacher"), dict)]  # fmt: skip
    data["baselines"] = _baselines(s, store, task, evaluations, loop_evals, runs)
    data["scores"], data["examples"] = _scores_and_examples(s, job_id, task, samples)
    data["evaluation"] = _evaluation(s, store, task, loop_evals, samples)
    return data


def _baselines(s, store, task, evaluations, loop_evals, runs) -> list[dict]:
    """Each arm's accuracy per round and the loop's lift over it (the same computation as the
    workflow's comparison step, so the numbers agree)."""
    arm_evals: dict[str, dict[int, dict[int, db.Evaluation]]] = defaultdict(lambda: defaultdict(dict))
    for e in evaluations:
        if (parsed := parse_arm_stage(e.stage)) is not None:
            arm_evals[parsed[0]][e.round][parsed[1]] = e
    trained = {(t.stage, t.round): t.samples for t in runs}
    order = list(task.baselines.arms) if task is not None and task.baselines is not None else []
    arms = order + [a for a in ARMS if a in arm_evals and a not in order]
    out = []
    for arm in arms:
        rows = []
        for r, repeats in sorted(arm_evals.get(arm, {}).items()):
            evs = [repeats[k] for k in sorted(repeats)]
            row = {"round": r, "accuracy": sum(e.accuracy for e in evs) / len(evs), "accuracies": [e.accuracy for e in evs],
                   "accuracy_ci": list(_interval(s, store, evs)[1:]),
                   "trained": trained.get((arm_stage(arm, 0), r)), "lift": None, "ci_low": None, "ci_high": None, "verdict": ""}  # fmt: skip
            if r in loop_evals:
                loop = stats.correct_by_item(_read_jsonl(s, store, loop_evals[r].predictions_uri))
                lift = stats.compare(loop, [stats.correct_by_item(_read_jsonl(s, store, e.predictions_uri)) for e in evs])
                row |= {"lift": lift.lift, "ci_low": lift.ci_low, "ci_high": lift.ci_high, "verdict": stats.verdict(COMPARISONS[arm], lift)}
            rows.append(row)
        last = rows[-1] if rows else {}
        out.append({"arm": arm, "comparison": COMPARISONS[arm], "repeats": max((len(x["accuracies"]) for x in rows), default=0),
                    "rounds": rows, **{k: last.get(k) for k in ("lift", "ci_low", "ci_high")}, "verdict": last.get("verdict", "")})  # fmt: skip
    return out


def _interval(s, store, evs) -> tuple[float | None, float | None, float | None]:
    """`stats.accuracy_interval` of evaluations' predictions; (None, None, None) where one is gone."""
    try:
        runs = [stats.correct_by_item(_read_jsonl(s, store, e.predictions_uri)) if e.predictions_uri else {} for e in evs]
    except (OSError, ValueError, KeyError):
        return None, None, None
    return stats.accuracy_interval(runs) if all(runs) else (None, None, None)


def _scores_and_examples(s: Session, job_id: str, task: TaskSpec | None, samples: dict) -> tuple[dict, dict]:
    """Score values of the selected and the dropped candidates per round; the top- and bottom-scored
    candidates of the last scored round with their lineage."""
    rows = s.execute(select(db.Score).where(db.Score.job_id == job_id)).scalars().all()
    column = _score_column(task, {r.metric for r in rows})
    selected: dict[int, set[str]] = defaultdict(set)
    for sel in s.execute(select(db.Selection).where(db.Selection.job_id == job_id)).scalars():
        selected[sel.round].add(sel.sample_id)
    by_round: dict[int, dict[str, float]] = defaultdict(dict)
    for r in rows:
        sample = samples.get(r.sample_id)
        # Candidates only: the seeds always train, and held-out records never do.
        if r.metric == column and (sample is None or sample.split not in ("seed", "eval", "validation")) and not r.sample_id.startswith("heldout:"):
            by_round[r.round][r.sample_id] = r.value
    scores = {"column": column, "rounds": [
        {"round": rnd, "selected": [v for i, v in values.items() if i in selected[rnd]],
         "dropped": [v for i, v in values.items() if i not in selected[rnd]]}
        for rnd, values in sorted(by_round.items())
    ]}  # fmt: skip
    examples: dict = {"column": column, "round": None, "top": [], "bottom": []}
    if by_round:
        rnd = max(by_round)
        ranked = sorted(by_round[rnd].items(), key=lambda kv: (-kv[1], kv[0]))
        top = ranked[:EXAMPLES]
        bottom = [kv for kv in ranked[-EXAMPLES:][::-1] if kv not in top]
        examples |= {"round": rnd, "top": [_example(s, job_id, i, v, i in selected[rnd]) for i, v in top],
                     "bottom": [_example(s, job_id, i, v, i in selected[rnd]) for i, v in bottom]}  # fmt: skip
    return scores, examples


def _example(s: Session, job_id: str, sample_id: str, score: float, chosen: bool) -> dict:
    out = {"sample_id": sample_id, "score": score, "selected": chosen, "input": "", "label": "", "method": "",
           "teacher_model": "", "parent_input": "", "critiques": [], "trainings": []}  # fmt: skip
    found = sample_lineage(s, sample_id, job_id)
    if found:
        lin = found[0]
        g = lin.generation
        out |= {
            "input": lin.input, "label": lin.label, "method": g.method, "teacher_model": g.teacher_model,
            "parent_input": g.parent_input, "critiques": [{"mode": c.mode, "keep": c.keep, "reason": c.reason} for c in lin.critiques],
            "trainings": [{"round": t.round, "stage": t.stage} for t in lin.trainings],
        }  # fmt: skip
    return out


def _evaluation(s, store, task, loop_evals, samples) -> dict | None:
    """The last evaluation of the loop's student: per-label confusion (classification) and errors."""
    if not loop_evals:
        return None
    r = max(loop_evals)
    e = loop_evals[r]
    predictions = _read_jsonl(s, store, e.predictions_uri)
    labels = list(task.labels) if task is not None and task.kind_spec.has_labels else []
    out = {"round": r, "accuracy": e.accuracy, "correct": e.correct, "total": e.total, "labels": [], "confusion": [], "errors": []}
    if labels:
        predicted = [str(p.get("prediction", "")) for p in predictions]
        cols = labels + ([OTHER] if any(x not in labels for x in predicted) else [])
        index = {label: i for i, label in enumerate(cols)}
        confusion = [[0] * len(cols) for _ in labels]
        for p, guess in zip(predictions, predicted, strict=True):
            if p.get("label") in index and index[p["label"]] < len(labels):
                confusion[index[p["label"]]][index.get(guess, len(cols) - 1)] += 1
        out |= {"labels": cols, "confusion": confusion}
    for p in predictions:
        if not p.get("correct") and len(out["errors"]) < ERRORS:
            sample = samples.get(str(p.get("id")))
            out["errors"].append({"id": p.get("id"), "input": sample.input if sample else "", "label": p.get("label"),
                                  "prediction": p.get("prediction")})  # fmt: skip
    return out
