"""An HTTP teacher as the README sets one up: `SYLLABUS_TEACHER_ENDPOINTS` in the environment of the
real `syllabus up` (its own process, which hands the setting on to the teacher it starts), a task with
`teacher.model: openai:<name>`, run through `syllabus run`.

The endpoint is a real OpenAI-compatible chat-completions server on loopback that answers every
generation request with a deterministic variant of the first example its prompt shows, tagged with
the server's name, so the test can tell its replies from anything else in the training set.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml
from chat_server import ChatServer, completion, send_json

from orchestrator.stack import loopback_config
from syllabus.config import config_to_env

pytestmark = pytest.mark.e2e
TAG = "ref LLAMA-"


class ScriptedChatServer(ChatServer):
    """Each of n choices is `<first example shown> (ref LLAMA-<k>)"` (the closing quote ends the
    teacher's `New message: "` prefill)."""

    def __init__(self) -> None:
        self.sent: list[str] = []  # every message written, without the closing quote
        super().__init__()

    def handle(self, h: BaseHTTPRequestHandler, i: int, body: dict) -> None:
        shown = re.findall(r'^- "?(.+?)"?$', body["messages"][0]["content"], re.MULTILINE) or ["I need help with my card"]
        texts = [f"{shown[0]} ({TAG}{i + 1}.{j})" for j in range(body.get("n", 1))]
        with self.lock:
            self.sent += texts
        send_json(h, completion([f'{t}"' for t in texts], 9))


def _cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], check=False, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _wait_until_up(proc: subprocess.Popen, log: Path, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Syllabus is up" in log.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"syllabus up exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    pytest.fail(f"syllabus up was not up after {timeout} s:\n{log.read_text()[-4000:]}")


def test_syllabus_up_with_an_endpoint_teacher_runs_a_job(banking77_tiny, tmp_path: Path) -> None:
    server = ScriptedChatServer()
    config = loopback_config(tmp_path / "home", task_queue="e2e-endpoint")
    env = {**os.environ, **config_to_env(config)}
    # As the README and docs/teacher.md write it: a JSON string in the environment of `syllabus up`.
    env["SYLLABUS_TEACHER_ENDPOINTS"] = json.dumps({"llama": {"url": server.url, "model": "smollm2"}})
    log = tmp_path / "up.log"
    with log.open("w") as out:
        up = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "up"], env=env, stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(up, log)
        task = banking77_tiny(2, name="endpoint-teacher", generate={"per_label": 3, "max_new_tokens": 24, "seed": 0},
                              train={"epochs": 1, "batch_size": 4})
        task["teacher"] = {"model": "openai:llama"}
        (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
        run = _cli("run", str(tmp_path / "task.yaml"), "--json", env=env, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:] + log.read_text()[-3000:]
        report = json.loads(run.stdout.strip().splitlines()[-1])
        assert report["status"] == "completed", report

        # The teacher child got the endpoint: every request reached this server under the served name.
        assert len(server.bodies) == 2 * 3, server.bodies
        assert {b["model"] for b in server.bodies} == {"smollm2"}
        assert all(b["messages"][-1]["content"] == 'New message: "' and b["continue_final_message"] for b in server.bodies)

        # ... and what it wrote is what the student trained on, beside the seeds.
        export = _cli("export", report["job_id"], "--round", "1", "-o", str(tmp_path / "train.jsonl"), env=env, timeout=120)
        assert export.returncode == 0, export.stderr
        inputs = [json.loads(line)["input"] for line in (tmp_path / "train.jsonl").read_text().splitlines()]
        from_server = [text for text in inputs if TAG in text]
        assert from_server and set(from_server) <= set(server.sent), (inputs, server.sent)
        assert report["rounds"][0]["generated"] >= len(from_server), report["rounds"][0]
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        server.close()
