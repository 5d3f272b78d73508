"""One typed config, read from `SYLLABUS_*` environment variables.

Every field maps 1:1 to an env var (`SYLLABUS_<FIELD>` upper-cased) and, later, to a helm value.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_PREFIX = "SYLLABUS_"
ENDPOINT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TeacherEndpoint(BaseModel):
    """An OpenAI-compatible chat-completions server a task may name as `teacher.model: openai:<name>`.

    Only the server's configuration says where a teacher lives and which key it gets: a task names
    the endpoint, never a URL."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    url: str = Field(pattern=r"^https?://\S+$", description="Base URL, e.g. http://vllm:8000/v1 (/chat/completions is appended).")
    model: str = Field(min_length=1, description="The served model name sent in each request.")
    api_key_env: str = Field(
        "", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$",
        description="Name of the env var (on the teacher) holding the API key; empty: no key is sent.",
    )
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Per-request timeout.")
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at most.")
    tokenizer: str = Field(
        "", max_length=1000,
        description="Set only for a server that returns prompt log-probs (vLLM's OpenAI server): the local model "
        "(bundled:... or a model directory) whose tokenizer the served model uses. Token-level distillation "
        "(kd, opd) from this endpoint needs it; it is checked against the student's before any run.",
    )

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None


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
        30.0, gt=0, description="Heartbeat timeout of long activities: how fast a dead worker is noticed."
    )
    service_queues: bool = Field(
        False, description="Route each service's activities to a task queue of its own (<task_queue>-teacher, -student, "
        "-trainer), served by a worker beside each replica (`python -m orchestrator.worker --service teacher`): replicas "
        "share the work by pulling it (`orchestrator.routing`). `syllabus up --replicas N` and the chart turn it on.",
    )
    service_worker_slots: int = Field(
        1, ge=1, le=64, description="Activities a service's worker runs at once: 1 keeps a busy replica from taking "
        "more work while another is idle (the model runs one call at a time anyway).",
    )
    service_stall_timeout_s: float = Field(
        300.0, gt=0, le=86400, description="A service call whose service makes no progress (no forward pass, no endpoint "
        "reply) this long is cancelled and retried (SERVICE_STALLED): how fast a hung or stopped service is noticed. "
        "Keep it above the longest single forward pass or endpoint reply (teacher endpoints' timeout_s)."
    )
    service_token: str = Field(
        "", description="Bearer token of the service role: the worker sends it, teacher/student/trainer accept only it "
        "(a Secret in deployments). Empty: read home/service-token, which `syllabus up` creates."
    )
    tokens_file: str = Field(
        "", description="The gateway's tokens: a JSON object {token: tenant}, tenant '*' = admin (a Secret in "
        "deployments). Empty: home/tokens.json, which `syllabus up` creates."
    )
    tls_cert_file: str = Field(
        "", description="PEM certificate the gRPC servers (services, gateway) present; with tls_key_file, they "
        "listen over TLS only. Empty: plaintext (loopback or a mesh that encrypts)."
    )
    tls_key_file: str = Field("", description="PEM private key of tls_cert_file (a Secret in deployments).")
    tls_ca_file: str = Field(
        "", description="PEM CA that clients (worker -> services, CLI/SDK -> gateway) verify servers with; set "
        "it to talk TLS. Empty: plaintext."
    )
    temporal_tls_ca_file: str = Field(
        "", description="PEM CA the gateway and worker verify Temporal's frontend with; set (or a client cert) to "
        "connect over TLS. Empty with no client cert: plaintext (the embedded dev server on loopback).",
    )
    temporal_tls_cert_file: str = Field(
        "", description="PEM client certificate the gateway and worker present to Temporal (mTLS); with temporal_tls_key_file.",
    )
    temporal_tls_key_file: str = Field("", description="PEM private key of temporal_tls_cert_file.")
    temporal_tls_server_name: str = Field("", description="Server name Temporal's certificate is checked against (default: the address's host).")
    temporal_api_key_env: str = Field(
        "", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$",
        description="Name of the env var holding an API key sent to Temporal (Temporal Cloud, or a server with an "
        "authorizer); empty: none.",
    )
    trainer_checkpoint_every: int = Field(
        20, gt=0, description="Optimiser steps between the trainer's resumable checkpoints (a restarted trainer resumes there)."
    )
    trainer_orphan_timeout_s: float = Field(
        20.0, gt=0, le=86400, description="A training run nobody watches this long (its worker died) stops at its next "
        "step, keeping its checkpoint, so the retry Temporal starts elsewhere after activity_heartbeat_timeout_s never "
        "trains the same job key beside it. Keep it below that timeout minus one training step.",
    )
    teacher_endpoints: dict[str, TeacherEndpoint] = Field(
        default_factory=dict,
        description="Teachers at HTTP endpoints, as JSON {name: {url, model, api_key_env}}; a task names one as "
        "teacher.model: openai:<name>. Keys are read on the teacher from the env vars named by api_key_env.",
    )
    allowed_models: list[str] = Field(
        default_factory=list,
        description="The model bases a task may name (teacher, teachers, student, score.model), as shell patterns, e.g. "
        '["bundled:*", "openai:*", "/models/*"] (JSON or comma-separated). A directory is matched after its path is '
        "normalised. Empty: any (the embedded stack, where the user owns the machine); the helm chart sets it.",
    )
    allow_full_finetune: bool = Field(
        False, description="Whether a task's train.recipe may train the full model (a stage with lora: null): one such job "
        "holds the trainer's memory and time like many LoRA jobs. Off: PERMISSION_DENIED at submission.",
    )
    max_running_jobs: int = Field(
        0, ge=0, le=100_000,
        description="Running jobs one tenant may have at once (admin excepted); another submission is RESOURCE_EXHAUSTED "
        "until one finishes. 0: no limit (the embedded stack); the helm chart sets 4.",
    )
    tenant_training_tokens_per_day: int = Field(
        0, ge=0, description="Training tokens one tenant's jobs may train in 24 hours (admin excepted): a submission, and "
        "a running job's next training run, is refused RESOURCE_EXHAUSTED once the tenant's runs of the last 24 h reached "
        "it (a run under way finishes). 0: no quota (the embedded stack).",
    )
    log_level: str = Field("INFO", description="Python log level of services, worker and gateway.")
    metrics_host: str = Field(
        "127.0.0.1", description="Interface the Prometheus endpoints bind (0.0.0.0 in a cluster, where Prometheus scrapes pods)."
    )
    gateway_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the gateway's Prometheus endpoint (/metrics); 0: off. `syllabus up`: 9460."
    )
    teacher_metrics_port: int = Field(0, ge=0, le=65535, description="Teacher's Prometheus endpoint port; 0: off. `syllabus up`: 9461.")
    student_metrics_port: int = Field(0, ge=0, le=65535, description="Student's Prometheus endpoint port; 0: off. `syllabus up`: 9462.")
    trainer_metrics_port: int = Field(0, ge=0, le=65535, description="Trainer's Prometheus endpoint port; 0: off. `syllabus up`: 9463.")
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port where the worker serves the Temporal SDK's metrics (Prometheus); 0: off. `syllabus up`: 9464."
    )
    otlp_endpoint: str = Field(
        "", pattern=r"^(https?://\S+)?$",
        description="OpenTelemetry collector (OTLP/gRPC) every component sends its spans to: http://host:4317 plaintext, "
        "https:// TLS. Empty: tracing off.",
    )

    @field_validator("teacher_endpoints", mode="before")
    @classmethod
    def _parse_endpoints(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"SYLLABUS_TEACHER_ENDPOINTS is not JSON: {e}") from None
        if isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str) or not ENDPOINT_NAME_RE.match(k)]
            if bad:
                raise ValueError(f"endpoint names must match {ENDPOINT_NAME_RE.pattern}, got {bad[0]!r}")
        return value

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _parse_patterns(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"SYLLABUS_ALLOWED_MODELS is not JSON: {e}") from None
            return [x.strip() for x in text.split(",") if x.strip()]
        return value

    def model_allowed(self, base: str) -> bool:
        """Whether a task may name `base` (see `allowed_models`)."""
        import fnmatch
        import posixpath

        if not self.allowed_models:
            return True
        scheme, sep, rest = base.partition(":")
        # "vllm:/models/../etc" is /etc: the path part is normalised before it is matched
        name = f"{scheme}:{posixpath.normpath(rest)}" if sep and "/" not in scheme and rest else posixpath.normpath(base)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_models)

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'syllabus.db'}"

    def resolved_artifact_url(self) -> str:
        return self.artifact_url or (self.home / "artifacts").as_uri()


def config_to_env(config: Config) -> dict[str, str]:
    """The inverse of `load_config`: each set field as its `SYLLABUS_*` variable, structured values as JSON
    (a dict's Python repr is not JSON, and a child process given one would refuse to start)."""
    env = {}
    for name, value in config.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            env[ENV_PREFIX + name.upper()] = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, bool):
            env[ENV_PREFIX + name.upper()] = "true" if value else "false"
        else:
            env[ENV_PREFIX + name.upper()] = str(value)
    return env


def load_config(**overrides: object) -> Config:
    """Build the config from `SYLLABUS_*` env vars, then explicit overrides (e.g. CLI flags)."""
    values: dict[str, object] = {}
    for name in Config.model_fields:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env not in (None, ""):
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)
