"""StudentService gRPC server wiring (health, reflection, port 0 via `syllabus.serving`)."""

from __future__ import annotations

from student_svc.models import ModelCache
from student_svc.service import SERVICE_NAME, StudentServicer
from syllabus.artifacts import open_store
from syllabus.auth import server_tls, service_table
from syllabus.config import Config
from syllabus.serving import Served, build_server
from syllabus_sdk.student.v1 import student_pb2_grpc


def make_servicer(config: Config, models: ModelCache | None = None) -> StudentServicer:
    """The servicer on the configured artifact store; adapters unpack under `home/cache/adapters`."""
    return StudentServicer(
        store=open_store(config.resolved_artifact_url()),
        models=models or ModelCache(),
        adapter_cache=config.home / "cache" / "adapters",
    )


async def create_server(
    config: Config, address: str = "127.0.0.1:0", servicer: StudentServicer | None = None
) -> Served:
    """Start a StudentService server at `address` (port 0 picks one); health is NOT_SERVING until
    the caller's `await served.set_serving(True)`. Pass `servicer` to share a model cache (tests,
    `--preload`)."""
    servicer = servicer or make_servicer(config)
    return await build_server(
        address,
        lambda server: student_pb2_grpc.add_StudentServiceServicer_to_server(servicer, server),
        (SERVICE_NAME,),
        service_table(config),
        tls=server_tls(config),
        progress=True,
    )
