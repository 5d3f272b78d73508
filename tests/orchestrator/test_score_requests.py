"""What the score and select steps ask the StudentService for: the task file's IFD form and scorer
reach the ScoreRequest (the service's side of both is tested in tests/student)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from orchestrator.activities import Activities
from orchestrator.activity_io import ScoreInput, SelectInput
from syllabus.artifacts import ArtifactRef
from syllabus.config import Config
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus.tasks import dump_task, parse_task
from syllabus_sdk.student.v1 import student_pb2

pytestmark = pytest.mark.unit

BASE = """\
name: t
kind: classification
instructions: Classify.
labels: [a, b]
seeds: [{input: one, label: a}, {input: two, label: b}]
eval: [{input: three, label: a}]
student: {model: /models/student}
"""
TASK = BASE + "select: {policy: reflection}\n"
REFLECTION = "critique: {mode: reflection}\n"


def _keep_original(request: student_pb2.ScoreRequest, record: dict) -> dict:
    return {"reflection_choice": "ori", "selected_prompt": record["prompt"], "selected_response": record["response"]}


class _Student:
    """Records each ScoreRequest and answers each record with `answer(request, record)`'s columns
    (by default the reflection rule's "keep the original"): what the service would compute is not
    under test here, only what the step asks for and where it puts the answer."""

    def __init__(self, acts: Activities, answer=_keep_original) -> None:
        self.acts, self.requests, self.answer = acts, [], answer

    async def score(self, request: student_pb2.ScoreRequest) -> student_pb2.ScoreResponse:
        self.requests.append(request)
        records = loads_jsonl(self.acts.store.get_bytes(ref_from_pb(request.dataset)))
        rows = [{"id": r["id"], **self.answer(request, r)} for r in records]
        return student_pb2.ScoreResponse(
            scores=ref_to_pb(self.acts.store.put_bytes(request.output_key, dumps_jsonl(rows))), count=len(rows)
        )


def _activities(tmp_path: Path) -> Activities:
    config = Config(
        home=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        artifact_url=(tmp_path / "artifacts").as_uri(),
    )
    return Activities(config)


async def _rule_request(tmp_path: Path, extra: str, critique: str = REFLECTION) -> student_pb2.ScoreRequest:
    acts = _activities(tmp_path)
    student = _Student(acts)

    async def call(work):
        return await work(student)

    acts._student = call  # the service is faked: only the request the step builds is asserted
    try:
        task = parse_task(TASK + critique + extra)
        record = {"id": "c1", "input": "better one", "label": "b", "prompt": "p", "response": "b", "category": "reflection",
                  "reflection": {"input": "one", "label": "a"}}  # fmt: skip
        candidates = acts.store.put_bytes("jobs/j/round-1/candidates.jsonl", dumps_jsonl([record]))
        inp = SelectInput("j", ArtifactRef("file:///t", "0" * 64, 1), 1, candidates, candidates, candidates,
                          student=ArtifactRef((tmp_path / "a.tar").as_uri(), "1" * 64, 1))  # fmt: skip
        chosen, versions = await acts._reflection(inp, task, [record])
    finally:
        acts.close()
    assert versions == {"ori": 1} and chosen[0]["input"] == "one"
    (request,) = student.requests
    assert list(request.metrics) == [student_pb2.METRIC_REFLECTION]
    return request


async def test_the_reflection_rule_asks_for_the_tasks_ratio(tmp_path: Path) -> None:
    default = await _rule_request(tmp_path / "default", "")
    assert default.ifd_ratio == student_pb2.IFD_RATIO_PPL
    assert (default.model.base, default.model.adapter.sha256) == ("/models/student", "1" * 64)  # the current student
    by_score = await _rule_request(tmp_path / "score", "score: {metrics: [learnability], ifd_ratio: loss}\n")
    assert by_score.ifd_ratio == student_pb2.IFD_RATIO_LOSS
    own = "critique: {mode: reflection, reflection_ratio: loss}\n"
    assert (await _rule_request(tmp_path / "own", "", own)).ifd_ratio == student_pb2.IFD_RATIO_LOSS


async def test_the_reflection_rule_runs_on_score_model(tmp_path: Path) -> None:
    request = await _rule_request(tmp_path, "score: {metrics: [learnability], model: {model: /models/small}}\n")
    assert request.model.base == "/models/small" and not request.model.HasField("adapter")  # no student adapter fits it


async def test_select_ranks_ifd_in_the_tasks_form(tmp_path: Path) -> None:
    """Worked by hand from (conditional, unconditional) mean NLLs: a = (1, 2): PPL ratio e^-1 = 0.368,
    loss ratio 0.5; b = (4, 6): e^-2 = 0.135, 0.667. The top-1 by IFD is a in the ppl form, b in the
    loss form (both below 1, so the IFD > 1 filter keeps both)."""
    acts = _activities(tmp_path)

    async def no_sql(write, *args):  # the SQL rows are not under test
        return 0

    acts._db = no_sql
    try:
        records = [
            {"id": i, "input": i, "label": "a", "prompt": f"p {i}", "response": "a", "category": "expand"} for i in "ab"
        ]
        candidates = acts.store.put_bytes("jobs/j/round-1/candidates.jsonl", dumps_jsonl(records))
        scores = acts.store.put_bytes("jobs/j/round-1/scores.jsonl", dumps_jsonl([
            {"id": "a", "ifd_ppl": math.exp(1 - 2), "ifd_loss": 1 / 2},
            {"id": "b", "ifd_ppl": math.exp(4 - 6), "ifd_loss": 4 / 6},
        ]))  # fmt: skip
        seeds = acts.store.put_bytes("jobs/j/seeds.jsonl", b"")
        for ratio, best in (("ppl", "a"), ("loss", "b")):
            task = parse_task(
                BASE + f"score: {{metrics: [ifd], ifd_ratio: {ratio}}}\nselect: {{policy: top_k, metric: ifd, k: 1}}\n"
            )
            task_ref = acts.store.put_bytes(f"jobs/j-{ratio}/task.yaml", dump_task(task).encode())
            out = await ActivityEnvironment().run(
                acts.select_samples, SelectInput(f"j-{ratio}", task_ref, 1, candidates, scores, seeds)
            )
            assert [r["id"] for r in loads_jsonl(acts.store.get_bytes(out.train_set))] == [best], ratio
            assert out.dropped == {"not_selected": 1}
    finally:
        acts.close()


async def test_score_model_scores_ifd_in_a_request_of_its_own(tmp_path: Path) -> None:
    """With learnability, IFD would share L0's pass on the student; with score.model it goes to the
    scorer instead (no adapter), and the scores table takes its IFD from that answer."""
    acts = _activities(tmp_path)

    def answer(request: student_pb2.ScoreRequest, record: dict) -> dict:
        if request.model.base == "/models/small":
            return {"ifd_ppl": 0.25, "ifd_loss": 0.5}
        return {"loss_base": 2.0, "loss_ref": 1.0, "learnability": 0.5, "ifd_ppl": 0.75, "ifd_loss": 0.9}

    student = _Student(acts, answer)

    async def call(work):
        return await work(student)

    async def no_sql(write, *args):
        return 0

    acts._student, acts._db = call, no_sql
    try:
        task = parse_task(BASE + "score: {metrics: [learnability, ifd], model: {model: /models/small}}\n")
        task_ref = acts.store.put_bytes("jobs/j/task.yaml", dump_task(task).encode())
        record = {"id": "c1", "input": "x", "label": "a", "prompt": "p", "response": "a", "category": "expand"}
        candidates = acts.store.put_bytes("jobs/j/round-1/candidates.jsonl", dumps_jsonl([record]))
        seeds = acts.store.put_bytes("jobs/j/seeds.jsonl", b"")
        reference = acts.store.put_bytes("jobs/j/round-1/reference.tar", b"adapter")
        inp = ScoreInput("j", task_ref, 1, candidates, seeds, seeds, reference=reference)
        out = await ActivityEnvironment().run(acts.score_samples, inp)
        (row,) = loads_jsonl(acts.store.get_bytes(out.scores))
    finally:
        acts.close()
    lobass, scorer = student.requests
    assert lobass.model.base == "/models/student" and student_pb2.METRIC_IFD not in lobass.metrics
    assert (scorer.model.base, scorer.model.HasField("adapter")) == ("/models/small", False)
    assert list(scorer.metrics) == [student_pb2.METRIC_IFD]
    assert (row["ifd_ppl"], row["learnability"]) == (0.25, 0.5)
