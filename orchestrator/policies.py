"""Timeouts and the retry policy every workflow step shares (the loop and the tailoring child)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# Training and generation on a CPU can take many minutes; heartbeats, not this, detect a dead service.
START_TO_CLOSE = timedelta(minutes=30)
# Short data steps (prepare, finish) do not heartbeat.
SHORT_TIMEOUT = timedelta(minutes=5)
# Transient failures (a service restarting, a worker lost) retry for about 5 minutes, long enough
# for a supervised component to come back; non-retryable errors (bad input) fail at once.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=14,
)
