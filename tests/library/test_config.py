"""The config survives the trip through the environment: what `syllabus up` hands its children
(`config_to_env`) reads back (`load_config`) as the same config, structured values included."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.stack import config_env
from syllabus.config import Config, config_to_env, load_config

pytestmark = pytest.mark.unit


def test_every_setting_reads_back_from_the_env_it_is_written_to(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = Config(
        home=tmp_path, s3_secure=False, trainer_checkpoint_every=7, activity_heartbeat_timeout_s=2.5,
        model_cache=tmp_path / "models", teacher_metrics_port=9461,
        teacher_endpoints={"llama": {"url": "http://127.0.0.1:8099/v1", "model": "smollm2"},
                           "big": {"url": "https://x.example/v1", "model": "m", "api_key_env": "BIG_KEY", "concurrency": 3}},
    )
    env = config_to_env(config)
    # JSON, not a Python repr: what the teacher child parses with json.loads.
    assert json.loads(env["SYLLABUS_TEACHER_ENDPOINTS"])["llama"]["model"] == "smollm2"
    for name in list(os.environ):
        if name.startswith("SYLLABUS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_config() == config


def test_the_stack_env_carries_endpoints_as_json(tmp_path: Path) -> None:
    config = Config(home=tmp_path, teacher_endpoints={"llama": {"url": "http://127.0.0.1:8099/v1", "model": "smollm2"}})
    env = config_env(config)
    assert Config(teacher_endpoints=env["SYLLABUS_TEACHER_ENDPOINTS"]).teacher_endpoints == config.teacher_endpoints


def test_temporal_clients_connect_with_tls_mtls_or_an_api_key_only_when_asked(tmp_path, monkeypatch) -> None:
    from syllabus.telemetry import temporal_connect_options

    plain = temporal_connect_options(Config(home=tmp_path))
    assert plain["namespace"] == "default" and "tls" not in plain and "api_key" not in plain
    for name, text in (("ca.pem", "CA"), ("client.pem", "CERT"), ("client.key", "KEY")):
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("TEMPORAL_KEY", "k-123")
    config = Config(home=tmp_path, temporal_tls_ca_file=str(tmp_path / "ca.pem"), temporal_tls_cert_file=str(tmp_path / "client.pem"),
                    temporal_tls_key_file=str(tmp_path / "client.key"), temporal_tls_server_name="temporal.internal",
                    temporal_api_key_env="TEMPORAL_KEY")  # fmt: skip
    options = temporal_connect_options(config)
    tls = options["tls"]
    assert (tls.server_root_ca_cert, tls.client_cert, tls.client_private_key, tls.domain) == (b"CA", b"CERT", b"KEY", "temporal.internal")
    assert options["api_key"] == "k-123"
    with pytest.raises(ValueError, match="go together"):
        temporal_connect_options(Config(home=tmp_path, temporal_tls_cert_file=str(tmp_path / "client.pem")))
    monkeypatch.delenv("TEMPORAL_KEY")
    with pytest.raises(ValueError, match="TEMPORAL_KEY, which is not set"):
        temporal_connect_options(Config(home=tmp_path, temporal_api_key_env="TEMPORAL_KEY"))
