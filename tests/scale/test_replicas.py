"""Replicas share the work (issue 28): `Stack(replicas=2)` runs two teacher, two student and two trainer
processes, each with a worker of its own on its service's task queue (`orchestrator.routing`), on
the tiny model. Three concurrent jobs put work on every replica and produce what one replica of each
produces; a trainer replica SIGKILLed mid-run, and left dead, has its run resumed from the checkpoint
by the other, with the clean run's adapter.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from job_runs import fingerprint, finish, submit, wait_for

from orchestrator.stack import Stack, loopback_config
from syllabus.auth import channel, service_token
from syllabus.tasks import dump_task, load_task
from syllabus_sdk.common.v1 import progress_pb2, progress_pb2_grpc

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def task_yaml(banking77_tiny, tmp_path_factory: pytest.TempPathFactory) -> str:
    raw = banking77_tiny(3, name="replicas", generate={"per_label": 6, "max_new_tokens": 24, "seed": 0},
                         train={"epochs": 12, "batch_size": 2, "reference_epochs": 4})  # fmt: skip
    path = tmp_path_factory.mktemp("replicas-task") / "task.yaml"
    path.write_text(yaml.safe_dump(raw))
    return dump_task(load_task(path))


def _stack(home: Path, tiny_model_dir: Path, replicas: int) -> Stack:
    config = loopback_config(home, task_queue=f"replicas-{replicas}", activity_heartbeat_timeout_s=5, trainer_checkpoint_every=3)
    stack = Stack(config, preload=(str(tiny_model_dir),), log=lambda _m: None, replicas=replicas)
    asyncio.run(stack.start())
    stack.supervise()
    return stack


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, task_yaml: str) -> dict:
    """What one replica of each service produces for the task."""
    stack = _stack(tmp_path_factory.mktemp("one-replica"), tiny_model_dir, 1)
    try:
        submit(stack, task_yaml, "solo")
        job = finish(stack, "solo")
        assert job.status == 2, job.error
        return fingerprint(stack, "solo")
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def replicated(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    stack = _stack(tmp_path_factory.mktemp("two-replicas"), tiny_model_dir, 2)
    try:
        yield stack
    finally:
        stack.stop()


def _progress(stack: Stack, address: str) -> progress_pb2.GetProgressResponse:
    async def ask():
        async with channel(address, service_token(stack.config)) as ch:
            return await progress_pb2_grpc.ProgressServiceStub(ch).GetProgress(progress_pb2.GetProgressRequest(), timeout=5)

    return asyncio.run(ask())


LINE = re.compile(r"^(\S+ \S+) INFO trainer_svc\.jobs: job \w+ \((\S+)\): (training|succeeded|failed|cancelled)", re.MULTILINE)


def _training_intervals(log_dir: Path, killed: dict[str, datetime]) -> list[tuple[str, str, datetime, datetime]]:
    """(job key, replica, start, end) of every training the trainer replicas' logs record; a run
    still open in a killed replica's log ends when it was killed."""
    out = []
    for log in sorted(log_dir.glob("trainer*.log")):
        if log.stem.endswith("-worker"):
            continue
        open_: dict[str, datetime] = {}
        for stamp, key, what in LINE.findall(log.read_text()):
            at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
            if what == "training":
                open_[key] = at
            elif key in open_:
                out.append((key, log.stem, open_.pop(key), at))
        out += [(key, log.stem, start, killed.get(log.stem, datetime.max)) for key, start in open_.items()]
    return out


def test_three_concurrent_jobs_put_work_on_every_replica_and_equal_one_replica(replicated: Stack, task_yaml: str, single: dict) -> None:
    assert {name: len(a) for name, a in replicated.addresses.items()} == {"teacher": 2, "student": 2, "trainer": 2}
    before = {a: _progress(replicated, a).calls for addrs in replicated.addresses.values() for a in addrs}
    jobs = ["c1", "c2", "c3"]
    for job_id in jobs:
        submit(replicated, task_yaml, job_id)
    for job_id in jobs:
        job = finish(replicated, job_id)
        assert job.status == 2, f"{job_id}: {job.error}"
    for job_id in jobs:
        assert fingerprint(replicated, job_id) == single, job_id
    took = {a: _progress(replicated, a).calls - before[a] for a in before}
    assert all(n > 0 for n in took.values()), f"a replica took no work: {took}"
    runs = _training_intervals(replicated.log_dir, {})
    parallel = [(a, b) for a in runs for b in runs if a[1] < b[1] and a[2] < b[3] and b[2] < a[3]]
    assert parallel, f"no two trainer replicas trained at the same time: {runs}"  # the jobs' runs did not queue


def test_a_trainer_replica_killed_for_good_mid_run_has_its_run_resumed_by_the_other(
    replicated: Stack, task_yaml: str, single: dict
) -> None:
    submit(replicated, task_yaml, "kill-trainer-replica")
    wait_for(replicated, "kill-trainer-replica", "train", 4)
    names = {"trainer": replicated.addresses["trainer"][0], "trainer-2": replicated.addresses["trainer"][1]}
    busy = [name for name, address in names.items() if _progress(replicated, address).busy_calls]
    assert len(busy) == 1, f"one trainer replica trains the run: {busy}"
    (victim,) = busy
    (survivor,) = set(names) - {victim}
    killed_at = datetime.now()  # the logs' clock: local time
    replicated.kill(victim, restart=False)
    job = finish(replicated, "kill-trainer-replica")
    assert job.status == 2, f"the job failed once a trainer replica was gone: {job.error}"
    assert fingerprint(replicated, "kill-trainer-replica") == single  # the clean run's adapter bytes, losses, predictions
    log = (replicated.log_dir / f"{survivor}.log").read_text()
    assert re.search(r"jobs/kill-trainer-replica/round-1/train-\S*.*\n(.*\n)*?.*resuming at stage 0 step", log), log[-2000:]
    time.sleep(0.5)
    assert replicated.pid(victim) is None  # left dead: the survivor did the rest
    runs = _training_intervals(replicated.log_dir, {victim: killed_at})
    assert {replica for _, replica, _, _ in runs} == {"trainer", "trainer-2"}
    for key, replica, start, end in runs:  # no job key trained by two replicas at once
        clash = [r for k, r, s, e in runs if k == key and r != replica and s < end and start < e]
        assert not clash, f"{key} trained on {replica} and {clash} at once"
