"""Lineage queries over the metadata: one sample's whole story, or a training run's exact sample set.

For a sample: the generation that produced it (teacher, revision, prompt template, parent seed), its
critique, its scores, the rounds that selected it, the training runs that used it, and the eval
accuracy before and after each run. The orchestrator records all of it, so this is SQL only.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from syllabus import db
from syllabus.baselines import parse_arm_stage
from syllabus_sdk.jobs.v1 import jobs_pb2


def _accuracy(s: Session, job_id: str, round_: int, stage: str) -> float | None:
    """Eval accuracy after `round_` of the chain evaluated as `stage` (the loop's "sft", or a baseline
    arm's own stage); round 0 is the base student ("baseline") for every chain. Other evaluations of
    the round (the validation split) are not the eval set's."""
    row = s.execute(
        select(db.Evaluation.accuracy).where(
            db.Evaluation.job_id == job_id, db.Evaluation.round == round_, db.Evaluation.stage == ("baseline" if round_ == 0 else stage)
        )
    ).first()
    return None if row is None else row[0]


def _use(s: Session, run: db.TrainingRun) -> jobs_pb2.TrainingUse:
    use = jobs_pb2.TrainingUse(
        training_run_id=run.id, round=run.round, stage=run.stage, adapter_uri=run.adapter_uri, mean_loss=run.mean_loss
    )
    chain = run.stage if parse_arm_stage(run.stage) is not None else "sft"
    before = _accuracy(s, run.job_id, run.round - 1, chain)
    if before is not None:
        use.accuracy_before = before
    if run.stage not in ("reference", "agreement"):  # side adapters: no evaluation of their own
        after = _accuracy(s, run.job_id, run.round, chain)
        if after is not None:
            use.accuracy_after = after
    return use


def sample_lineage(s: Session, sample_id: str, job_id: str = "") -> list[jobs_pb2.SampleLineage]:
    stmt = select(db.Sample).where(db.Sample.sample_id == sample_id).order_by(db.Sample.id)
    if job_id:
        stmt = stmt.where(db.Sample.job_id == job_id)
    out = []
    for sample in s.execute(stmt).scalars():
        j = sample.job_id
        prov = sample.provenance or {}
        parent = None
        if sample.parent_id:
            parent = s.execute(
                select(db.Sample.input).where(db.Sample.job_id == j, db.Sample.sample_id == sample.parent_id)
            ).scalar()
        gen = jobs_pb2.Generation(
            method=sample.method or prov.get("method", sample.split),
            teacher_model=sample.teacher_model or prov.get("model", ""),
            teacher_revision=sample.teacher_revision or prov.get("revision", ""),
            prompt_template_hash=sample.prompt_template_hash or prov.get("prompt_template_hash", ""),
            parent_id=sample.parent_id or "",
            parent_input=parent or "",
            provenance_json=json.dumps(prov, sort_keys=True),
            artifact_uri=sample.artifact_uri,
        )
        lin = jobs_pb2.SampleLineage(
            job_id=j, sample_id=sample.sample_id, input=sample.input, label=sample.label, split=sample.split,
            round=sample.round, generation=gen,
        )
        for c in s.execute(select(db.Critique).where(db.Critique.job_id == j, db.Critique.sample_id == sample_id)).scalars():
            lin.critiques.add(mode=c.mode, keep=c.keep, reason=c.reason)
        scores = select(db.Score).where(db.Score.job_id == j, db.Score.sample_id == sample_id).order_by(db.Score.round, db.Score.metric)
        for sc in s.execute(scores).scalars():
            lin.scores.add(round=sc.round, metric=sc.metric, value=sc.value, model=sc.model)
        lin.selected_in_rounds.extend(
            s.execute(
                select(db.Selection.round).where(db.Selection.job_id == j, db.Selection.sample_id == sample_id).order_by(db.Selection.round)
            ).scalars()
        )
        runs = (
            select(db.TrainingRun)
            .join(db.TrainingRunSample, db.TrainingRunSample.training_run_id == db.TrainingRun.id)
            .where(db.TrainingRun.job_id == j, db.TrainingRunSample.sample_id == sample_id)
            .order_by(db.TrainingRun.round, db.TrainingRun.id)
        )
        lin.trainings.extend(_use(s, run) for run in s.execute(runs).scalars())
        out.append(lin)
    return out


def training_run_lineage(s: Session, training_run_id: int) -> jobs_pb2.TrainingRunLineage | None:
    run = s.get(db.TrainingRun, training_run_id)
    if run is None:
        return None
    ids = s.execute(
        select(db.TrainingRunSample.sample_id).where(db.TrainingRunSample.training_run_id == run.id).order_by(db.TrainingRunSample.sample_id)
    ).scalars()
    return jobs_pb2.TrainingRunLineage(
        run=_use(s, run), job_id=run.job_id, dataset_uri=run.dataset_uri, steps=run.steps,
        params_json=json.dumps(run.params or {}, sort_keys=True), sample_ids=list(ids),
    )
