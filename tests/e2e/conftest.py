"""One stack for every e2e test (real Temporal dev server, the services, gateway and worker in their
own processes, SQLite and a local artifact store) on the tiny model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from orchestrator.stack import Stack, config_env, loopback_config


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


@pytest.fixture
def run_task(stack: Stack, tmp_path: Path) -> Callable[[dict], dict]:
    """`run_task(task) -> report`: `syllabus run TASK.yaml --json` on the shared stack; the job must
    complete."""

    def run(task: dict) -> dict:
        path = tmp_path / "task.yaml"
        path.write_text(yaml.safe_dump(task))
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--json"], check=False,
                                env=config_env(stack.config), capture_output=True, text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["status"] == "completed", report
        return report

    return run
