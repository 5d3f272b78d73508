"""What reaches a job's `error` (and the Web UI) from an activity failure no activity mapped: a
precise type and a message without SQL, parameters or server paths; mapped failures pass untouched."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError
from temporalio.exceptions import ApplicationError

from orchestrator.worker import ActivityErrorHygiene

pytestmark = pytest.mark.unit
SECRET = "INSERT INTO samples (label) VALUES ('victim answer') /srv/syllabus/home/syllabus.db"


class Raising:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def execute_activity(self, input):
        raise self.error


async def _run(error: BaseException):
    activity = ActivityErrorHygiene().intercept_activity(Raising(error))
    await activity.execute_activity(SimpleNamespace(fn=lambda: None))


@pytest.mark.parametrize(
    ("error", "kind"),
    [(OperationalError(SECRET, {"label": "victim answer"}, Exception(SECRET)), "UNAVAILABLE"),
     (OSError(errno.ENOSPC, SECRET), "RESOURCE_EXHAUSTED"),
     (KeyError(SECRET), "INTERNAL")],
)  # fmt: skip
async def test_an_unmapped_failure_is_typed_and_says_nothing_of_the_server(error: BaseException, kind: str) -> None:
    with pytest.raises(ApplicationError) as info:
        await _run(error)
    assert info.value.type == kind and not info.value.non_retryable  # a database back in a minute finishes the job
    assert "victim" not in str(info.value) and "/srv" not in str(info.value) and "INSERT" not in str(info.value)


async def test_a_mapped_failure_passes_as_it_is() -> None:
    mapped = ApplicationError("teacher: FAILED_PRECONDITION: tokenize differently", type="FAILED_PRECONDITION", non_retryable=True)
    with pytest.raises(ApplicationError) as info:
        await _run(mapped)
    assert info.value is mapped
