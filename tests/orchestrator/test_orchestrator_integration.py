"""The real workflow and activities against the real teacher, student and trainer servers (in-process,
on the tiny model), a real Temporal dev server, SQLite and a local artifact store."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from orchestrator.activities import Activities
from orchestrator.activity_io import (
    CritiqueInput,
    EvaluateInput,
    GenerateInput,
    PrepareJobInput,
    ScoreInput,
    SelectInput,
    TrainInput,
)
from orchestrator.metadata import Metadata
from orchestrator.types import DistillationInput
from orchestrator.worker import build_worker
from orchestrator.workflows import DistillationWorkflow
from syllabus import db
from syllabus.artifacts import ArtifactRef, open_store
from syllabus.config import Config
from syllabus.records import loads_jsonl
from syllabus.tasks import TaskSpec, dump_task

pytestmark = pytest.mark.integration

LABELS = ["greeting", "complaint", "question"]
SEEDS = [
    ("Hello there, nice to meet you!", "greeting"),
    ("Good morning to the whole team.", "greeting"),
    ("My order arrived broken and late.", "complaint"),
    ("The service was slow and rude today.", "complaint"),
    ("What time does the shop open?", "question"),
    ("How much does the blue one cost?", "question"),
]
EVAL = [
    ("Hi, how are you doing?", "greeting"),
    ("This product stopped working after a day.", "complaint"),
    ("Where can I find the manual?", "question"),
    ("Hey everyone, welcome back!", "greeting"),
]
VALIDATION = [
    ("Greetings, friends, lovely to see you.", "greeting"),
    ("I was charged twice and nobody answers.", "complaint"),
    ("Which size should I order?", "question"),
    ("The parcel never came and support ignored me.", "complaint"),
]


def tiny_task(model: Path, rounds: int) -> TaskSpec:
    return TaskSpec.model_validate(
        {
            "name": "tiny-intents",
            "kind": "classification",
            "instructions": "Classify the message. Answer with the label only.",
            "labels": LABELS,
            "seeds": [{"input": i, "label": lab} for i, lab in SEEDS],
            "eval": [{"input": i, "label": lab} for i, lab in EVAL],
            "teacher": {"model": str(model)},
            "student": {"model": str(model)},
            "rounds": rounds,
            "generate": {"per_label": 4, "temperature": 1.0, "max_new_tokens": 12, "batch_size": 8},
            "select": {"top_fraction": 0.5},
            "train": {"epochs": 1, "batch_size": 4, "lora_rank": 4, "lora_alpha": 8, "max_seq_len": 96},
        }
    )


def claim_job(config: Config, job_id: str, task: TaskSpec) -> None:
    meta = Metadata(config.resolved_database_url())
    try:
        meta.claim_job({"id": job_id, "task_name": task.name, "task_yaml": dump_task(task), "rounds_total": task.rounds})
    finally:
        meta.close()


@dataclass
class Stack:
    config: Config
    tmp: Path

    def put_task(self, job_id: str, task: TaskSpec) -> ArtifactRef:
        """Store the task and create the job's row, as the gateway's SubmitJob does before the workflow."""
        store = open_store(self.config.resolved_artifact_url())
        ref = store.put_bytes(f"jobs/{job_id}/task.yaml", dump_task(task).encode())
        claim_job(self.config, job_id, task)
        return ref

    def counts(self, job_id: str) -> dict[str, int]:
        engine = db.make_engine(self.config.resolved_database_url())
        try:
            with db.session_factory(engine)() as s:
                return {
                    m.__tablename__: db.count(s, m, job_id=job_id)
                    if m is not db.Job
                    else db.count(s, m, id=job_id)
                    for m in (
                        db.Job,
                        db.Sample,
                        db.Critique,
                        db.Score,
                        db.Selection,
                        db.TrainingRun,
                        db.Evaluation,
                        db.Round,
                    )
                }
        finally:
            engine.dispose()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, service_token: str, services
) -> AsyncIterator[Stack]:
    """Teacher, student and trainer servers on port 0, sharing one local store and SQLite file."""
    tmp = tmp_path_factory.mktemp("orchestrator-stack")
    async with services(tmp, service_token) as (config, _):
        yield Stack(config, tmp)


async def test_workflow_distils_end_to_end(
    stack: Stack, temporal_env: WorkflowEnvironment, tiny_model_dir: Path
) -> None:
    job_id = f"tiny-{uuid.uuid4().hex[:8]}"
    task = tiny_task(tiny_model_dir, rounds=2)
    inp = DistillationInput(
        job_id, stack.put_task(job_id, task), rounds=2
    )
    task_queue = f"test-{uuid.uuid4()}"
    async with build_worker(temporal_env.client, stack.config, task_queue=task_queue):
        result = await temporal_env.client.execute_workflow(
            DistillationWorkflow.run, inp, id=job_id, task_queue=task_queue
        )

    assert [r.round for r in result.rounds] == [1, 2]
    assert result.final_accuracy == result.rounds[-1].accuracy
    assert result.artifacts_uri.endswith(f"/jobs/{job_id}/")
    assert [s.round for s in result.steps if s.name == "reference-train"] == [1, 2]  # LoBaSS every round
    r1, r2 = result.rounds
    assert r1.generated > 0, "the tiny teacher generated nothing: the test exercises no data path"
    assert r1.kept > 0 and 1 <= r1.selected <= r1.kept
    assert r1.trained == r1.selected + len(SEEDS)
    assert r1.adapter_uri != r2.adapter_uri

    counts = stack.counts(job_id)
    assert counts["jobs"] == 1
    assert counts["samples"] >= len(SEEDS) + len(EVAL) + r1.kept
    assert counts["critiques"] >= r1.generated
    assert counts["scores"] > 0 and counts["selections"] == r1.selected + r2.selected
    assert counts["training_runs"] == 4  # a LoBaSS reference and an sft run per round
    assert counts["evaluations"] == 3 and counts["rounds"] == 2

    engine = db.make_engine(stack.config.resolved_database_url())
    try:
        with db.session_factory(engine)() as s:
            job = s.get(db.Job, job_id)
            assert job.status == "completed" and job.final_accuracy == pytest.approx(result.final_accuracy)
            runs = {(r.round, r.stage): r for r in s.query(db.TrainingRun).filter_by(job_id=job_id)}
            assert runs[(2, "sft")].params["init_adapter"] == r1.adapter_uri  # continued training
            assert runs[(1, "sft")].params["init_adapter"] is None
            # LoBaSS in round 2 as in the paper: the reference is trained from the current student (round
            # 1's adapter); L0 is taken under that student, Lref under the reference.
            assert runs[(1, "reference")].params["init_adapter"] is None
            assert runs[(2, "reference")].params["init_adapter"] == r1.adapter_uri
            under = {(sc.round, sc.metric): sc.model for sc in s.query(db.Score).filter_by(job_id=job_id)}
            assert under[(1, "loss_base")] == str(tiny_model_dir)
            assert under[(1, "loss_ref")] == f"{tiny_model_dir}+{runs[(1, 'reference')].adapter_uri}"
            assert under[(2, "loss_base")] == f"{tiny_model_dir}+{r1.adapter_uri}"
            assert under[(2, "loss_ref")] == f"{tiny_model_dir}+{runs[(2, 'reference')].adapter_uri}"
            rounds = {r.round: r for r in s.query(db.Round).filter_by(job_id=job_id)}
            # Every counter of a round is a column, equal to what the workflow reports.
            for r in (r1, r2):
                row = rounds[r.round]
                assert (row.generated, row.kept, row.selected, row.trained, row.leaked, row.targeted) == (
                    r.generated, r.kept, r.selected, r.trained, r.leaked, r.targeted,
                )  # fmt: skip
                assert row.accuracy == pytest.approx(r.accuracy) and row.train_loss == pytest.approx(r.train_loss)
                assert row.adapter_uri == r.adapter_uri
            # Each accuracy is its evaluation's correct / total over the whole eval set.
            evals = {e.round: e for e in s.query(db.Evaluation).filter_by(job_id=job_id) if e.stage != "validation"}
            assert {e.total for e in evals.values()} == {len(EVAL)}
            assert result.baseline_accuracy == evals[0].correct / len(EVAL)
            assert [r.accuracy for r in result.rounds] == [evals[1].correct / len(EVAL), evals[2].correct / len(EVAL)]
    finally:
        engine.dispose()

    root = stack.tmp / "artifacts" / "jobs" / job_id
    for name in ("seeds.jsonl", "eval.jsonl", "task.yaml"):
        assert (root / name).is_file()
    r1_files = {p.name.split("-")[0] for p in (root / "round-1").iterdir() if not p.name.endswith(".sha256")}
    assert {"generate", "critique", "reference", "score", "select", "train", "evaluate"} <= r1_files
    assert (root / "round-0").is_dir()


async def test_activities_are_idempotent(stack: Stack, tiny_model_dir: Path) -> None:
    """Run each service-calling activity once for real, then again with every service address pointing
    at a closed port: the same outputs come back without a call, and no SQL row is added."""
    job_id = f"idem-{uuid.uuid4().hex[:8]}"
    task = tiny_task(tiny_model_dir, rounds=1)
    task_ref = stack.put_task(job_id, task)
    env = ActivityEnvironment()

    async def run_all(acts: Activities) -> list:
        prep = await env.run(acts.prepare_job, PrepareJobInput(job_id, task_ref, 1))
        base = await env.run(
            acts.evaluate_student, EvaluateInput(job_id, task_ref, 0, "baseline", prep.eval_set)
        )
        gen = await env.run(acts.generate_examples, GenerateInput(job_id, task_ref, 1, prep.seeds))
        crit = await env.run(
            acts.critique_examples, CritiqueInput(job_id, task_ref, 1, gen.examples, prep.seeds)
        )
        ref = await env.run(acts.train_adapter, TrainInput(job_id, task_ref, 1, "reference", crit.kept))
        scores = await env.run(
            acts.score_samples, ScoreInput(job_id, task_ref, 1, crit.kept, prep.seeds, prep.validation, ref.adapter)
        )
        sel = await env.run(acts.select_samples, SelectInput(job_id, task_ref, 1, crit.kept, scores.scores, prep.seeds))
        return [prep, base, gen, crit, ref, scores, sel]

    heartbeats: list = []
    env.on_heartbeat = lambda *details: heartbeats.extend(details)
    live = Activities(stack.config)
    try:
        first = await run_all(live)
    finally:
        live.close()
    # Training reported its progress as it went.
    assert any(isinstance(h, dict) and {"step", "total", "loss"} <= h.keys() for h in heartbeats)
    gen, crit, scores = first[2], first[3], first[5]
    assert gen.generated > 0 and crit.kept_count > 0
    store = open_store(stack.config.resolved_artifact_url())
    kept_ids = {r["id"] for r in loads_jsonl(store.get_bytes(crit.kept))}
    seed_ids = {r["id"] for r in loads_jsonl(store.get_bytes(first[0].seeds))}
    assert scores.count == len(kept_ids | seed_ids)  # the candidates and the seeds (recipes read seed scores)
    scored = loads_jsonl((stack.tmp / "artifacts" / scores.scores.uri.split("/artifacts/")[1]).read_bytes())
    assert {r["id"] for r in scored} == kept_ids | seed_ids
    before = stack.counts(job_id)
    assert before["samples"] > 0 and before["scores"] > 0 and before["training_runs"] == 1

    dead = f"127.0.0.1:{closed_port()}"
    offline = Activities(
        stack.config.model_copy(
            update={"teacher_address": dead, "student_address": dead, "trainer_address": dead}
        )
    )
    try:
        second = await run_all(offline)
    finally:
        offline.close()
    assert second == first
    assert stack.counts(job_id) == before

    # A retry after a crash between "artifact published" and "rows written" completes the rows.
    engine = db.make_engine(stack.config.resolved_database_url())
    try:
        with db.session_factory(engine).begin() as s:
            s.query(db.Score).filter_by(job_id=job_id).delete()
    finally:
        engine.dispose()
    offline = Activities(stack.config.model_copy(update={"student_address": dead}))
    try:
        again = await env.run(
            offline.score_samples, ScoreInput(job_id, task_ref, 1, crit.kept, first[0].seeds, first[0].validation, first[4].adapter)
        )
    finally:
        offline.close()
    assert again == scores
    assert stack.counts(job_id) == before


async def test_service_errors_become_typed_application_errors(stack: Stack, tmp_path: Path) -> None:
    """A permanent failure (unknown model) is non-retryable; an unreachable service is retryable."""
    job_id = f"err-{uuid.uuid4().hex[:8]}"
    task = tiny_task(tmp_path / "no-such-model", rounds=1)
    task_ref = stack.put_task(job_id, task)
    env = ActivityEnvironment()
    acts = Activities(stack.config)
    try:
        prep = await env.run(acts.prepare_job, PrepareJobInput(job_id, task_ref, 1))
        with pytest.raises(ApplicationError) as permanent:
            await env.run(acts.generate_examples, GenerateInput(job_id, task_ref, 1, prep.seeds))
    finally:
        acts.close()
    assert permanent.value.type == "FAILED_PRECONDITION" and permanent.value.non_retryable

    down = Activities(stack.config.model_copy(update={"teacher_address": f"127.0.0.1:{closed_port()}"}))
    try:
        with pytest.raises(ApplicationError) as transient:
            await env.run(down.generate_examples, GenerateInput(job_id, task_ref, 1, prep.seeds))
    finally:
        down.close()
    assert transient.value.type == "UNAVAILABLE" and not transient.value.non_retryable


async def test_generate_passes_the_eval_set_to_the_leakage_guard(stack: Stack, tiny_model_dir: Path) -> None:
    """Generate once; then generate again (same seed, so the same texts) with those very texts as the
    eval set: the teacher's leakage guard must drop every one, and the count must reach the output,
    also when a retry answers from the store."""
    from syllabus.records import dumps_jsonl

    job_id = f"leak-{uuid.uuid4().hex[:8]}"
    task_ref = stack.put_task(job_id, tiny_task(tiny_model_dir, rounds=1))
    env = ActivityEnvironment()
    acts = Activities(stack.config)
    try:
        prep = await env.run(acts.prepare_job, PrepareJobInput(job_id, task_ref, 1))
        clean = await env.run(acts.generate_examples, GenerateInput(job_id, task_ref, 1, prep.seeds, prep.eval_set))
        assert clean.generated > 0 and clean.leaked == 0
        generated = loads_jsonl(acts.store.get_bytes(clean.examples))
        overlapping = acts.store.put_bytes(f"jobs/{job_id}/overlapping-eval.jsonl", dumps_jsonl(generated))
        guarded = await env.run(acts.generate_examples, GenerateInput(job_id, task_ref, 1, prep.seeds, overlapping))
        assert guarded.leaked == len(generated) and guarded.generated == 0
        again = await env.run(acts.generate_examples, GenerateInput(job_id, task_ref, 1, prep.seeds, overlapping))
        assert (again.examples, again.leaked) == (guarded.examples, guarded.leaked)
    finally:
        acts.close()


async def test_errors_of_a_round_drive_targeted_generation_in_the_next(
    stack: Stack, temporal_env: WorkflowEnvironment, tiny_model_dir: Path
) -> None:
    """generate.targeted_per_skill > 0: after round 1 the student is evaluated on the validation split
    (never the seeds or the eval set), AnalyzeErrors names its confusions, and round 2's Generate also
    runs in TARGETED mode on exactly those skills."""
    job_id = f"targeted-{uuid.uuid4().hex[:8]}"
    task = tiny_task(tiny_model_dir, rounds=2).model_dump()
    task = TaskSpec.model_validate(task | {"generate": task["generate"] | {"targeted_per_skill": 2},
                                           "validation": [{"input": i, "label": lab} for i, lab in VALIDATION]})  # fmt: skip
    inp = DistillationInput(
        job_id, stack.put_task(job_id, task), rounds=2
    )
    task_queue = f"test-{uuid.uuid4()}"
    async with build_worker(temporal_env.client, stack.config, task_queue=task_queue):
        result = await temporal_env.client.execute_workflow(DistillationWorkflow.run, inp, id=job_id, task_queue=task_queue)

    steps = [(s.round, s.name) for s in result.steps]
    assert (1, "validation-eval") in steps and (1, "analyze") in steps
    assert (2, "analyze") not in steps  # nothing follows the last round
    store = open_store(stack.config.resolved_artifact_url())
    validation = loads_jsonl(store.get_bytes(store.stat(f"jobs/{job_id}/validation.jsonl")))
    assert {r["input"] for r in validation} == {i for i, _ in VALIDATION}
    (predictions,) = [k for k in store.list_keys(f"jobs/{job_id}/round-1/") if k.split("/")[-1].startswith("evaluate-")
                      and k.endswith(".jsonl") and _stage_of(stack, job_id, store.uri_for(k)) == "validation"]
    wrong = [r for r in loads_jsonl(store.get_bytes(store.stat(predictions))) if not r["correct"]]
    (skills_key,) = [k for k in store.list_keys(f"jobs/{job_id}/round-1/") if k.split("/")[-1].startswith("analyze-")]
    skills = loads_jsonl(store.get_bytes(store.stat(skills_key)))
    assert sum(s["count"] for s in skills) == len(wrong)
    targeted_keys = [k for k in store.list_keys(f"jobs/{job_id}/round-2/") if k.split("/")[-1].startswith("generate-targeted-")
                     and k.endswith(".jsonl")]
    # The tiny random-init student gets seeds wrong (deterministically: seeded generation and training), so
    # round 2 asked the teacher for targeted examples on the confusions AnalyzeErrors named.
    assert wrong and skills
    (targeted_key,) = targeted_keys
    targeted = loads_jsonl(store.get_bytes(store.stat(targeted_key)))
    assert targeted and all(r["provenance"]["method"] == "targeted" for r in targeted)
    assert {r["label"] for r in targeted} <= {s["label"] for s in skills}
    (expansion_key,) = [k for k in store.list_keys(f"jobs/{job_id}/round-2/") if k.endswith(".jsonl")
                        and k.split("/")[-1].startswith("generate-") and k.split("/")[-1].split("-")[1] not in ("targeted", "all")]
    expansion = {r["id"] for r in loads_jsonl(store.get_bytes(store.stat(expansion_key)))}
    assert result.rounds[1].targeted == len({r["id"] for r in targeted} - expansion) > 0


def _stage_of(stack: Stack, job_id: str, predictions_uri: str) -> str | None:
    engine = db.make_engine(stack.config.resolved_database_url())
    try:
        with db.session_factory(engine)() as s:
            row = s.query(db.Evaluation).filter_by(job_id=job_id, predictions_uri=predictions_uri).one_or_none()
            return row.stage if row else None
    finally:
        engine.dispose()
