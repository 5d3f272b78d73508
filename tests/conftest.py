"""Shared fixtures: a tiny random-init model with the real SmolLM2 tokenizer, an artifact store.

The tiny model (2 layers, hidden 64) keeps unit tests fast; tests about real model behaviour use
the bundled model instead. Neither downloads anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_models import tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local HF model directory: random-init Llama (2 layers, hidden 64) + SmolLM2 tokenizer."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def banking77_tiny(tiny_model_dir: Path):
    """`banking77_tiny(labels, **overrides) -> dict`: the banking77 example task cut to its first `labels`
    labels (every 2nd seed and every 4th eval example of each, grouped by label), one round, teacher and
    student the tiny model; `overrides` replace top-level keys (generate, train, name, ...)."""
    import json

    import yaml

    base = Path(__file__).resolve().parents[1] / "examples" / "banking77"

    def make(labels: int, **overrides) -> dict:
        task = yaml.safe_load((base / "task.yaml").read_text())
        names = task["labels"][:labels]
        seeds = [json.loads(line) for line in (base / task["seeds"]).read_text().splitlines()]
        evals = [json.loads(line) for line in (base / task["eval"]).read_text().splitlines()]
        task.update(
            labels=names,
            seeds=[s for label in names for s in seeds if s["label"] == label][::2],
            eval=[e for label in names for e in evals if e["label"] == label][::4],
            teacher={"model": str(tiny_model_dir)},
            student={"model": str(tiny_model_dir)},
            rounds=1,
        )
        task.update(overrides)
        return task

    return make


TEST_SERVICE_TOKEN = "test-service-token"  # the service-role token of every test server's Config


@pytest.fixture(scope="session")
def service_token() -> str:
    """Pass as `Config(service_token=...)`: the teacher, student and trainer accept only it."""
    return TEST_SERVICE_TOKEN


@pytest.fixture(scope="session")
def service_channel():
    """`service_channel(port)`: an aio channel to 127.0.0.1:port that sends the test service token."""
    from syllabus import auth

    return lambda port: auth.channel(f"127.0.0.1:{port}", TEST_SERVICE_TOKEN)


@pytest.fixture
def store(tmp_path: Path):
    from syllabus.artifacts import LocalArtifactStore

    return LocalArtifactStore(tmp_path / "artifacts")


@pytest.fixture(autouse=True, scope="session")
def _quiet_env() -> None:
    # Keep test runs offline and quiet: nothing may reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """An S3-compatible server (nanio) on loopback that checks credentials: the MinIO code path's peer."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    exe = shutil.which("nanio", path=str(Path(sys.executable).parent)) or shutil.which("nanio")
    if exe is None:
        pytest.fail("nanio is not installed (pip install -e .[dev])")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    creds = {"access_key": "syllabus-test", "secret_key": "syllabus-test-secret"}
    env = dict(os.environ, NANIO_ACCESS_KEY=creds["access_key"], NANIO_SECRET_KEY=creds["secret_key"])
    data = tmp_path_factory.mktemp("nanio")
    proc = subprocess.Popen(
        [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("nanio did not start")
    yield {"endpoint": f"127.0.0.1:{port}", **creds}
    proc.terminate()
    proc.wait(10)


POSTGRES_ADMIN_URL = os.environ.get("SYLLABUS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url():
    """A fresh, private PostgreSQL database on the machine's server (dropped afterwards)."""
    import uuid

    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"syllabus_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001 — say what is missing instead of a driver traceback
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not usable ({type(e).__name__}); set SYLLABUS_TEST_POSTGRES_URL")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both databases the same migrations must run on."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'syllabus.db'}"
    return request.getfixturevalue("postgres_url")
