"""Metadata in SQL: jobs, rounds, samples (with provenance), scores, critiques, training runs, evaluations.

The orchestrator owns these rows (services are stateless). Every write is idempotent: rows carry
natural unique keys and `insert_ignore` skips rows that exist, so a retried activity never duplicates.
SQLite is the embedded default; the same models run on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DEFAULT_TENANT = "default"  # the tenant of jobs recorded before tenants existed (migration 0002)
ADMIN_JOBS_TENANT = "admin"  # the tenant recorded for jobs the admin token submits


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The tenant that submitted it (the gateway scopes every job RPC to it; "admin" for the admin token).
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT, index=True)
    task_name: Mapped[str] = mapped_column(Text)
    task_yaml: Mapped[str] = mapped_column(Text)
    # sha256 of the canonical task (`dump_task`): a resubmitted job id must carry the same task.
    task_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    status: Mapped[str] = mapped_column(String(32), default="running")
    rounds_total: Mapped[int] = mapped_column(Integer)
    artifacts_uri: Mapped[str] = mapped_column(Text, default="")
    baseline_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    final_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("job_id", "round"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    generated: Mapped[int] = mapped_column(Integer, default=0)
    kept: Mapped[int] = mapped_column(Integer, default=0)
    selected: Mapped[int] = mapped_column(Integer, default=0)
    trained: Mapped[int] = mapped_column(Integer, default=0)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Generated examples the teacher dropped for overlapping the eval set (leakage guard).
    leaked: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Of `generated`, examples made by targeted generation for the previous round's errors.
    targeted: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Mean training loss of the round's sft run, and the adapter it produced.
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    adapter_uri: Mapped[str] = mapped_column(Text, default="", server_default="")


class Sample(Base):
    """A labelled example: a seed, an eval item or a teacher generation, with its provenance."""

    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("job_id", "sample_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    sample_id: Mapped[str] = mapped_column(String(64))  # content-addressed
    round: Mapped[int] = mapped_column(Integer)  # 0 for seeds and eval items
    split: Mapped[str] = mapped_column(String(16))  # seed | eval | generated
    input: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(Text)  # an answer of any length (numeric, open_ended)
    parent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    provenance: Mapped[dict] = mapped_column(JSON, default=dict)
    artifact_uri: Mapped[str] = mapped_column(Text, default="")
    # Provenance fields worth querying by; the full record stays in `provenance`.
    method: Mapped[str | None] = mapped_column(String(64), nullable=True)
    teacher_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    teacher_revision: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prompt_template_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Critique(Base):
    __tablename__ = "critiques"
    __table_args__ = (UniqueConstraint("job_id", "sample_id", "mode"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    sample_id: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(32))
    keep: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("job_id", "round", "sample_id", "metric"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    sample_id: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(Text)  # base model + adapter URI that scored it


class Selection(Base):
    """Which samples a round selected for training."""

    __tablename__ = "selections"
    __table_args__ = (UniqueConstraint("job_id", "round", "sample_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    sample_id: Mapped[str] = mapped_column(String(64))
    rank: Mapped[int] = mapped_column(Integer)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (UniqueConstraint("job_id", "round", "stage"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(64))  # "reference" (LoBaSS), "agreement" (its judge), "sft", ...
    dataset_uri: Mapped[str] = mapped_column(Text)
    adapter_uri: Mapped[str] = mapped_column(Text)
    samples: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    mean_loss: Mapped[float] = mapped_column(Float)
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # the recipe: LoRA and optimiser settings
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)  # e.g. {"losses": [...per step]}
    # Real tokens the run trained on (every rank, resumed attempts included): the tenant's training quota.
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)


class TrainingRunSample(Base):
    """The exact sample set a training run trained on."""

    __tablename__ = "training_run_samples"
    __table_args__ = (UniqueConstraint("training_run_id", "sample_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    training_run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), index=True)
    sample_id: Mapped[str] = mapped_column(String(64))


class Checkpoint(Base):
    """A saved adapter of a training run (the final one, and intermediate ones when the trainer keeps them)."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("training_run_id", "step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    training_run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))


class Artifact(Base):
    """Every object a job published, with its checksum: the object store's index."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("uri"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=True)
    round: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(64))  # task, seeds, eval, generated, kept, critiques, scores, train-set, adapter, predictions
    uri: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("job_id", "round", "stage"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)  # 0 = baseline
    stage: Mapped[str] = mapped_column(String(64))
    accuracy: Mapped[float] = mapped_column(Float)
    correct: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    adapter_uri: Mapped[str] = mapped_column(Text, default="")
    predictions_uri: Mapped[str] = mapped_column(Text)


def make_engine(url: str, migrate: bool = True) -> Engine:
    """Create an engine and bring the schema to head with the Alembic migrations.

    SQLite files get WAL so readers never block the writer.
    """
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    if migrate:
        from syllabus.migrate import upgrade

        upgrade(engine)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def insert_ignore(session: Session, model: type[Base], rows: Iterable[dict]) -> int:
    """Insert rows, skipping any that collide with a unique key; return how many were new."""
    rows = list(rows)
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    table = model.__table__
    stmt = insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
    conn = session.connection()
    # One statement per row, counting RETURNING rows: rowcount is unreliable with implicit RETURNING.
    return sum(len(conn.execute(stmt.values(**row)).all()) for row in rows)


def count(session: Session, model: type[Base], **where: object) -> int:
    from sqlalchemy import func

    stmt = select(func.count()).select_from(model)
    for k, v in where.items():
        stmt = stmt.where(getattr(model, k) == v)
    return session.execute(stmt).scalar_one()
