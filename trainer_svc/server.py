"""TrainerService over gRPC: maps requests onto `trainer_svc.jobs` and errors onto status codes.

Tests and `__main__` build it the same way:

    served = await create_server(config)          # port 0: a free port, see served.port
    await served.set_serving(True)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from syllabus.artifacts import (
    InvalidKey,
    open_store,
    validate_output_key,
    validate_sha256,
)
from syllabus.auth import server_tls, service_table
from syllabus.config import Config
from syllabus.models import ModelNotFound
from syllabus.pb import first_nonfinite
from syllabus.serving import InvalidRequest, RequestFailed, Served, abort_invalid, build_server
from syllabus_sdk.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from trainer_svc.jobs import TrainingJobs, plan_from_request

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


def jobs_for(config: Config) -> TrainingJobs:
    """The job registry a server of this config uses (adapters fetched for continued training are
    cached under `home/adapter-cache`; checkpoints every `config.trainer_checkpoint_every` steps)."""
    store = open_store(config.resolved_artifact_url(), config)
    return TrainingJobs(store, config.home / "adapter-cache", checkpoint_every=config.trainer_checkpoint_every,
                        orphan_timeout=config.trainer_orphan_timeout_s)


def check_request(request: trainer_pb2.StartTrainingRequest) -> None:
    """What `plan_from_request` leaves to the service: no inf/NaN anywhere, outputs only under a job
    prefix (jobs/<job id>/...), and every reference's sha256 64 lower-case hex (raises InvalidRequest)."""
    if bad := first_nonfinite(request):
        raise InvalidRequest(bad, "must be a finite number (no inf or NaN)")
    for field in ("output_key", "merged_output_key"):
        if key := getattr(request, field):
            try:
                validate_output_key(key)
            except InvalidKey as e:
                raise InvalidRequest(field, str(e)) from None
    for field, ref in (("dataset", request.dataset), ("model.adapter", request.model.adapter)):
        if ref.uri:
            try:
                validate_sha256(ref.sha256)
            except InvalidKey as e:
                raise InvalidRequest(f"{field}.sha256", str(e)) from None


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, jobs: TrainingJobs) -> None:
        self.jobs = jobs

    async def StartTraining(
        self, request: trainer_pb2.StartTrainingRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.StartTrainingResponse:
        try:
            check_request(request)
            job, existing = await self.jobs.start(plan_from_request(request))
        except RequestFailed as e:
            await e.abort(context)
        except ModelNotFound as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"model.base: {e}")
        except InvalidKey as e:  # the inputs' keys are mapped by the plan: this is the output's
            await abort_invalid(context, "output_key", str(e))
        return trainer_pb2.StartTrainingResponse(training_id=job.training_id, existing=existing)

    async def _job(self, training_id: str, context: grpc.aio.ServicerContext):
        """The job a Watch/Cancel request names, or INVALID_ARGUMENT / NOT_FOUND."""
        if not training_id:
            await abort_invalid(context, "training_id", "must not be empty")
        job = self.jobs.get(training_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no training job {training_id!r} in this service")
        return job

    async def WatchTraining(
        self, request: trainer_pb2.WatchTrainingRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.WatchTrainingResponse]:
        job = await self._job(request.training_id, context)
        async for event in job.follow():
            yield event

    async def CancelTraining(
        self, request: trainer_pb2.CancelTrainingRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.CancelTrainingResponse:
        job = await self._job(request.training_id, context)
        return trainer_pb2.CancelTrainingResponse(cancelled=bool(self.jobs.cancel(job.training_id)))


async def create_server(
    config: Config, address: str = "127.0.0.1:0", *, jobs: TrainingJobs | None = None
) -> Served:
    """Start a TrainerService at `address` (health NOT_SERVING until `served.set_serving(True)`).

    Pass `jobs` to keep a handle on the registry (to `close()` it on shutdown); by default one is
    built from `config` with `jobs_for`.
    """
    servicer = TrainerServicer(jobs if jobs is not None else jobs_for(config))
    return await build_server(
        address,
        lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
        (SERVICE_NAME,),
        service_table(config),
        tls=server_tls(config),
        progress=True,
    )
