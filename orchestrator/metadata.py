"""The orchestrator's metadata in SQL, and its only writer: jobs, rounds, samples, critiques, scores,
selections, training runs (with their samples and checkpoints), evaluations and artifacts.

The gateway creates a job's row (`claim_job`); the activities record what each step produced and
`finish_job` marks the end. Every write but `finish_job` and `release_job` is insert-or-ignore on
the table's unique key, so a retried activity completes missing rows and duplicates nothing.

Methods are synchronous (SQLAlchemy); activities call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from syllabus import db
from syllabus.artifacts import ArtifactRef

log = logging.getLogger(__name__)


def sample_row(job_id: str, round_: int, split: str, record: dict, artifact_uri: str) -> dict:
    """A `samples` row from a dataset record, with the provenance fields lineage queries by."""
    prov = record.get("provenance") or {"method": split}
    return {
        "job_id": job_id,
        "sample_id": record["id"],
        "round": round_,
        "split": split,
        "input": record["input"],
        "label": record["label"],
        "parent_id": record.get("parent_id"),
        "provenance": prov,
        "artifact_uri": artifact_uri,
        "method": prov.get("method", split),
        "teacher_model": prov.get("model"),
        "teacher_revision": prov.get("revision"),
        "prompt_template_hash": prov.get("prompt_template_hash"),
    }


class Metadata:
    """One SQL database (engine created on first use, schema migrated to head)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._lock = threading.Lock()

    def sessions(self) -> sessionmaker[Session]:
        with self._lock:
            if self._sessions is None:
                self._engine = db.make_engine(self.database_url)
                self._sessions = db.session_factory(self._engine)
            return self._sessions

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _insert(self, model: type[db.Base], rows: Iterable[dict]) -> int:
        with self.sessions().begin() as session:
            return db.insert_ignore(session, model, rows)

    # -- jobs ------------------------------------------------------------------------------------

    def claim_job(self, row: Mapping[str, object]) -> db.Job | None:
        """Create the job's row (the gateway, on SubmitJob); None if this call created it, else the
        row that already holds the id (the primary key makes the first submission its owner)."""
        with self.sessions().begin() as session:
            if db.insert_ignore(session, db.Job, [dict(row)]):
                return None
            return session.get(db.Job, row["id"])

    def release_job(self, job_id: str) -> None:
        """Delete a job's row that `claim_job` created but whose submission was refused."""
        with self.sessions().begin() as session:
            session.execute(delete(db.Job).where(db.Job.id == job_id))

    def finish_job(
        self, job_id: str, status: str, baseline_accuracy: float | None = None, final_accuracy: float | None = None
    ) -> bool:
        """Mark the job completed / failed / cancelled with its accuracies; False if it has no row."""
        values: dict[str, object] = {"status": status}
        if baseline_accuracy is not None:
            values["baseline_accuracy"] = baseline_accuracy
        if final_accuracy is not None:
            values["final_accuracy"] = final_accuracy
        with self.sessions().begin() as session:
            return bool(session.execute(update(db.Job).where(db.Job.id == job_id).values(**values)).rowcount)

    def over_training_quota(self, job_id: str | None, tenant: str | None, tokens_per_day: int) -> str | None:
        """Why the tenant (given, or the job's) may train no more now, or None: the tokens its training runs
        recorded in the last 24 hours reached `tokens_per_day` (0: no quota; admin jobs have none)."""
        if not tokens_per_day:
            return None
        since = datetime.now(UTC) - timedelta(days=1)
        with self.sessions()() as session:
            if tenant is None:
                tenant = session.execute(select(db.Job.tenant).where(db.Job.id == job_id)).scalar_one_or_none()
            if tenant is None or tenant == db.ADMIN_JOBS_TENANT:
                return None
            used, oldest = session.execute(
                select(func.coalesce(func.sum(db.TrainingRun.tokens), 0), func.min(db.TrainingRun.created_at))
                .join(db.Job, db.Job.id == db.TrainingRun.job_id)
                .where(db.Job.tenant == tenant, db.TrainingRun.created_at >= since)
            ).one()
        if used < tokens_per_day:
            return None
        oldest = oldest if oldest is None or oldest.tzinfo else oldest.replace(tzinfo=UTC)  # SQLite drops the zone
        when = f"; the oldest of them leaves the window at {(oldest + timedelta(days=1)):%Y-%m-%d %H:%M} UTC" if oldest else ""
        return (f"tenant {tenant!r} trained {used} tokens in the last 24 h, its quota is {tokens_per_day} "
                f"(tenant_training_tokens_per_day){when}")  # fmt: skip

    # -- per-step rows ---------------------------------------------------------------------------

    def record_samples(self, rows: Iterable[dict]) -> int:
        """`samples` rows (see `sample_row`)."""
        return self._insert(db.Sample, rows)

    def record_critiques(self, job_id: str, mode: str, verdicts: Iterable[dict]) -> int:
        """One `critiques` row per verdict record ("id", "keep", "reason")."""
        rows = [
            {"job_id": job_id, "sample_id": v["id"], "mode": mode, "keep": bool(v["keep"]), "reason": str(v.get("reason", ""))}
            for v in verdicts
        ]
        return self._insert(db.Critique, rows)

    def record_scores(self, rows: Iterable[dict]) -> int:
        """`scores` rows: job_id, round, sample_id, metric, value, model."""
        return self._insert(db.Score, rows)

    def record_selection(self, job_id: str, round_: int, chosen: Iterable[str]) -> int:
        """The selected sample ids of a round, by rank."""
        rows = [{"job_id": job_id, "round": round_, "sample_id": sid, "rank": i} for i, sid in enumerate(chosen)]
        return self._insert(db.Selection, rows)

    def record_evaluation(self, row: Mapping[str, object]) -> int:
        """An `evaluations` row: job_id, round, stage, accuracy, correct, total, adapter_uri, predictions_uri."""
        return self._insert(db.Evaluation, [dict(row)])

    def record_round(self, row: Mapping[str, object]) -> int:
        """A `rounds` row: job_id, round, accuracy and every counter of the round (`RoundCounts`)."""
        return self._insert(db.Round, [dict(row)])

    def record_artifacts(self, job_id: str, round_: int, refs: Mapping[str, ArtifactRef | None]) -> int:
        """Index published outputs (kind -> ref) in the `artifacts` table, once each."""
        rows = [
            {"job_id": job_id, "round": round_, "kind": kind, "uri": ref.uri, "sha256": ref.sha256, "size_bytes": ref.size_bytes}
            for kind, ref in refs.items()
            if ref is not None
        ]
        return self._insert(db.Artifact, rows)

    def record_training_run(self, row: Mapping[str, object], sample_ids: Iterable[str], adapter: ArtifactRef) -> None:
        """The run, the exact sample set it trained on and its final checkpoint, in one transaction."""
        with self.sessions().begin() as session:
            db.insert_ignore(session, db.TrainingRun, [dict(row)])
            run_id = session.execute(
                select(db.TrainingRun.id).where(
                    db.TrainingRun.job_id == row["job_id"],
                    db.TrainingRun.round == row["round"],
                    db.TrainingRun.stage == row["stage"],
                )
            ).scalar_one()
            db.insert_ignore(session, db.TrainingRunSample, [{"training_run_id": run_id, "sample_id": s} for s in sample_ids])
            db.insert_ignore(
                session,
                db.Checkpoint,
                [{"training_run_id": run_id, "step": row["steps"], "uri": adapter.uri, "sha256": adapter.sha256}],
            )
