"""`orchestrator.routing.SERVICE_OF` names, for every activity, the service it drives: a wrong or missing
entry would send an activity to a worker beside the wrong replica (or to the workflow worker, which
in queue mode runs no service activity at all)."""

from __future__ import annotations

import inspect
import re

import pytest

from orchestrator.routing import SERVICE_OF, SERVICES, activity_queues, service_queue
from orchestrator.worker import all_activities
from syllabus.config import Config

pytestmark = pytest.mark.unit
CALLS = {"teacher": r"\._teacher\(", "student": r"\._student\(", "trainer": r"\._train\("}


def _service_called(fn) -> str | None:
    """The service an activity's own module or body calls (the per-service modules call only theirs)."""
    module = fn.__func__.__module__
    for service in SERVICES:
        if module == f"orchestrator.activities.{service}":
            return service
    source = inspect.getsource(fn)
    called = [s for s, pattern in CALLS.items() if re.search(pattern, source)]
    assert len(called) <= 1, f"{fn.__name__} calls {called}"
    return called[0] if called else None


def test_every_activity_is_routed_to_the_service_it_calls(tmp_path) -> None:
    activities = all_activities(Config(home=tmp_path))
    names = {a.__name__ for a in activities}
    assert set(SERVICE_OF) <= names, set(SERVICE_OF) - names
    routed = {a.__name__: _service_called(a) for a in activities}
    assert {n: s for n, s in routed.items() if s} == SERVICE_OF
    assert {"prepare_job", "finish_job", "tailor_inputs", "crowd_responses", "compare_baselines"} <= {n for n, s in routed.items() if s is None}


def test_service_queues_are_named_after_the_task_queue() -> None:
    assert service_queue("syllabus", "trainer") == "syllabus-trainer"
    assert activity_queues("q")["train_adapter"] == "q-trainer"
    assert activity_queues("q")["generate_examples"] == "q-teacher"
    with pytest.raises(ValueError, match="unknown service"):
        service_queue("q", "gateway")
