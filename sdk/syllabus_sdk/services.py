"""Typed async clients for the teacher, student and trainer services (as `SyllabusClient` is for the
JobService gateway): one method per RPC taking its request message, one error mapping.

    from syllabus_sdk.services import TrainerClient
    async with TrainerClient("127.0.0.1:50053", token=service_token) as trainer:
        final = await trainer.train_to_completion(request, on_event=print)
        print(final.adapter.uri)

Every call carries `authorization: Bearer <token>` (the services accept the service-role token only).
Every failed call raises `ServiceError(code, details)`; a training run that ends FAILED or CANCELLED
raises `TrainingFailed` / `TrainingCancelled`. Needs only grpcio and protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc
from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from syllabus_sdk.trainer.v1 import trainer_pb2, trainer_pb2_grpc

R = TypeVar("R")

# How long `train_to_completion` gives CancelTraining when the awaiting task is cancelled.
CANCEL_TIMEOUT_S = 5.0


class ServiceError(Exception):
    """A service call failed: `code` is the gRPC status code, `details` the server's message,
    `method` the RPC ("TrainerService.StartTraining")."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "") -> None:
        super().__init__(f"{method + ' failed: ' if method else ''}{code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method


class TrainingError(Exception):
    """A training run did not succeed: `training_id` and the trainer's `message`."""

    def __init__(self, training_id: str, message: str, what: str) -> None:
        super().__init__(f"training {training_id} {what}: {message}")
        self.training_id = training_id
        self.message = message


class TrainingFailed(TrainingError):
    """The run ended TRAINING_STATE_FAILED."""

    def __init__(self, training_id: str, message: str) -> None:
        super().__init__(training_id, message, "failed")


class TrainingCancelled(TrainingError):
    """The run ended TRAINING_STATE_CANCELLED (someone cancelled the training job itself)."""

    def __init__(self, training_id: str, message: str) -> None:
        super().__init__(training_id, message, "was cancelled")


class TrainingInterrupted(TrainingError):
    """WatchTraining ended before a terminal state (the trainer restarted): starting the same
    `job_key` again re-attaches to the job or resumes it from its checkpoint."""

    def __init__(self, training_id: str) -> None:
        super().__init__(training_id, "the progress stream ended before the job finished", "was interrupted")


# -- authentication --------------------------------------------------------------------------------


class _AddToken:
    def __init__(self, token: str) -> None:
        self._md = (("authorization", f"Bearer {token}"),)

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = tuple(d.metadata or ()) + self._md
        return grpc.aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)


# grpc.aio files each interceptor under one call kind only, hence one class per kind.
class _UnaryToken(_AddToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _StreamToken(_AddToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _BidiToken(_AddToken, grpc.aio.StreamStreamClientInterceptor):  # server reflection
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def authenticated_channel(
    address: str, token: str, options: list | None = None, root_certificates: bytes | None = None
) -> grpc.aio.Channel:
    """An aio channel that sends `authorization: Bearer <token>` on every call; over TLS, verifying
    the server against `root_certificates` (PEM), when given."""
    interceptors = [_UnaryToken(token), _StreamToken(token), _BidiToken(token)]
    if root_certificates:
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.aio.secure_channel(address, creds, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


# -- clients ---------------------------------------------------------------------------------------


class _ServiceClient:
    """A channel (owned unless given) and the one error mapping every RPC goes through."""

    service = ""

    def __init__(
        self, address: str = "", *, token: str = "", channel: grpc.aio.Channel | None = None, timeout: float | None = None,
        root_certificates: bytes | None = None,
    ) -> None:
        if channel is None and not address:
            raise ValueError("an address or a channel is required")
        self._owned = channel is None
        self.channel = channel if channel is not None else authenticated_channel(address, token, None, root_certificates)
        self.address = address
        # Per-call deadline; None: none (compute RPCs take as long as the model needs).
        self.timeout = timeout

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owned:
            await self.channel.close()

    async def _call(self, name: str, call: Callable[..., Awaitable[R]], request: Any, timeout: float | None = None) -> R:
        try:
            return await call(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.aio.AioRpcError as e:
            raise ServiceError(e.code(), e.details() or "", f"{self.service}.{name}") from None

    async def _stream(self, name: str, call: Callable[..., Any], request: Any) -> AsyncIterator[Any]:
        try:
            async for item in call(request, timeout=self.timeout):
                yield item
        except grpc.aio.AioRpcError as e:
            raise ServiceError(e.code(), e.details() or "", f"{self.service}.{name}") from None


class TeacherClient(_ServiceClient):
    """syllabus.teacher.v1.TeacherService."""

    service = "TeacherService"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stub = teacher_pb2_grpc.TeacherServiceStub(self.channel)

    async def generate(self, request: teacher_pb2.GenerateRequest) -> teacher_pb2.GenerateResponse:
        return await self._call("Generate", self._stub.Generate, request)

    async def critique(self, request: teacher_pb2.CritiqueRequest) -> teacher_pb2.CritiqueResponse:
        return await self._call("Critique", self._stub.Critique, request)

    async def analyze_errors(self, request: teacher_pb2.AnalyzeErrorsRequest) -> teacher_pb2.AnalyzeErrorsResponse:
        return await self._call("AnalyzeErrors", self._stub.AnalyzeErrors, request)

    async def tailor(self, request: teacher_pb2.TailorRequest) -> teacher_pb2.TailorResponse:
        return await self._call("Tailor", self._stub.Tailor, request)

    async def top_logprobs(self, request: teacher_pb2.TopLogprobsRequest) -> teacher_pb2.TopLogprobsResponse:
        return await self._call("TopLogprobs", self._stub.TopLogprobs, request)


class StudentClient(_ServiceClient):
    """syllabus.student.v1.StudentService."""

    service = "StudentService"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stub = student_pb2_grpc.StudentServiceStub(self.channel)

    async def score(self, request: student_pb2.ScoreRequest) -> student_pb2.ScoreResponse:
        return await self._call("Score", self._stub.Score, request)

    def score_stream(self, request: student_pb2.ScoreRequest) -> AsyncIterator[student_pb2.ScoreStreamResponse]:
        """Score with progress: ScoreStreamResponse messages, the result last."""
        return self._stream("ScoreStream", self._stub.ScoreStream, request)

    async def sample(self, request: student_pb2.SampleRequest) -> student_pb2.SampleResponse:
        return await self._call("Sample", self._stub.Sample, request)

    async def evaluate(self, request: student_pb2.EvaluateRequest) -> student_pb2.EvaluateResponse:
        return await self._call("Evaluate", self._stub.Evaluate, request)

    async def select(self, request: student_pb2.SelectRequest) -> student_pb2.SelectResponse:
        return await self._call("Select", self._stub.Select, request)


class TrainerClient(_ServiceClient):
    """syllabus.trainer.v1.TrainerService."""

    service = "TrainerService"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)

    async def start_training(self, request: trainer_pb2.StartTrainingRequest) -> trainer_pb2.StartTrainingResponse:
        return await self._call("StartTraining", self._stub.StartTraining, request)

    def watch_training(
        self, request: trainer_pb2.WatchTrainingRequest
    ) -> AsyncIterator[trainer_pb2.WatchTrainingResponse]:
        return self._stream("WatchTraining", self._stub.WatchTraining, request)

    async def cancel_training(
        self, request: trainer_pb2.CancelTrainingRequest, timeout: float | None = None
    ) -> trainer_pb2.CancelTrainingResponse:
        return await self._call("CancelTraining", self._stub.CancelTraining, request, timeout)

    async def train_to_completion(
        self,
        request: trainer_pb2.StartTrainingRequest,
        on_event: Callable[[trainer_pb2.WatchTrainingResponse], None] | None = None,
        on_started: Callable[[str], None] | None = None,
    ) -> trainer_pb2.WatchTrainingResponse:
        """Start (or, for a known `job_key`, re-attach to) a training run and follow it to the end.

        Calls `on_started(training_id)` once started and `on_event(event)` for every progress event
        (the terminal one included). Returns the SUCCEEDED event (its `adapter` is the output);
        raises `TrainingFailed` / `TrainingCancelled` for the other terminal states,
        `TrainingInterrupted` if the stream ends first, `ServiceError` if a call fails. If the
        awaiting task is cancelled, the training job is cancelled too (best effort, a few seconds)
        so it neither burns the trainer nor publishes an adapter nobody waits for.
        """
        training_id = ""
        # The start runs shielded: a cancel that arrives while StartTraining is in flight waits (a few
        # seconds at most) for the job's id, so the job the trainer has just started is cancelled too.
        start = asyncio.ensure_future(self.start_training(request))
        try:
            try:
                started = await asyncio.shield(start)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):  # no id (the start failed or hung): nothing to cancel
                    training_id = (await asyncio.wait_for(start, CANCEL_TIMEOUT_S)).training_id
                raise
            training_id = started.training_id
            if on_started is not None:
                on_started(training_id)
            watch = trainer_pb2.WatchTrainingRequest(training_id=training_id)
            async for event in self.watch_training(watch):
                if on_event is not None:
                    on_event(event)
                if event.state == trainer_pb2.TRAINING_STATE_FAILED:
                    raise TrainingFailed(training_id, event.message)
                if event.state == trainer_pb2.TRAINING_STATE_CANCELLED:
                    raise TrainingCancelled(training_id, event.message)
                if event.state == trainer_pb2.TRAINING_STATE_SUCCEEDED:
                    return event
        except asyncio.CancelledError:
            if training_id:
                with contextlib.suppress(ServiceError, asyncio.TimeoutError):
                    await self.cancel_training(
                        trainer_pb2.CancelTrainingRequest(training_id=training_id), timeout=CANCEL_TIMEOUT_S
                    )
            raise
        raise TrainingInterrupted(training_id)
