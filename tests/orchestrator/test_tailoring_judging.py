"""ARTE as a child workflow (TailorTeacherWorkflow) and the judge step, on a real Temporal dev server
with in-process teacher, student and trainer servers (no service calls another).

The teacher is the tiny random model (it drafts, is trained with DPO and generates with the adapter).
The ARTE student is the bundled SmolLM2-135M: the tiny model answers every probe with the same empty
string whatever the demonstration, so it would score every rationale alike and leave nothing to pair.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from orchestrator.activities import Activities
from orchestrator.judging import JudgeInput
from orchestrator.metadata import Metadata
from orchestrator.tailoring import (
    ArteSettings,
    DraftInput,
    TailorTeacherInput,
    TailorTeacherWorkflow,
)
from orchestrator.worker import build_worker
from syllabus import db
from syllabus.artifacts import ArtifactStore, open_store, training_metrics_key
from syllabus.config import Config
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus.tasks import TaskSpec, dump_task

pytestmark = pytest.mark.integration

LABELS = ["greeting", "complaint"]
INSTRUCTIONS = "Classify the message. Answer with the label only."
QUESTIONS = [
    {"id": "q0", "input": "Hello and welcome, friends!", "label": "greeting",
     "prompt": "Write a new message.", "completion": 'Message: "Hello and welcome, friends!"'},
    {"id": "q1", "input": "My parcel came broken again.", "label": "complaint",
     "prompt": "Write a new message.", "completion": 'Message: "My parcel came broken again."'},
]  # fmt: skip
PROBE_INPUTS = ["Good evening to you all.", "The refund never arrived."]
STUDENT = "bundled:smollm2-135m-instruct"


@dataclass
class Stack:
    config: Config
    store: ArtifactStore
    model: Path
    teacher_port: int

    def put_task(self, job_id: str) -> object:
        task = TaskSpec.model_validate(
            {
                "name": "tiny-arte",
                "kind": "classification",
                "instructions": INSTRUCTIONS,
                "labels": LABELS,
                "seeds": [{"input": q["input"], "label": q["label"]} for q in QUESTIONS],
                "eval": [{"input": p, "label": "greeting"} for p in PROBE_INPUTS],
                "teacher": {"model": str(self.model)},
                "student": {"model": STUDENT},
            }
        )
        ref = self.store.put_bytes(f"jobs/{job_id}/task.yaml", dump_task(task).encode())
        meta = Metadata(self.config.resolved_database_url())  # the job's row, as the gateway creates it
        try:
            meta.claim_job({"id": job_id, "task_name": task.name, "task_yaml": dump_task(task), "rounds_total": 1})
        finally:
            meta.close()
        return task, ref


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, service_token: str, services
) -> AsyncIterator[Stack]:
    async with services(tmp_path_factory.mktemp("tailoring-stack"), service_token) as (config, teacher):
        yield Stack(config, open_store(config.resolved_artifact_url()), tiny_model_dir, teacher.port)


def key_of(store: ArtifactStore, ref) -> str:
    """The store key an artifact was published at."""
    return next(k for k in store.list_keys("jobs/") if store.uri_for(k) == ref.uri)


def probes_the_student_tells_apart(stack: Stack, task: TaskSpec, demos: list[dict]) -> list[dict]:
    """Dpref whose answers are the student's own greedy answers after the first demonstration: what
    the Score RPC computes (same records, batches and precision), so that demonstration scores 1 and
    the others (other rationales, other answers) most likely less."""
    from student_svc.arte import one_shot
    from student_svc.evaluation import generate_greedy
    from syllabus.models import load_model

    model, tok = load_model(STUDENT)
    probes = [{"id": f"p{j}", "prompt": task.prompt_for(text)} for j, text in enumerate(PROBE_INPUTS)]
    convs = [one_shot(d["prompt"], d["response"], p["prompt"]) for d in demos for p in probes]
    gens = generate_greedy(
        model, tok, convs, max_new_tokens=ArteSettings().probe_max_new_tokens, batch_size=16, dtype="auto"
    )
    for j, p in enumerate(probes):
        p["answer"] = gens[j]
    return probes


async def test_tailor_teacher_workflow_trains_a_dpo_adapter_on_the_teacher(
    stack: Stack, temporal_env: WorkflowEnvironment, service_channel
) -> None:
    from syllabus.pb import ref_from_pb, ref_to_pb
    from syllabus_sdk.common.v1 import common_pb2
    from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc

    job_id = f"arte-{uuid.uuid4().hex[:8]}"
    task, task_ref = stack.put_task(job_id)
    questions = stack.store.put_bytes(f"jobs/{job_id}/questions.jsonl", dumps_jsonl(QUESTIONS))
    settings = ArteSettings(draft_max_new_tokens=24, lora_rank=4, lora_alpha=8, epochs=1, batch_size=2, max_seq_len=160)
    base = Activities(stack.config)
    # The draft step first, to build a Dpref the tiny student answers differently after different
    # rationales; the workflow's own draft step then finds this output (same key) and reuses it.
    drafted = await ActivityEnvironment().run(
        base.draft_rationales, DraftInput(job_id, task_ref, 1, questions, None, settings)
    )
    demos = loads_jsonl(stack.store.get_bytes(drafted.demos))
    assert len(demos) == len(QUESTIONS) * len(settings.styles) == drafted.rationales
    probes = probes_the_student_tells_apart(stack, task, demos)
    probe_set = stack.store.put_bytes(f"jobs/{job_id}/dpref.jsonl", dumps_jsonl(probes))

    inp = TailorTeacherInput(job_id, task_ref, 1, questions, probe_set, settings=settings)
    task_queue = f"test-{uuid.uuid4()}"
    async with build_worker(temporal_env.client, stack.config, task_queue=task_queue):
        out = await temporal_env.client.execute_workflow(
            TailorTeacherWorkflow.run, inp, id=job_id, task_queue=task_queue
        )

    assert out.drafts == drafted.drafts
    scores = loads_jsonl(stack.store.get_bytes(out.scores))
    assert sorted(s["id"] for s in scores) == sorted(d["id"] for d in demos)
    assert {s["arte_s_r"] * len(probes) for s in scores} <= set(range(len(probes) + 1))  # hits / |Dpref|
    # The pairs: the record shape Tailor promises, and the counts it reported.
    pairs = loads_jsonl(stack.store.get_bytes(out.pairs))
    by_q: dict[str, list[float]] = {}
    for sc in scores:
        by_q.setdefault(sc["question_id"], []).append(sc["arte_s_r"])
    assert by_q["q0"][0] == 1.0, scores  # the demonstration Dpref was built from
    s_q = {q: sum(v) / len(v) for q, v in by_q.items()}
    assert out.rationale_pairs == sum(max(v) > min(v) for v in by_q.values())
    assert out.question_pairs == (s_q["q0"] != s_q["q1"])  # two questions under one prompt: one pair
    assert out.question_pairs + out.rationale_pairs >= 1, f"the student scored everything alike: {scores}"
    assert len(pairs) == out.question_pairs + out.rationale_pairs
    assert [p["level"] for p in pairs].count("rationale") == out.rationale_pairs
    by_id = {s["id"]: s["arte_s_r"] for s in scores}
    drafts = {d["id"]: d for d in loads_jsonl(stack.store.get_bytes(out.drafts))}
    for p in pairs:
        assert set(p) == {"prompt", "chosen", "rejected", "level", "margin", "question_id"} and p["margin"] > 0
        if p["level"] == "rationale":
            chosen = next(
                i for i, d in drafts.items() if d["question_id"] == p["question_id"] and d["rationale"] == p["chosen"]
            )
            rejected = next(
                i for i, d in drafts.items() if d["question_id"] == p["question_id"] and d["rationale"] == p["rejected"]
            )
            assert by_id[chosen] - by_id[rejected] == pytest.approx(p["margin"])
    # A DPO adapter on the teacher: the trainer's metrics record beside it, and SQL indexes it.
    metrics = json.loads(
        stack.store.get_bytes(stack.store.stat(training_metrics_key(key_of(stack.store, out.adapter))))
    )
    assert out.dpo_steps == metrics["steps"] > 0
    engine = db.make_engine(stack.config.resolved_database_url())
    try:
        with db.session_factory(engine)() as s:
            kinds = {a.kind: a.uri for a in s.query(db.Artifact).filter_by(job_id=job_id)}
    finally:
        engine.dispose()
    assert kinds["adapter-teacher-dpo"] == out.adapter.uri and kinds["arte-pairs"] == out.pairs.uri
    # The aligned teacher generates with the adapter.
    async with service_channel(stack.teacher_port) as channel:
        gen = await teacher_pb2_grpc.TeacherServiceStub(channel).Generate(
            teacher_pb2.GenerateRequest(
                model=common_pb2.ModelRef(base=str(stack.model), adapter=ref_to_pb(out.adapter)),
                instructions=INSTRUCTIONS, mode=teacher_pb2.GENERATE_MODE_RATIONALES, questions=ref_to_pb(questions),
                styles=["concise"], sampling=common_pb2.SamplingParams(temperature=0, max_new_tokens=8),
                output_key=f"jobs/{job_id}/aligned-rationales.jsonl",
            )
        )  # fmt: skip
    regenerated = loads_jsonl(stack.store.get_bytes(ref_from_pb(gen.examples)))
    assert len(regenerated) == len(QUESTIONS)
    assert all(r["provenance"]["adapter"] == out.adapter.sha256 for r in regenerated)

    # Retried as a whole, the workflow finds every output and trains nothing again.
    async with build_worker(temporal_env.client, stack.config, task_queue=task_queue):
        again = await temporal_env.client.execute_workflow(
            TailorTeacherWorkflow.run, inp, id=f"{job_id}-again", task_queue=task_queue
        )
    assert again == out


async def test_judge_step_asks_the_teacher_about_the_students_answers(stack: Stack, service_channel) -> None:
    from syllabus.pb import ref_from_pb, ref_to_pb
    from syllabus_sdk.common.v1 import common_pb2
    from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

    job_id = f"judge-{uuid.uuid4().hex[:8]}"
    _, task_ref = stack.put_task(job_id)
    items = [
        {"id": "o1", "prompt": "Write a sentence about the sea.", "label": ""},
        {"id": "o2", "prompt": "Describe a cat.", "label": ""},
    ]
    eval_set = stack.store.put_bytes(f"jobs/{job_id}/open.jsonl", dumps_jsonl(items))
    async with service_channel(int(stack.config.student_address.rsplit(":", 1)[1])) as channel:
        resp = await student_pb2_grpc.StudentServiceStub(channel).Evaluate(
            student_pb2.EvaluateRequest(
                model=common_pb2.ModelRef(base=STUDENT), kind=common_pb2.TASK_KIND_OPEN_ENDED,
                eval_set=ref_to_pb(eval_set), max_new_tokens=8, output_key=f"jobs/{job_id}/predictions.jsonl",
            )
        )  # fmt: skip
    predictions = ref_from_pb(resp.predictions)
    # One answer left empty: judged wrong without asking the teacher.
    rows = loads_jsonl(stack.store.get_bytes(predictions))
    assert rows[0]["generation"].strip(), "the student wrote no answer: the teacher would be asked nothing"
    rows[1]["generation"] = "  "
    predictions = stack.store.put_bytes(f"jobs/{job_id}/predictions-edited.jsonl", dumps_jsonl(rows))

    base = Activities(stack.config)
    judging = base  # the judge step is one of the loop's activities
    inp = JudgeInput(job_id, task_ref, 0, "judge", predictions, eval_set)
    out = await ActivityEnvironment().run(judging.judge_answers, inp)

    verdicts = loads_jsonl(stack.store.get_bytes(out.verdicts))
    assert [v["id"] for v in verdicts] == ["o1", "o2"] and out.total == 2
    assert verdicts[1] == {"id": "o2", "generation": "  ", "correct": False, "reason": "empty answer"}
    assert isinstance(verdicts[0]["reason"], str) and verdicts[0]["reason"] and verdicts[0]["reason"] != "empty answer"
    assert out.correct == sum(v["correct"] for v in verdicts) and out.accuracy == out.correct / 2
    critiques = stack.store.stat(
        key_of(stack.store, out.verdicts).removesuffix("-verdicts.jsonl") + "-critique-critiques.jsonl"
    )
    assert critiques is not None and [c["id"] for c in loads_jsonl(stack.store.get_bytes(critiques))] == ["o1"]
    # A retry answers from the published critiques with the same verdicts.
    assert await ActivityEnvironment().run(judging.judge_answers, inp) == out


def test_win_rate_over_the_base_counts_wins_ties_and_losses_by_hand() -> None:
    from orchestrator.judging import win_rate_over

    base = {"a": False, "b": True, "c": True, "d": False}
    rows = [
        {"id": "a", "correct": True},  # a win: right where the base was wrong -> 1
        {"id": "b", "correct": True},  # a tie, both right -> 0.5
        {"id": "c", "correct": False},  # a loss: wrong where the base was right -> 0
        {"id": "d", "correct": False},  # a tie, both wrong -> 0.5
        {"id": "e", "correct": True},  # never judged for the base: not counted
    ]
    assert win_rate_over(rows, base) == (1 + 0.5 + 0 + 0.5) / 4
    assert win_rate_over([{"id": "a", "correct": True}], base) == 1.0
    assert win_rate_over([{"id": "x", "correct": True}], base) is None
