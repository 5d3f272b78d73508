"""One job on the whole stack (real processes: Temporal dev server, teacher, student, trainer, gateway,
worker), observed as an operator would: every component's Prometheus endpoint is scraped while the job
runs and after it, and every component exports its spans over OTLP to a collector in this process.

(a) each endpoint shows the RPC series (count and latency by method and status code) and the throughput
    series (tokens generated, samples scored and evaluated, tokens trained; the worker's Temporal SDK
    activity and request metrics) with non-zero values;
(b) the job is one trace: the gateway's SubmitJob is its root, and it holds the workflow, every activity
    Temporal's history says ran, and every RPC the three services served (client and server side).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.stack import Stack, config_env, free_port, loopback_config, metrics_urls

pytestmark = pytest.mark.e2e
SERVICES = {
    "teacher": "syllabus.teacher.v1.TeacherService",
    "student": "syllabus.student.v1.StudentService",
    "trainer": "syllabus.trainer.v1.TrainerService",
    "gateway": "syllabus.jobs.v1.JobService",
}


@dataclass(frozen=True)
class Span:
    service: str  # resource service.name, e.g. syllabus-teacher
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    kind: int  # opentelemetry.proto SpanKind: 2 server, 3 client


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it receives."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        got = []
        for rs in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            for scope in rs.scope_spans:
                got += [Span(attrs.get("service.name", ""), s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind)
                        for s in scope.spans]
        with self.lock:
            self.spans += got
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[Span]:
        with self.lock:
            return list(self.spans)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of one /metrics endpoint."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def ours(samples: dict) -> list[str]:
    """The Syllabus and gRPC samples of a scrape, readable (for failure messages)."""
    return sorted(f"{n}{dict(ls)} {v}" for (n, ls), v in samples.items() if n.startswith(("syllabus_", "grpc_server_handled")))


@dataclass
class Run:
    stack: Stack
    collector: Collector
    report: dict
    during: dict[str, int]  # component -> scrapes that succeeded while the job ran
    busy_seen: set[str]  # services seen with model work running while the job ran
    metrics: dict[str, dict]  # component -> samples scraped after the job
    activities: list[str]  # activity types in the workflow's history


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, banking77_tiny, tmp_path_factory: pytest.TempPathFactory):
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    home = tmp_path_factory.mktemp("obs-home")
    config = loopback_config(home, task_queue="obs", otlp_endpoint=f"http://127.0.0.1:{port}")
    urls = metrics_urls(config)
    assert set(urls) == {"gateway", "teacher", "student", "trainer", "worker"}
    saved = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # the components export spans within 0.2 s, not 5 s
    stack = Stack(config, preload=(str(tiny_model_dir),))
    # critique by rules: the tiny model's judge verdicts do not parse, and the student must score something
    task = banking77_tiny(2, name="obs", generate={"per_label": 1, "max_new_tokens": 8}, critique={"mode": "rules"},
                          train={"epochs": 1})
    task_file = home / "task.yaml"
    task_file.write_text(yaml.safe_dump(task))
    try:
        asyncio.run(stack.start())
        during = dict.fromkeys(urls, 0)
        busy_seen: set[str] = set()
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.1):
                for name, url in urls.items():
                    try:
                        samples = scrape(url)
                    except OSError:
                        continue
                    during[name] += 1
                    for (n, labels), v in samples.items():
                        if n == "syllabus_model_busy" and v > 0:
                            busy_seen.add(dict(labels)["service"])

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(task_file), "--json"], check=False,
                                env=config_env(config), capture_output=True, text=True, timeout=900)
        done.set()
        watcher.join()
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["status"] == "completed", report
        activities = asyncio.run(_activity_types(config, report["workflow_id"]))
        metrics = {name: scrape(url) for name, url in urls.items()}
        yield Run(stack, collector, report, during, busy_seen, metrics, activities)
    finally:
        stack.stop()
        server.stop(0)
        if saved is None:
            os.environ.pop("OTEL_BSP_SCHEDULE_DELAY", None)
        else:
            os.environ["OTEL_BSP_SCHEDULE_DELAY"] = saved


async def _activity_types(config, workflow_id: str) -> list[str]:
    from temporalio.client import Client

    client = await Client.connect(config.temporal_address, namespace=config.temporal_namespace)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return sorted({e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                   if e.HasField("activity_task_scheduled_event_attributes")})


def test_every_component_exports_rpc_and_throughput_metrics(run: Run) -> None:
    assert all(n > 0 for n in run.during.values()), f"endpoints not scraped during the job: {run.during}"
    assert run.busy_seen, "no model work seen running in syllabus_model_busy while the job ran"
    m = run.metrics
    for name, service in SERVICES.items():
        ok = total(m[name], "grpc_server_handled_total", grpc_service=service, grpc_code="OK")
        timed = total(m[name], "grpc_server_handling_seconds_count", grpc_service=service)
        seconds = total(m[name], "grpc_server_handling_seconds_sum", grpc_service=service)
        assert ok > 0 and timed >= ok and seconds > 0, f"{name}: {ok=} {timed=} {seconds=}"
    assert total(m["gateway"], "grpc_server_handled_total", grpc_method="SubmitJob", grpc_code="OK") == 1
    assert total(m["teacher"], "grpc_server_handled_total", grpc_method="Generate", grpc_code="OK") >= 1
    assert total(m["trainer"], "grpc_server_handled_total", grpc_method="StartTraining", grpc_code="OK") >= 1
    # throughput
    assert total(m["teacher"], "syllabus_teacher_generated_tokens_total") > 0, ours(m["teacher"])
    assert total(m["student"], "syllabus_student_samples_scored_total") > 0, ours(m["student"])
    assert total(m["student"], "syllabus_student_samples_evaluated_total") > 0, ours(m["student"])
    assert total(m["trainer"], "syllabus_trainer_tokens_total") > 0, ours(m["trainer"])
    # queue depth: present for every service, and nothing left waiting once the job is done
    for name in ("teacher", "student", "trainer"):
        assert ("syllabus_model_queue_depth", frozenset({("service", name)})) in m[name], name
        assert total(m[name], "syllabus_model_queue_depth") == 0 and total(m[name], "syllabus_model_busy") == 0
    # the worker's endpoint is the Temporal SDK's: activities it ran and its requests to Temporal
    worker = m["worker"]
    executed = {dict(ls).get("activity_type") for (n, ls), v in worker.items()
                if n == "temporal_activity_execution_latency_count" and v > 0}
    assert set(run.activities) <= executed, sorted({n for n, _ in worker})
    assert total(worker, "temporal_request_total") > 0, sorted({n for n, _ in worker})
    assert total(worker, "temporal_workflow_completed_total", workflow_type="DistillationWorkflow") == 1


def _wait_for_trace(collector: Collector, activities: list[str], timeout: float = 30) -> list[Span]:
    """The spans of the trace whose root is the job's SubmitJob, once every activity's span and every
    span's parent are in (a parent ends, and is exported, after its children)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = collector.snapshot()
        submits = [s for s in spans if s.name == f"{SERVICES['gateway']}/SubmitJob"]
        if submits:
            trace = [s for s in spans if s.trace_id == submits[0].trace_id]
            ids = {s.span_id for s in trace}
            complete = {f"RunActivity:{a}" for a in activities} <= {s.name for s in trace}
            if (complete and all(s.parent_id in ids for s in trace if s.parent_id)) or time.monotonic() > deadline:
                return trace
        elif time.monotonic() > deadline:
            return []
        time.sleep(0.5)


def test_the_job_is_one_trace_from_the_gateway_through_every_activity_and_service_rpc(run: Run) -> None:
    trace = _wait_for_trace(run.collector, run.activities)
    assert trace, f"no SubmitJob span; got {sorted({(s.service, s.name) for s in run.collector.snapshot()})[:40]}"
    by_id = {s.span_id: s for s in trace}
    (root,) = [s for s in trace if not s.parent_id]
    assert (root.service, root.name, root.kind) == ("syllabus-gateway", f"{SERVICES['gateway']}/SubmitJob", 2)
    orphans = [s for s in trace if s is not root and s.parent_id not in by_id]
    assert not orphans, f"spans of the job hang off spans outside it: {orphans[:5]}"
    names = {(s.service, s.name) for s in trace}
    assert ("syllabus-gateway", "StartWorkflow:DistillationWorkflow") in names
    assert ("syllabus-worker", "RunWorkflow:DistillationWorkflow") in names
    assert run.activities and {"prepare_job", "generate_examples", "train_adapter"} <= set(run.activities)
    for activity in run.activities:
        assert ("syllabus-worker", f"RunActivity:{activity}") in names, activity
    # every RPC the services served during the job (their metrics say which) is in the trace, on both sides
    for name in ("teacher", "student", "trainer"):
        served = {dict(ls)["grpc_method"] for (n, ls), v in run.metrics[name].items()
                  if n == "grpc_server_handled_total" and v > 0 and dict(ls)["grpc_service"] == SERVICES[name]}
        assert served, name
        for method in served:
            full = f"{SERVICES[name]}/{method}"
            server_spans = [s for s in trace if s.name == full and s.service == f"syllabus-{name}" and s.kind == 2]
            assert server_spans, f"{full} served but not in the job's trace"
            for span in server_spans:  # called from an activity, through the worker's client span
                client = by_id[span.parent_id]
                assert (client.service, client.kind) == ("syllabus-worker", 3), (full, client)
                assert by_id[client.parent_id].name.startswith("RunActivity:"), full
    # one trace per job: no activity of this workflow ran outside it
    stray = [s for s in run.collector.snapshot() if s.name.startswith("RunActivity:") and s.trace_id != root.trace_id]
    assert not stray, stray[:5]
