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
from syllabus.tasks import parse_task

FORMATS = ("jsonl", "parquet")
SCORE_COLUMNS = ("loss_base", "loss_ref", "learnability")


class ExportError(ValueError):
    """Nothing to export for the given job/round; the message says why."""


def training_set(s: Session, job_id: str, round_: int) -> list[dict]:
    job = s.get(db.Job, job_id)
    if job is None:
        raise ExportError(f"job {job_id!r} not found")
    run = s.execute(
        select(db.TrainingRun).where(db.TrainingRun.job_id == job_id, db.TrainingRun.round == round_, db.TrainingRun.stage == "sft")
    ).scalar()
    if run is None:
        rounds = sorted(s.execute(select(db.TrainingRun.round).where(db.TrainingRun.job_id == job_id, db.TrainingRun.stage == "sft")).scalars())
        raise ExportError(f"job {job_id!r} has no trained round {round_} (trained rounds: {rounds or 'none'})")
    task = parse_task(job.task_yaml, source=f"job {job_id} task")
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
            "prompt": task.prompt_for(r.input),
            "response": r.label,
            "split": r.split,
            "round": r.round,
            "method": r.method or (r.provenance or {}).get("method", r.split),
            "provenance": json.dumps(r.provenance or {}, sort_keys=True),
            **{m: scores.get(r.sample_id, {}).get(m) for m in SCORE_COLUMNS},
        }
        for r in rows
    ]


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
