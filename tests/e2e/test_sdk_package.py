"""The light SDK as a client application sees it: a fresh venv with only `sdk/` installed (grpcio and
protobuf; no torch, no Temporal, not the syllabus package), at the lowest grpcio and protobuf its
range admits, submits a job to the running stack (tests/e2e/conftest.py) and watches it to the end.
(The project's own venv runs the SDK at the lock's newer versions in every other test.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from orchestrator.stack import Stack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
# What a fresh venv holds after `pip install ./sdk`: the SDK, its two dependencies and theirs.
ALLOWED = {"syllabus-sdk", "grpcio", "protobuf", "typing-extensions", "pip", "setuptools", "wheel"}

CLIENT = """
import importlib.metadata, json, sys
from syllabus_sdk import SyllabusClient

address, task_path = sys.argv[1], sys.argv[2]
with SyllabusClient(address) as client:  # token: $SYLLABUS_TOKEN
    client.wait_ready(timeout=10)
    job = client.submit_job(open(task_path).read())
    seen = [(job.status, job.current_round, job.current_step)]
    for job in client.watch_job(job.job_id):
        seen.append((job.status, job.current_round, job.current_step))
    final = client.get_job(job.job_id)
    listed = [j.job_id for j in client.list_jobs()]
import syllabus_sdk
print(json.dumps({
    "job_id": final.job_id, "status": final.status, "task": final.task_name,
    "rounds": [r.round for r in final.rounds], "final_accuracy": final.final_accuracy, "seen": seen, "listed": listed,
    "steps": [s.name for s in final.steps],
    "sdk_file": syllabus_sdk.__file__,
    "modules": sorted(m for m in ("torch", "transformers", "temporalio", "syllabus", "orchestrator") if m in sys.modules),
    "distributions": {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()},
}))
"""


def lowest_allowed() -> dict[str, str]:
    """grpcio and protobuf at the lower bounds of sdk/pyproject.toml (`name>=X` -> X)."""
    deps = tomllib.loads((ROOT / "sdk" / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m.group(1): m.group(2) for m in (re.fullmatch(r"([a-z]+)>=([\d.]+)", d) for d in deps) if m}


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh venv where only `sdk/` was installed (not editable), with its two
    dependencies pinned at their lowest allowed versions."""
    lowest = lowest_allowed()
    assert set(lowest) == {"grpcio", "protobuf"}, lowest
    venv = tmp_path_factory.mktemp("sdk-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         *(f"{name}=={version}" for name, version in lowest.items()), str(ROOT / "sdk")],
        check=False, capture_output=True, text=True, timeout=600, env=env, cwd=venv,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    return python


def test_a_venv_with_only_the_sdk_submits_and_watches_a_job(
    sdk_python: Path, stack: Stack, banking77_tiny, tmp_path: Path
) -> None:
    task = banking77_tiny(2, name="sdk-app", generate={"per_label": 1, "max_new_tokens": 12, "seed": 0},
                          train={"epochs": 1, "batch_size": 4})
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "client.py").write_text(CLIENT)
    # A clean environment: no PYTHONPATH, run outside the repository, the token passed as a user would.
    token = (stack.config.home / "token").read_text().strip()
    env = {"PATH": f"{sdk_python.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "SYLLABUS_TOKEN": token}
    run = subprocess.run(
        [str(sdk_python), "client.py", stack.config.gateway_address, "task.yaml"],
        check=False, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])

    # The job ran to the end, followed through WatchJob from running to completed.
    assert out["status"] == 2, out  # JOB_STATUS_COMPLETED
    assert out["task"] == "sdk-app" and out["rounds"] == [1]
    assert 0.0 <= out["final_accuracy"] <= 1.0
    assert {"generate", "train", "evaluate"} <= set(out["steps"]), out["steps"]
    running = [step for status, _, step in out["seen"] if status == 1]
    assert len(set(running)) >= 2 and out["seen"][-1][0] == 2, out["seen"]  # several steps seen live, then the end
    assert out["job_id"] in out["listed"]

    # The SDK came from the venv, and nothing heavy was imported or installed.
    venv = sdk_python.parent.parent
    assert Path(out["sdk_file"]).is_relative_to(venv), out["sdk_file"]
    assert out["modules"] == []
    versions = {n.lower().replace("_", "-"): v for n, v in out["distributions"].items()}
    names = set(versions)
    assert {n: versions[n] for n in ("grpcio", "protobuf")} == lowest_allowed()
    assert "torch" not in names and not any(n.startswith("nvidia") for n in names)
    assert {"syllabus-sdk", "grpcio", "protobuf"} <= names <= ALLOWED, names
    assert not list(venv.glob("lib/python*/site-packages/torch"))
