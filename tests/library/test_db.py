"""Metadata schema on both databases: migrations up and down, idempotent inserts."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select

from syllabus import db
from syllabus.migrate import current_revision, downgrade, head_revision, upgrade

pytestmark = pytest.mark.integration
TABLES = {"jobs", "rounds", "samples", "critiques", "scores", "selections", "training_runs",
          "training_run_samples", "checkpoints", "evaluations", "artifacts"}


def test_migrations_upgrade_to_head_and_back_to_base(database_url: str) -> None:
    engine = db.make_engine(database_url, migrate=False)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert TABLES <= set(inspect(engine).get_table_names())
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)  # and up again: downgrade left nothing behind that blocks it
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_models_match_the_migrations(database_url: str) -> None:
    """Autogenerate against a migrated database finds nothing to do: no model change lacks a migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = db.make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.Base.metadata)
    assert diff == []
    engine.dispose()


def test_insert_ignore_is_idempotent(database_url: str) -> None:
    engine = db.make_engine(database_url)
    sessions = db.session_factory(engine)
    rows = [{"job_id": "j", "sample_id": f"s{i}", "round": 1, "split": "generated", "input": f"text {i}", "label": "a",
                 "provenance": {"method": "seed_expansion"}} for i in range(3)]
    with sessions.begin() as s:
        db.insert_ignore(s, db.Job, [{"id": "j", "task_name": "t", "task_yaml": "", "rounds_total": 1}])
        assert db.insert_ignore(s, db.Sample, rows) == 3
    with sessions.begin() as s:
        assert db.insert_ignore(s, db.Sample, rows + [dict(rows[0], sample_id="s9")]) == 1
    with sessions() as s:
        assert db.count(s, db.Sample, job_id="j") == 4
        assert s.get(db.Job, "j").created_at is not None
    engine.dispose()


def test_long_labels_and_task_names_are_stored_whole(database_url: str) -> None:
    """An open-ended answer (the label column) and a task name have no length limit: PostgreSQL's
    VARCHAR(256) refused them before 0004."""
    engine = db.make_engine(database_url)
    sessions = db.session_factory(engine)
    answer, name = "a worked answer, " * 400, "n" * 1000
    with sessions.begin() as s:
        db.insert_ignore(s, db.Job, [{"id": "long", "task_name": name, "task_yaml": "", "rounds_total": 1}])
        db.insert_ignore(s, db.Sample, [{"job_id": "long", "sample_id": "s", "round": 1, "split": "generated",
                                         "input": "q", "label": answer, "provenance": {}}])  # fmt: skip
    with sessions() as s:
        assert s.get(db.Job, "long").task_name == name
        assert s.execute(select(db.Sample.label).where(db.Sample.job_id == "long")).scalar() == answer
    engine.dispose()
