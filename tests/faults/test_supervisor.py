"""The stack's supervisor on real child processes: a dead component is noticed, logged and restarted
after a backoff that doubles in a crash loop."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from orchestrator.stack import Stack
from syllabus.config import Config

pytestmark = pytest.mark.unit


def test_dead_component_is_restarted_with_backoff_and_logged(tmp_path: Path) -> None:
    messages: list[str] = []
    stack = Stack(Config(home=tmp_path), log=messages.append)
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    stack._spawn("teacher", crash)
    try:
        stack.procs[0][1].wait(10)
        t0 = time.monotonic()
        stack.supervise_once(t0)  # noticed: restart scheduled in 1 s
        assert messages[-1].startswith("teacher exited with code 3; restarting in 1s")
        stack.supervise_once(t0 + 0.5)
        assert stack.restarts == {}  # not before its backoff
        stack.supervise_once(t0 + 1.0)
        assert stack.restarts == {"teacher": 1} and "restarted" in messages[-1]
        stack.procs[0][1].wait(10)  # it crashes again at once: the backoff doubles
        stack.supervise_once(t0 + 1.1)
        assert "restarting in 2s" in messages[-1]
        stack.supervise_once(t0 + 2.0)
        assert stack.restarts == {"teacher": 1}
        stack.supervise_once(t0 + 3.1)
        assert stack.restarts == {"teacher": 2}
    finally:
        stack.stop(timeout=5)
    assert (tmp_path / "logs" / "teacher.log").exists()


def test_stop_restarts_nothing(tmp_path: Path) -> None:
    stack = Stack(Config(home=tmp_path), log=lambda m: None)
    stack._spawn("worker", [sys.executable, "-c", "import time; time.sleep(60)"])
    stack.supervise(every=0.05)
    stack.stop(timeout=5)
    time.sleep(0.2)
    assert stack.procs == [] and stack.restarts == {}
