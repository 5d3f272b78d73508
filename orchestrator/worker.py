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

import asyncio
import logging
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor, Worker

from orchestrator.activities import Activities
from orchestrator.baselines import BaselineActivities, BaselineArmWorkflow
from orchestrator.judging import JudgingActivities
from orchestrator.tailoring import TailoringActivities, TailorTeacherWorkflow
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


def build_worker(client: Client, config: Config, task_queue: str | None = None) -> Worker:
    """A worker for the workflows and their activities (not started)."""
    activities = Activities(config)
    return Worker(
        client,
        task_queue=task_queue or config.task_queue,
        workflows=[DistillationWorkflow, TailorTeacherWorkflow, BaselineArmWorkflow],
        activities=activities.all() + TailoringActivities(activities).all() + JudgingActivities(activities).all()
        + BaselineActivities(activities).all(),
        interceptors=[ActivityErrorHygiene()],  # on top of the client's (tracing)
        # Heartbeats reach Temporal at least every second: a cancel reaches a training step in
        # seconds, not after the SDK's default 30 s throttle.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        default_heartbeat_throttle_interval=timedelta(seconds=1),
    )


async def run_worker(config: Config, stop: asyncio.Event | None = None) -> None:
    """Connect to Temporal and run a worker until `stop` is set (or forever when None)."""
    client = await Client.connect(
        config.temporal_address, **temporal_connect_options(config), runtime=temporal_runtime(config, config.worker_metrics_port)
    )
    worker = build_worker(client, config)
    log.info("worker polling task queue %r on %s", config.task_queue, config.temporal_address)
    if stop is None:
        await worker.run()
        return
    async with worker:
        await stop.wait()


async def _main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = load_config()
    setup_tracing(config, "worker")
    await run_worker(config, stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main())
