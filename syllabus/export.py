"""Export a round's training set with its scores, as JSONL or Parquet that HF `datasets` loads.

The set is exactly what the round's SFT run trained on (its `training_run_samples`), each record with
input, label, the student prompt/response, split, provenance and the round's scores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from syllabus import db
from syllabus.artifacts import ArtifactRef, ArtifactStore
from syllabus.records import loads_jsonl
from syllabus.tasks import parse_task

FORMATS = ("jsonl", "parquet")
SCORE_COLUMNS = ("loss_base", "loss_ref", "learnability")


class ExportError(ValueError):
    """Nothing to export for the given job/round; the message says why."""


LOOP_STAGES = ("sft", "recipe")  # the loop's own training run of a round (one SFT stage, or the recipe)


def training_set(s: Session, job_id: str, round_: int, store: ArtifactStore | None = None) -> list[dict]:
    """The records the loop trained on in `round_`, each with the prompt and response it trained on
    (read from the run's dataset artifact when `store` is given: rationales and critiques train on
    their own prompt and response; without it, the task's prompt and the label)."""
    job = s.get(db.Job, job_id)
    if job is None:
        raise ExportError(f"job {job_id!r} not found")
    loop_run = (db.TrainingRun.job_id == job_id, db.TrainingRun.stage.in_(LOOP_STAGES))
    run = s.execute(select(db.TrainingRun).where(*loop_run, db.TrainingRun.round == round_)).scalar()
    if run is None:
        rounds = sorted(s.execute(select(db.TrainingRun.round).where(*loop_run)).scalars())
        raise ExportError(f"job {job_id!r} has no trained round {round_} (trained rounds: {rounds or 'none'})")
    task = parse_task(job.task_yaml, source=f"job {job_id} task")
    trained = _dataset_records(s, job_id, run.dataset_uri, store)
    rows = s.execute(
        select(db.Sample)
        .join(db.TrainingRunSample, db.TrainingRunSample.sample_id == db.Sample.sample_id)
        .where(db.TrainingRunSample.training_run_id == run.id, db.Sample.job_id == job_id)
        .order_by(db.Sample.sample_id)
    ).scalars().all()
    scores: dict[str, dict[str, float]] = {}
    for sc in s.execute(select(db.Score).where(db.Score.job_id == job_id, db.Score.round == round_)).scalars():
        scores.setdefault(sc.sample_id, {})[sc.metric] = sc.value
    return [
        {
            "id": r.sample_id,
            "input": r.input,
            "label": r.label,
            "prompt": trained.get(r.sample_id, {}).get("prompt") or task.prompt_for(r.input),
            "response": trained.get(r.sample_id, {}).get("response") or task.response_for(r.label),
            "split": r.split,
            "round": r.round,
            "method": r.method or (r.provenance or {}).get("method", r.split),
            "provenance": json.dumps(r.provenance or {}, sort_keys=True),
            **{m: scores.get(r.sample_id, {}).get(m) for m in SCORE_COLUMNS},
        }
        for r in rows
    ]


def _dataset_records(s: Session, job_id: str, uri: str, store: ArtifactStore | None) -> dict[str, dict]:
    """id -> record of a training run's dataset artifact (indexed in `artifacts`); {} without a store."""
    if store is None:
        return {}
    art = s.execute(select(db.Artifact).where(db.Artifact.job_id == job_id, db.Artifact.uri == uri)).scalars().first()
    if art is None:
        return {}
    data = store.get_bytes(ArtifactRef(uri=art.uri, sha256=art.sha256, size_bytes=art.size_bytes))
    return {r["id"]: r for r in loads_jsonl(data)}


def write_export(records: list[dict], path: Path, fmt: str) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves a half-written export."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        if fmt == "jsonl":
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema(
                [("id", pa.string()), ("input", pa.string()), ("label", pa.string()), ("prompt", pa.string()),
                 ("response", pa.string()), ("split", pa.string()), ("round", pa.int32()), ("method", pa.string()),
                 ("provenance", pa.string())] + [(m, pa.float64()) for m in SCORE_COLUMNS]
            )
            pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
