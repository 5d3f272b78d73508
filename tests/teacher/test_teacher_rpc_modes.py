"""Every Generate and Critique mode, and Tailor (ARTE pairs), over a real grpc.aio channel on the tiny model.

The tiny model is random-init, so the text is noise: the tests check each mode's contract (counts that
add up, one record per input where promised, provenance with the request's hyperparameters on every
record, idempotent output keys), not the quality of the text.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from syllabus.artifacts import LocalArtifactStore
from syllabus.config import Config
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from teacher_svc.server import create_server
from teacher_svc.service import TeacherServicer

pytestmark = pytest.mark.integration

CLASSIFICATION = common_pb2.TASK_KIND_CLASSIFICATION
PROVENANCE_KEYS = {"method", "backend", "model", "revision", "prompt_template_hash", "sampling", "round", "params"}


@pytest.fixture
async def teacher(tmp_path: Path, service_token, service_channel):
    config = Config(home=tmp_path, artifact_url=(tmp_path / "artifacts").as_uri(), service_token=service_token)
    store = LocalArtifactStore(tmp_path / "artifacts")
    served = await create_server(config, servicer=TeacherServicer(store, adapter_cache=tmp_path / "adapters"))
    await served.set_serving(True)
    async with service_channel(served.port) as channel:
        yield teacher_pb2_grpc.TeacherServiceStub(channel), store
    await served.stop(0)


def records(store: LocalArtifactStore, ref: common_pb2.ArtifactRef) -> list[dict]:
    return loads_jsonl(store.get_bytes(ref_from_pb(ref)))


def check_provenance(recs: list[dict], model: str, **params) -> None:
    for r in recs:
        prov = r["provenance"]
        assert PROVENANCE_KEYS <= set(prov) and prov["model"] == model
        for k, v in params.items():
            assert prov["params"][k] == v, (k, prov["params"])


QUESTIONS = [
    {"id": "q1", "input": "I lost my card yesterday", "answer": "lost_or_stolen_card"},
    {"id": "q2", "input": "When will my new card arrive?", "answer": "card_arrival"},
]


async def test_generate_rationales(teacher, tiny_model_dir) -> None:
    stub, store = teacher
    q_ref = store.put_bytes("in/questions.jsonl", dumps_jsonl(QUESTIONS))
    req = teacher_pb2.GenerateRequest(
        model=common_pb2.ModelRef(base=str(tiny_model_dir)), instructions="Classify the message.",
        mode=teacher_pb2.GENERATE_MODE_RATIONALES, questions=ref_to_pb(q_ref), styles=["step_by_step", "eli5"],
        per_style=2, sampling=common_pb2.SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=1),
        batch_size=4, output_key="jobs/t/r/rationales.jsonl", retries=1,
    )  # fmt: skip
    resp = await stub.Generate(req)
    recs = records(store, resp.examples)
    assert resp.generated == len(recs) == 2 * 2 * 2  # questions x styles x per_style, failed ones included
    assert resp.failed == sum(r["status"] == "failed" for r in recs)
    assert {(r["question_id"], r["style"], r["draw"]) for r in recs} == {
        (q, s, d) for q in ("q1", "q2") for s in ("step_by_step", "eli5") for d in (0, 1)
    }
    check_provenance(recs, str(tiny_model_dir), mode="GENERATE_MODE_RATIONALES", styles=["step_by_step", "eli5"],
                     per_style=2, retries=1)  # fmt: skip
    assert (await stub.Generate(req)) == resp  # idempotent on the output key, counts included
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Generate(
            teacher_pb2.GenerateRequest(**{**_fields(req), "styles": ["poetic"], "output_key": "jobs/t/x.jsonl"})
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("styles:")


def _fields(msg) -> dict:
    return {f.name: v for f, v in msg.ListFields()}


async def test_generate_rejection_sampling(teacher, tiny_model_dir) -> None:
    stub, store = teacher
    q_ref = store.put_bytes("in/questions.jsonl", dumps_jsonl(QUESTIONS))
    req = teacher_pb2.GenerateRequest(
        model=common_pb2.ModelRef(base=str(tiny_model_dir)), instructions="Classify the message.",
        mode=teacher_pb2.GENERATE_MODE_REJECTION_SAMPLING, questions=ref_to_pb(q_ref), rejection_k=3,
        verifier="classification", sampling=common_pb2.SamplingParams(temperature=1.0, max_new_tokens=8, seed=2),
        output_key="jobs/t/r/rft.jsonl",
    )  # fmt: skip
    resp = await stub.Generate(req)
    recs = records(store, resp.examples)
    assert resp.sampled == 2 * 3
    assert resp.generated + resp.incorrect + resp.unparsable + resp.duplicate_paths == resp.sampled
    assert len(recs) == resp.generated and resp.tokens_generated > 0
    check_provenance(recs, str(tiny_model_dir), rejection_k=3, verifier="classification")
    bad = teacher_pb2.GenerateRequest(**{**_fields(req), "rejection_k": 0, "output_key": "jobs/t/r/x.jsonl"})
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Generate(bad)
    assert e.value.details().startswith("rejection_k:")
    no_answers = store.put_bytes("in/q-noanswer.jsonl", dumps_jsonl([{"id": "q", "input": "hello"}]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Generate(teacher_pb2.GenerateRequest(**{**_fields(req), "questions": ref_to_pb(no_answers),
                                                           "output_key": "jobs/t/r/y.jsonl"}))  # fmt: skip
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("questions:")


async def test_generate_targeted(teacher, tiny_model_dir, banking77) -> None:
    stub, store = teacher
    skills = [{"skill": "lost_or_stolen_card vs card_arrival", "label": "lost_or_stolen_card",
               "confused_with": "card_arrival", "count": 2, "examples": ["my card is gone"]}]  # fmt: skip
    s_ref = store.put_bytes("in/skills.jsonl", dumps_jsonl(skills))
    req = teacher_pb2.GenerateRequest(
        model=common_pb2.ModelRef(base=str(tiny_model_dir)), kind=CLASSIFICATION, instructions=banking77.instructions,
        labels=banking77.labels, mode=teacher_pb2.GENERATE_MODE_TARGETED, skills=ref_to_pb(s_ref), per_skill=3,
        sampling=common_pb2.SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=4), output_key="jobs/t/r/targeted.jsonl",
    )  # fmt: skip
    resp = await stub.Generate(req)
    recs = records(store, resp.examples)
    assert resp.generated + resp.duplicates_removed + resp.unparsable == 3 * 2
    assert all(r["label"] == "lost_or_stolen_card" and r["skill"] == skills[0]["skill"] for r in recs)
    check_provenance(recs, str(tiny_model_dir), mode="GENERATE_MODE_TARGETED", per_skill=3)
    bad = store.put_bytes("in/skills-bad.jsonl", dumps_jsonl([skills[0] | {"label": "nope"}]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Generate(
            teacher_pb2.GenerateRequest(**{**_fields(req), "skills": ref_to_pb(bad), "output_key": "jobs/t/r/z.jsonl"})
        )
    assert e.value.details().startswith("skills:")


async def test_generate_accept_exactly(teacher, tiny_model_dir, banking77) -> None:
    stub, store = teacher
    seeds_ref = store.put_bytes("in/seeds.jsonl", dumps_jsonl(banking77.seeds))
    req = teacher_pb2.GenerateRequest(
        model=common_pb2.ModelRef(base=str(tiny_model_dir)), kind=CLASSIFICATION, instructions=banking77.instructions,
        labels=banking77.labels[:2], seeds=ref_to_pb(seeds_ref), accept_exactly=3, token_budget=400,
        sampling=common_pb2.SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=5), output_key="jobs/t/r/exact.jsonl",
    )  # fmt: skip
    resp = await stub.Generate(req)
    recs = records(store, resp.examples)
    assert len(recs) == resp.generated
    # Exactly N within the budget: the seeded tiny teacher accepts 3 in its first pass (64 tokens of 400).
    assert (resp.generated, resp.budget_exhausted) == (3, False)
    assert resp.passes >= 1 and 0 < resp.tokens_generated <= 400
    check_provenance(recs, str(tiny_model_dir), accept_exactly=3, token_budget=400)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Generate(
            teacher_pb2.GenerateRequest(**{**_fields(req), "token_budget": 0, "output_key": "jobs/t/r/e2.jsonl"})
        )
    assert e.value.details().startswith("token_budget:")


@pytest.mark.parametrize(
    ("mode", "example", "produced"),
    [
        (teacher_pb2.CRITIQUE_MODE_CFT, {"question": "2+2?", "solution": "2+2=5"}, "critique"),
        (teacher_pb2.CRITIQUE_MODE_RUBRIC_REVISION, {"question": "Why save?", "answer": "Because."}, "revision"),
        (teacher_pb2.CRITIQUE_MODE_REFLECTION, {"instruction": "Say hi", "answer": "hi"}, "better_answer"),
    ],
)
async def test_critique_model_modes(teacher, tiny_model_dir, mode, example, produced) -> None:
    stub, store = teacher
    examples = [{"id": f"e{i}"} | example for i in range(3)]
    ex_ref = store.put_bytes("in/examples.jsonl", dumps_jsonl(examples))
    # A budget the step's schema fits in: under structured output every reply of the tiny model parses.
    req = teacher_pb2.CritiqueRequest(
        model=common_pb2.ModelRef(base=str(tiny_model_dir)), mode=mode, examples=ref_to_pb(ex_ref),
        sampling=common_pb2.SamplingParams(temperature=1.0, max_new_tokens=160, seed=6), batch_size=2, retries=1,
        output_key="jobs/t/c/out",
    )  # fmt: skip
    resp = await stub.Critique(req)
    replies = records(store, resp.critiques)
    rubrics = [c for c in replies if c["provenance"]["method"] == "rubric"]
    crit = [c for c in replies if c["provenance"]["method"] != "rubric"]
    assert [c["id"] for c in crit] == ["e0", "e1", "e2"]  # one record per example, in order
    assert resp.kept_count == 3 and resp.dropped_count == resp.failed_count == 0
    assert all(c["status"] == "ok" and isinstance(c[produced], str) and c[produced] for c in crit)
    check_provenance(crit, str(tiny_model_dir), mode=teacher_pb2.CritiqueMode.Name(mode), retries=1)
    assert len(records(store, resp.kept)) == resp.kept_count
    if mode == teacher_pb2.CRITIQUE_MODE_RUBRIC_REVISION:
        assert len(records(store, resp.rubrics)) == len(rubrics) == 1  # one question type, its reply in the critiques too
        assert all(c["rubric"] == rubrics[0]["rubric"] for c in crit)
    else:
        assert rubrics == []
    assert (await stub.Critique(req)) == resp
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Critique(teacher_pb2.CritiqueRequest(**{**_fields(req), "sampling": None, "output_key": "jobs/t/c/o2"}))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("sampling.")


async def test_adapter_on_unsupported_backend_and_missing_adapter(teacher, tiny_model_dir) -> None:
    stub, store = teacher
    q_ref = store.put_bytes("in/questions.jsonl", dumps_jsonl(QUESTIONS))
    missing = common_pb2.ArtifactRef(uri=store.uri_for("nope/adapter.tar"), sha256="0" * 64, size_bytes=1)
    req = teacher_pb2.GenerateRequest(
        model=common_pb2.ModelRef(base=str(tiny_model_dir), adapter=missing), instructions="x",
        mode=teacher_pb2.GENERATE_MODE_RATIONALES, questions=ref_to_pb(q_ref),
        sampling=common_pb2.SamplingParams(max_new_tokens=4), output_key="jobs/t/a/out.jsonl",
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Generate(req)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details().startswith("model.adapter:")


async def test_tailor_writes_the_pairs_and_trains_nothing(teacher) -> None:
    stub, store = teacher
    drafts, scores = [], []
    for q in range(4):
        for s, style in enumerate(("step_by_step", "eli5")):
            rid = f"q{q}-{style}"
            drafts.append(
                {
                    "id": rid,
                    "question_id": f"q{q}",
                    "question": f"My card number {q} is lost",
                    "rationale": f"{style} reasoning {q}",
                    "answer": "lost_or_stolen_card",
                    "prompt": "Write a new bank message.",
                    "completion": f'Message: "My card number {q} is lost"',
                }
            )
            scores.append({"id": rid, "question_id": f"q{q}", "arte_s_r": (q + s) / 5})  # fmt: skip
    d_ref = store.put_bytes("in/drafts.jsonl", dumps_jsonl(drafts))
    s_ref = store.put_bytes("in/scores.jsonl", dumps_jsonl(scores))
    req = teacher_pb2.TailorRequest(
        instructions="Classify the message.", drafts=ref_to_pb(d_ref), scores=ref_to_pb(s_ref),
        output_key="jobs/t/t/arte-pairs.jsonl",
    )  # fmt: skip
    resp = await stub.Tailor(req)
    # 4 questions under one prompt: quartile = 1 -> 1 question pair; every question has s_r gaps.
    assert (resp.question_pairs, resp.rationale_pairs) == (1, 4)
    assert resp.pairs.uri.endswith("jobs/t/t/arte-pairs.jsonl")
    pairs = records(store, resp.pairs)
    assert [p["level"] for p in pairs] == ["question"] + ["rationale"] * 4
    q_pair = pairs[0]
    assert (q_pair["chosen"], q_pair["rejected"]) == (drafts[6]["completion"], drafts[0]["completion"])
    assert q_pair["margin"] == pytest.approx(0.6)  # s_q(q3) = 0.7, s_q(q0) = 0.1
    for p, q in zip(pairs[1:], range(4), strict=True):
        assert (p["chosen"], p["rejected"], p["question_id"]) == (f"eli5 reasoning {q}", f"step_by_step reasoning {q}", f"q{q}")
        assert "Question: My card number" in p["prompt"] and p["margin"] == pytest.approx(0.2)
    # Nothing but the pairs was written: training and regeneration are the orchestrator's steps.
    written = sorted(str(p.relative_to(store.root)) for p in Path(store.root).rglob("*") if p.is_file())
    assert [w for w in written if w.startswith("jobs/") and not w.endswith(".sha256")] == ["jobs/t/t/arte-pairs.jsonl"]
    # A retry returns the published pairs.
    again = await stub.Tailor(req)
    assert again.pairs.sha256 == resp.pairs.sha256
    flat = store.put_bytes("in/flat.jsonl", dumps_jsonl([s | {"arte_s_r": 0.5} for s in scores]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Tailor(
            teacher_pb2.TailorRequest(**{**_fields(req), "scores": ref_to_pb(flat), "output_key": "jobs/t/t/flat.jsonl"})
        )
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Tailor(teacher_pb2.TailorRequest(**{**_fields(req), "output_key": ""}))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("output_key")
