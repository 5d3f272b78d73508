"""A small synchronous client over the generated JobService stubs (as temporalio.client wraps temporalio.api)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import grpc

from syllabus_sdk.jobs.v1 import jobs_pb2, jobs_pb2_grpc

JobStatus = jobs_pb2.JobStatus
TERMINAL = frozenset(
    {jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED, jobs_pb2.JOB_STATUS_TERMINATED}
)


class SyllabusError(Exception):
    """A JobService call failed; `code` is the gRPC status code, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _call(fn, request, **kwargs):
    try:
        return fn(request, **kwargs)
    except grpc.RpcError as e:  # a grpc.Call carries code() and details()
        raise SyllabusError(e.code(), e.details() or "") from None


def default_root_certificates() -> bytes | None:
    """The CA (PEM) to verify a TLS gateway with: the file `$SYLLABUS_TLS_CA_FILE`; None: plaintext."""
    path = os.environ.get("SYLLABUS_TLS_CA_FILE", "").strip()
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def default_token() -> str:
    """`SYLLABUS_TOKEN`, else the local admin token `syllabus up` writes to `$SYLLABUS_HOME/token`
    (default `.syllabus/token`), else ""."""
    token = os.environ.get("SYLLABUS_TOKEN", "").strip()
    if token:
        return token
    try:
        return (Path(os.environ.get("SYLLABUS_HOME", ".syllabus")) / "token").read_text().strip()
    except OSError:
        return ""


class SyllabusClient:
    """Submit and follow distillation jobs through the JobService gateway.

    Every call carries `authorization: Bearer <token>`; `token` defaults to `default_token()`.
    The gateway answers UNAUTHENTICATED (a `SyllabusError`) for a missing or unknown token, and
    shows a tenant only its own jobs.
    """

    def __init__(
        self, address: str = "127.0.0.1:50060", *, token: str | None = None, channel: grpc.Channel | None = None,
        timeout: float = 30.0, root_certificates: bytes | None = None,
    ):
        ca = root_certificates if root_certificates is not None else default_root_certificates()
        self._channel = channel or (
            grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca)) if ca
            else grpc.insecure_channel(address)
        )  # fmt: skip
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)
        self.address = address
        self.timeout = timeout
        token = default_token() if token is None else token.strip()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _rpc(self, fn, request):
        return _call(fn, request, timeout=self.timeout, metadata=self._metadata)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the gateway's channel is connected (raises SyllabusError UNAVAILABLE otherwise)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise SyllabusError(grpc.StatusCode.UNAVAILABLE, f"no gateway at {self.address}") from None

    def submit_job(self, task_yaml: str, job_id: str = "") -> jobs_pb2.Job:
        """Start a job for a task spec (YAML with seeds and eval inline). Same job_id and task twice → the same job; the
        same job_id with a different task → SyllabusError ALREADY_EXISTS."""
        req = jobs_pb2.SubmitJobRequest(task_yaml=task_yaml, job_id=job_id)
        return self._rpc(self._stub.SubmitJob, req).job

    def get_job(self, job_id: str) -> jobs_pb2.Job:
        return self._rpc(self._stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id)).job

    def export_training_set(self, job_id: str, round_: int) -> list[dict]:
        """The exact training set of one round of a job: records with input, label, prompt, response,
        scores and provenance (what `syllabus export` writes)."""
        req = jobs_pb2.ExportTrainingSetRequest(job_id=job_id, round=round_)
        data = self._rpc(self._stub.ExportTrainingSet, req).records_jsonl
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]

    def job_report(self, job_id: str) -> dict:
        """What `syllabus report` draws for a job (rounds, baseline arms and the loop's lift over each,
        training losses, scores, funnel, errors, examples), as one JSON document."""
        req = jobs_pb2.GetJobReportRequest(job_id=job_id)
        return json.loads(self._rpc(self._stub.GetJobReport, req).report_json)

    def list_jobs(self, limit: int = 50, *, task_name: str = "", status: int | str = 0) -> list[jobs_pb2.Job]:
        """The caller's jobs, newest first; only those of task `task_name` and in `status` when given
        (a `JobStatus` value or its short name: "running", "completed", "failed", "cancelled",
        "terminated"). Filtering searches Temporal by the jobs' search attributes."""
        if isinstance(status, str):
            names = {n.removeprefix("JOB_STATUS_").lower(): v for n, v in jobs_pb2.JobStatus.items() if v}
            if status and status not in names:
                raise ValueError(f"status: {status!r} is not one of {', '.join(names)}")
            status = names.get(status, 0)
        req = jobs_pb2.ListJobsRequest(limit=limit, task_name=task_name, status=status)
        return list(self._rpc(self._stub.ListJobs, req).jobs)

    def watch_job(self, job_id: str) -> Iterator[jobs_pb2.Job]:
        """Yield the job each time it changes, until it ends."""
        stream = self._stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), metadata=self._metadata)
        try:
            for resp in stream:
                yield resp.job
        except grpc.RpcError as e:
            raise SyllabusError(e.code(), e.details() or "") from None
        finally:
            stream.cancel()

    def cancel_job(self, job_id: str) -> jobs_pb2.Job:
        return self._rpc(self._stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id)).job

    def sample_lineage(self, sample_id: str, job_id: str = "") -> list[jobs_pb2.SampleLineage]:
        """How a sample was made, judged, scored and used, and what training on it changed (per job)."""
        req = jobs_pb2.GetLineageRequest(sample_id=sample_id, job_id=job_id)
        return list(self._rpc(self._stub.GetLineage, req).samples)

    def training_run_lineage(self, training_run_id: int) -> jobs_pb2.TrainingRunLineage:
        """A training run and the exact samples it trained on."""
        req = jobs_pb2.GetLineageRequest(training_run_id=training_run_id)
        return self._rpc(self._stub.GetLineage, req).training_run

    @staticmethod
    def is_terminal(job: jobs_pb2.Job) -> bool:
        return job.status in TERMINAL
