"""One stack for every e2e test (real Temporal dev server, the services, gateway and worker in their
own processes, SQLite and a local artifact store) on the tiny model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.stack import Stack, loopback_config


@pytest.fixture(scope="session")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")
    config = loopback_config(
        home,
        task_queue="e2e",
        activity_heartbeat_timeout_s=5,  # notice a killed worker in seconds, not minutes
    )
    stack = Stack(config, preload=(str(tiny_model_dir),))
    try:
        asyncio.run(stack.start())
        yield stack
    finally:
        stack.stop()
