"""The orchestrator worker: runs DistillationWorkflow, TailorTeacherWorkflow (ARTE), BaselineArmWorkflow
(the task's baseline arms) and their activities, and the judge step, on the configured task queue.

Run it (the services and a Temporal server must be reachable; settings come from `SYLLABUS_*`):

    SYLLABUS_TEMPORAL_ADDRESS=127.0.0.1:7233 SYLLABUS_TASK_QUEUE=syllabus python -m orchestrator.worker

The Temporal SDK's metrics are served at SYLLABUS_WORKER_METRICS_PORT (0: off); with SYLLABUS_OTLP_ENDPOINT
the workflow and activity spans (and the service calls under them) join each job's trace.

On SIGTERM or SIGINT it stops polling and cancels its in-flight activities; Temporal retries them on
another worker, and because every activity is idempotent the retry picks up their published outputs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartActivityInput,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from orchestrator.activities import Activities
from orchestrator.baselines import BaselineArmWorkflow
from orchestrator.routing import SERVICE_OF, SERVICES, activity_queues, service_queue
from orchestrator.tailoring import TailorTeacherWorkflow
from orchestrator.workflows import DistillationWorkflow
from syllabus.config import Config, load_config
from syllabus.telemetry import setup_tracing, temporal_connect_options, temporal_runtime

log = logging.getLogger(__name__)


class ActivityErrorHygiene(Interceptor):
    """An activity failure no activity mapped (an SQL error, a full disk, a store that is down) becomes
    an ApplicationError with a precise type and a message without server detail, so neither the job's
    `error` nor the Web UI shows SQL, its parameters or server paths; the whole exception goes to the
    worker's log. It stays retryable: a database or disk back in a minute finishes the job."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _HygienicActivity(next)


class _HygienicActivity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput):
        try:
            return await super().execute_activity(input)
        except (ApplicationError, CancelledError, asyncio.CancelledError):
            raise
        except Exception as e:  # what no activity mapped
            from syllabus.auth import unexpected_status

            code, message = unexpected_status(e)
            log.error("activity %s: %s", getattr(input.fn, "__name__", "?"), code.name, exc_info=e)
            raise ApplicationError(message, type=code.name) from None


class ServiceQueues(Interceptor):
    """Sends each activity that drives a service to that service's task queue (`orchestrator.routing`)."""

    def __init__(self, queues: dict[str, str]) -> None:
        self.queues = dict(queues)

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        queues = self.queues

        class Outbound(WorkflowOutboundInterceptor):
            def start_activity(self, input: StartActivityInput):
                if input.task_queue is None and input.activity in queues:
                    input.task_queue = queues[input.activity]
                return super().start_activity(input)

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(Outbound(outbound))

        return Inbound


def all_activities(config: Config) -> list[Callable[..., Awaitable[Any]]]:
    """Every activity of the loop and its child flows, over one set of resources."""
    return Activities(config).all()


def build_worker(client: Client, config: Config, task_queue: str | None = None, service: str | None = None) -> Worker:
    """A worker (not started) for the workflows and their activities on `task_queue`; with
    `config.service_queues`, for the workflows and the activities that drive no service, the others
    going to their service's queue; with `service`, for that service's activities only, on its queue,
    `config.service_worker_slots` at a time (the worker beside one replica)."""
    queue = task_queue or config.task_queue
    activities = all_activities(config)
    workflows: list[type] = [DistillationWorkflow, TailorTeacherWorkflow, BaselineArmWorkflow]
    interceptors: list[Interceptor] = [ActivityErrorHygiene()]  # on top of the client's (tracing)
    slots: dict[str, int] = {}
    if service is not None:
        activities = [a for a in activities if SERVICE_OF.get(a.__name__) == service]
        queue, workflows = service_queue(queue, service), []
        slots["max_concurrent_activities"] = config.service_worker_slots
    elif config.service_queues:
        activities = [a for a in activities if a.__name__ not in SERVICE_OF]
        interceptors.append(ServiceQueues(activity_queues(queue)))
    return Worker(
        client,
        task_queue=queue,
        workflows=workflows,
        activities=activities,
        interceptors=interceptors,
        # Heartbeats reach Temporal at least every second: a cancel reaches a training step in
        # seconds, not after the SDK's default 30 s throttle.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        default_heartbeat_throttle_interval=timedelta(seconds=1),
        **slots,
    )


# A service worker stops polling once its replica failed this many health checks in a row (2 s apart).
SERVICE_DOWN_CHECKS = 3


async def _service_down(address: str, stop: asyncio.Event, ca: bytes | None) -> None:
    """Return once the replica at `address` failed SERVICE_DOWN_CHECKS health checks in a row (or `stop`)."""
    from syllabus.serving import wait_healthy

    failures = 0
    while failures < SERVICE_DOWN_CHECKS and not stop.is_set():
        try:
            await wait_healthy(address, timeout=2, root_certificates=ca)
            failures = 0
            await asyncio.sleep(2)
        except TimeoutError:
            failures += 1


async def run_worker(config: Config, stop: asyncio.Event | None = None, service: str | None = None) -> int:
    """Connect to Temporal and run a worker until `stop` is set (or forever when None); 0 then.

    A service's worker (`service`) polls only while its replica is healthy: it waits for it first and,
    once the replica is down, stops taking work and returns 3, so its supervisor (a `syllabus up`
    stack, a pod's restart policy) starts it again to wait for the replica; the activities it had
    fail over to the other replicas' workers instead of failing here attempt after attempt."""
    from syllabus.auth import client_ca
    from syllabus.serving import wait_healthy

    stop = stop or asyncio.Event()
    address = getattr(config, f"{service}_address") if service else ""
    ca = client_ca(config)
    if service:
        log.info("waiting for the %s replica at %s", service, address)
        await wait_healthy(address, timeout=24 * 3600, root_certificates=ca)
    client = await Client.connect(
        config.temporal_address, **temporal_connect_options(config), runtime=temporal_runtime(config, config.worker_metrics_port)
    )
    worker = build_worker(client, config, service=service)
    log.info("worker polling task queue %r on %s", worker.task_queue, config.temporal_address)
    async with worker:
        if not service:
            await stop.wait()
            return 0
        down = asyncio.create_task(_service_down(address, stop, ca))
        await asyncio.wait({down, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            return 0
        log.warning("the %s replica at %s is down: this worker stops taking its work", service, address)
        return 3


async def _main() -> int:
    parser = argparse.ArgumentParser(description="The Syllabus orchestrator worker.")
    parser.add_argument("--service", choices=SERVICES, help="run only this service's activities, beside one of its "
                        "replicas (SYLLABUS_<SERVICE>_ADDRESS), on its task queue (needs SYLLABUS_SERVICE_QUEUES)")  # fmt: skip
    args = parser.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = load_config()
    if args.service and not config.service_queues:
        parser.error("--service needs SYLLABUS_SERVICE_QUEUES=true (the workflow worker must route to the service queues)")
    setup_tracing(config, f"worker-{args.service}" if args.service else "worker")
    return await run_worker(config, stop, args.service)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(_main()))
