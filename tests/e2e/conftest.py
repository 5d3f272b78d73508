"""One stack for every e2e test (real Temporal dev server, the services, gateway and worker in their
own processes, SQLite and a local artifact store) on the tiny model, with two HTTP teacher endpoints on
loopback in this process: `openai:critic`, the deterministic critique server of `critic_server.py`, and
`openai:labels`, the half-mislabelling Banking77 writer of `label_server.py`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from critic_server import CriticServer
from label_server import LabelServer
from tiny_models import tiny_llama

from orchestrator.stack import Stack, config_env, loopback_config


@pytest.fixture(scope="session")
def critic():
    """The deterministic critique teacher (`critic_server`); a task names it `teacher.model: openai:critic`."""
    server = CriticServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def labeler():
    """The half-mislabelling Banking77 teacher (`label_server`); a task names it `teacher.model: openai:labels`."""
    server = LabelServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, critic: CriticServer, labeler: LabelServer):
    home = tmp_path_factory.mktemp("home")
    config = loopback_config(
        home,
        task_queue="e2e",
        activity_heartbeat_timeout_s=5,  # notice a killed worker in seconds, not minutes
        teacher_endpoints={"critic": {"url": critic.url, "model": "critic"}, "labels": {"url": labeler.url, "model": "labels"}},
    )
    stack = Stack(config, preload=(str(tiny_model_dir),))
    try:
        asyncio.run(stack.start())
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def tiny_scorer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model (1 layer, another seed, wider init so its IFDs spread on both sides of 1)
    with the same tokenizer: `score.model`, Superfiltering's small scorer, in the e2e tests."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-scorer"), layers=1, initializer_range=0.2, seed=1)


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


@pytest.fixture(scope="session")
def chromium() -> Callable[..., subprocess.CompletedProcess]:
    """`chromium(*args, timeout=90)`: headless Chromium (`make test` installs it when missing); the
    process group is killed on timeout, Chromium's helper processes too."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is needed to look at pages: apt-get install -y chromium (make test does)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", "--allow-file-access-from-files", "--virtual-time-budget=8000"]  # fmt: skip

    def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        proc = subprocess.Popen([exe, *flags, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run
