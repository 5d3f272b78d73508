"""TeacherService server wiring: the shared `syllabus.serving` setup around a `TeacherServicer`."""

from __future__ import annotations

import functools

from syllabus.artifacts import open_store
from syllabus.auth import server_tls, service_table
from syllabus.config import Config
from syllabus.serving import Served, build_server
from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from teacher_svc.backend import load_backend
from teacher_svc.service import ModelCache, TeacherServicer

SERVICE_NAME = teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name


def build_servicer(config: Config) -> TeacherServicer:
    """A servicer on the artifact store named by the config; adapters are cached under
    `home/adapter-cache`. The teacher calls no other service."""
    return TeacherServicer(
        open_store(config.resolved_artifact_url(), config),
        ModelCache(functools.partial(load_backend, endpoints=config.teacher_endpoints)),
        adapter_cache=config.home / "adapter-cache",
    )


async def create_server(
    config: Config, address: str = "127.0.0.1:0", *, servicer: TeacherServicer | None = None
) -> Served:
    """Start a TeacherService server at `address` (port 0 picks a free port); health is NOT_SERVING
    until `await served.set_serving(True)`. Pass `servicer` to keep a handle on it (e.g. to preload)."""
    servicer = servicer or build_servicer(config)
    return await build_server(
        address,
        lambda server: teacher_pb2_grpc.add_TeacherServiceServicer_to_server(servicer, server),
        (SERVICE_NAME,),
        service_table(config),
        tls=server_tls(config),
        progress=True,
    )
