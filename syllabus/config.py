"""One typed config, read from `SYLLABUS_*` environment variables.

Every field maps 1:1 to an env var (`SYLLABUS_<FIELD>` upper-cased) and, later, to a helm value.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

ENV_PREFIX = "SYLLABUS_"


def _default_home() -> Path:
    return Path(os.environ.get("SYLLABUS_HOME", ".syllabus")).resolve()


class Config(BaseModel):
    """Where Syllabus keeps its state and how its components find each other."""

    home: Path = Field(default_factory=_default_home, description="State directory of the embedded stack.")
    database_url: str = Field("", description="SQLAlchemy URL of the metadata DB; default: SQLite in home.")
    artifact_url: str = Field("", description="Artifact store root: file:///dir (default: home/artifacts).")
    temporal_address: str = Field("127.0.0.1:7233", description="Temporal frontend host:port.")
    temporal_namespace: str = Field("default", description="Temporal namespace.")
    temporal_ui_url: str = Field("http://127.0.0.1:8233", description="Temporal Web UI base URL.")
    task_queue: str = Field("syllabus", description="Temporal task queue of the orchestrator worker.")
    teacher_address: str = Field("127.0.0.1:50061", description="TeacherService host:port.")
    student_address: str = Field("127.0.0.1:50062", description="StudentService host:port.")
    trainer_address: str = Field("127.0.0.1:50063", description="TrainerService host:port.")
    gateway_address: str = Field("127.0.0.1:50060", description="JobService gateway host:port.")
    model_cache: Path | None = Field(
        None, description="Where dequantized bundled models are cached (default ~/.cache/syllabus/models); read by syllabus.models."
    )
    s3_endpoint: str = Field("", description="S3/MinIO endpoint host:port for s3:// artifact URLs.")
    s3_access_key: str = Field("", description="S3/MinIO access key (a secret in deployments).")
    s3_secret_key: str = Field("", description="S3/MinIO secret key (a secret in deployments).")
    s3_secure: bool = Field(True, description="Use TLS to reach the S3 endpoint.")
    activity_heartbeat_timeout_s: float = Field(
        120.0, gt=0, description="Heartbeat timeout of long activities: how fast a dead worker/service is noticed."
    )
    service_token: str = Field(
        "", description="Bearer token of the service role: the worker sends it, teacher/student/trainer accept only it "
        "(a Secret in deployments). Empty: read home/service-token, which `syllabus up` creates."
    )
    tokens_file: str = Field(
        "", description="The gateway's tokens: a JSON object {token: tenant}, tenant '*' = admin (a Secret in "
        "deployments). Empty: home/tokens.json, which `syllabus up` creates."
    )
    log_level: str = Field("INFO", description="Python log level of services, worker and gateway.")

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'syllabus.db'}"

    def resolved_artifact_url(self) -> str:
        return self.artifact_url or (self.home / "artifacts").as_uri()


def load_config(**overrides: object) -> Config:
    """Build the config from `SYLLABUS_*` env vars, then explicit overrides (e.g. CLI flags)."""
    values: dict[str, object] = {}
    for name in Config.model_fields:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env not in (None, ""):
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)
