"""GetJob/WatchJob show ETAs for a running job: the running step's from its heartbeat (step/total), the
job's from the steps it timed and the steps it still plans. A real Temporal dev server, the real
workflow and gateway; the activities are fakes registered under the loop's names."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import uuid
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from orchestrator.activity_io import (
    CritiqueInput,
    CritiqueOutput,
    EvaluateInput,
    EvaluateOutput,
    FinishJobInput,
    FinishJobOutput,
    GenerateInput,
    GenerateOutput,
    PrepareJobInput,
    PrepareJobOutput,
    ScoreInput,
    ScoreOutput,
    SelectInput,
    SelectOutput,
    TrainInput,
    TrainOutput,
)
from orchestrator.gateway import create_server
from orchestrator.types import DistillationInput, JobProgress, LoopPlan
from orchestrator.workflows import DistillationWorkflow
from syllabus import auth
from syllabus.artifacts import ArtifactRef
from syllabus.config import Config
from syllabus_sdk.jobs.v1 import jobs_pb2, jobs_pb2_grpc

pytestmark = pytest.mark.integration
ADMIN_TOKEN = "test-admin-token"


def ref(name: str) -> ArtifactRef:
    return ArtifactRef(uri=f"file:///fake/{name}", sha256=name, size_bytes=1)


def fakes(release: asyncio.Event) -> list:
    async def busy(seconds: float = 0.3) -> None:
        await asyncio.sleep(seconds)  # every step takes a measurable time

    @activity.defn(name="prepare_job")
    async def prepare_job(inp: PrepareJobInput) -> PrepareJobOutput:
        return PrepareJobOutput(ref("seeds"), ref("eval"), 4, 6, "file:///fake/", ref("val"), LoopPlan())

    @activity.defn(name="evaluate_student")
    async def evaluate_student(inp: EvaluateInput) -> EvaluateOutput:
        await busy()
        return EvaluateOutput(0.5, 2, 4, ref(f"pred-{inp.round}"))

    @activity.defn(name="generate_examples")
    async def generate_examples(inp: GenerateInput) -> GenerateOutput:
        await busy()
        return GenerateOutput(ref("gen"), 8)

    @activity.defn(name="critique_examples")
    async def critique_examples(inp: CritiqueInput) -> CritiqueOutput:
        await busy()
        return CritiqueOutput(ref("kept"), ref("crit"), 6, 2)

    @activity.defn(name="train_adapter")
    async def train_adapter(inp: TrainInput) -> TrainOutput:
        if inp.stage == "sft":  # the round's training reports 2 of 10 steps done, then waits
            while not release.is_set():
                activity.heartbeat({"state": "RUNNING", "step": 2, "total": 10, "loss": 1.25})
                await asyncio.sleep(0.2)
        await busy()
        return TrainOutput(ref(f"{inp.stage}-{inp.round}"), samples=7, steps=10, mean_loss=1.0)

    @activity.defn(name="score_samples")
    async def score_samples(inp: ScoreInput) -> ScoreOutput:
        await busy()
        return ScoreOutput(ref("scores"), 6)

    @activity.defn(name="select_samples")
    async def select_samples(inp: SelectInput) -> SelectOutput:
        await busy()
        return SelectOutput(ref("train"), selected=3, trained=7)

    @activity.defn(name="finish_job")
    async def finish_job(inp: FinishJobInput) -> FinishJobOutput:
        return FinishJobOutput(inp.status)

    return [prepare_job, evaluate_student, generate_examples, critique_examples, train_adapter, score_samples, select_samples, finish_job]


@pytest.fixture(scope="module")
async def temporal():
    path = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=path, dev_server_log_level="error")
    yield env
    await env.shutdown()


async def test_a_running_job_shows_the_steps_and_the_jobs_eta(temporal: WorkflowEnvironment, tmp_path: Path) -> None:
    tokens = tmp_path / "gateway-tokens.json"
    tokens.write_text(json.dumps({ADMIN_TOKEN: "*"}))
    config = Config(home=tmp_path, task_queue=f"tq-{uuid.uuid4()}", tokens_file=str(tokens))
    served = await create_server(config, "127.0.0.1:0", client=temporal.client)
    await served.set_serving(True)
    channel = auth.channel(f"127.0.0.1:{served.port}", ADMIN_TOKEN)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    release = asyncio.Event()
    job_id = f"eta-{uuid.uuid4().hex[:8]}"
    try:
        async with Worker(temporal.client, task_queue=config.task_queue, workflows=[DistillationWorkflow], activities=fakes(release)):
            await temporal.client.start_workflow(
                DistillationWorkflow.run, DistillationInput(job_id, ref("task"), rounds=2, heartbeat_timeout_s=5),
                id=job_id, task_queue=config.task_queue,
            )  # fmt: skip
            job = None
            for _ in range(150):  # until the round's training heartbeats
                job = (await stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))).job
                if job.current_step == "train" and job.step_detail.startswith("step 2/10"):
                    break
                await asyncio.sleep(0.2)
            assert job is not None and job.step_detail == "step 2/10 loss 1.250", job
            assert job.HasField("step_eta_s") and job.HasField("job_eta_s")
            # 2 of 10 steps done: the rest takes about four times what has passed.
            assert job.step_eta_s > 0 and job.job_eta_s > job.step_eta_s
            # The remaining plan: round 1's evaluate and all of round 2, each priced at a few tenths of a second.
            assert job.job_eta_s - job.step_eta_s == pytest.approx(8 * 0.3, rel=0.6)
            # WatchJob carries the same fields.
            stream = stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id))
            watched = (await stream.read()).job
            stream.cancel()
            assert watched.HasField("job_eta_s") and watched.current_step == "train"
            release.set()
            done = await temporal.client.get_workflow_handle(job_id, result_type=JobProgress).result()
            assert [r.round for r in done.rounds] == [1, 2]
        final = (await stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))).job
        assert final.status == jobs_pb2.JOB_STATUS_COMPLETED
        assert not final.HasField("step_eta_s") and not final.HasField("job_eta_s")  # nothing left to wait for
    finally:
        await channel.close()
        await served.stop(0)
