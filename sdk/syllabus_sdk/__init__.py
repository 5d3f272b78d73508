"""Syllabus Python SDK: the generated gRPC stubs (`syllabus_sdk.<area>.v1`) and a small typed client.

    from syllabus_sdk import SyllabusClient
    with SyllabusClient("127.0.0.1:50060", token="...") as client:  # default: $SYLLABUS_TOKEN or .syllabus/token
        job = client.submit_job(open("task.yaml").read())   # seeds/eval must be inline
        for job in client.watch_job(job.job_id):
            print(job.current_step, job.step_detail)

Typed async clients of the teacher, student and trainer services (what the orchestrator's
activities call): `syllabus_sdk.services` (`TeacherClient`, `StudentClient`, `TrainerClient`).

Needs only grpcio and protobuf.
"""

from typing import TYPE_CHECKING

__all__ = ["JobStatus", "SyllabusClient", "SyllabusError"]

if TYPE_CHECKING:
    from syllabus_sdk.client import JobStatus, SyllabusClient, SyllabusError


def __getattr__(name: str):
    # The client (and grpc with it) loads on first use: importing a message module
    # (`syllabus_sdk.student.v1.student_pb2`) stays protobuf only, as workflow code needs.
    if name in __all__:
        from syllabus_sdk import client

        return getattr(client, name)
    raise AttributeError(f"module 'syllabus_sdk' has no attribute {name!r}")
