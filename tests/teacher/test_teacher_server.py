"""TeacherService over a real grpc.aio channel: the server from `create_server` on port 0."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from syllabus import kinds
from syllabus.artifacts import LocalArtifactStore
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.records import content_id, dumps_jsonl, loads_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2
from teacher_svc.leakage import LeakageGuard

pytestmark = pytest.mark.integration

CLASSIFICATION = common_pb2.TASK_KIND_CLASSIFICATION


def generate_request(base: str, banking77, seeds_ref, **overrides) -> teacher_pb2.GenerateRequest:
    fields = {
        "model": common_pb2.ModelRef(base=base),
        "kind": CLASSIFICATION,
        "instructions": banking77.instructions,
        "labels": banking77.labels[:2],
        "seeds": ref_to_pb(seeds_ref),
        "per_label": 2,
        "sampling": common_pb2.SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, n=2, seed=3),
        "batch_size": 4,
        "output_key": "jobs/j1/round-1/generate-abc.jsonl",
        "round": 1,
    }
    fields.update(overrides)
    return teacher_pb2.GenerateRequest(**fields)


def verified(store: LocalArtifactStore, ref: common_pb2.ArtifactRef) -> list[dict]:
    """The records of `ref`, after checking its sha256 and size against the bytes on disk."""
    data = store.get_bytes(ref_from_pb(ref))
    assert hashlib.sha256(data).hexdigest() == ref.sha256 and len(data) == ref.size_bytes
    return loads_jsonl(data)


async def test_generate_then_critique(teacher, tiny_model_dir, banking77) -> None:
    stub, store = teacher
    seeds_ref = store.put_bytes("inputs/seeds.jsonl", dumps_jsonl(banking77.seeds))
    req = generate_request(str(tiny_model_dir), banking77, seeds_ref)
    resp = await stub.Generate(req)
    assert resp.generated + resp.duplicates_removed + resp.unparsable == 2 * 2 * 2
    assert resp.tokens_generated > 0
    assert resp.examples.uri == store.uri_for(req.output_key)
    records = verified(store, resp.examples)
    assert len(records) == resp.generated
    for rec in records:
        assert rec["id"] == content_id(rec["input"], rec["label"])
        assert rec["prompt"] == kinds.CLASSIFICATION.prompt(banking77.instructions, list(req.labels), rec["input"])
        assert rec["provenance"]["model"] == str(tiny_model_dir) and rec["provenance"]["round"] == 1

    # A retry finds the published output and returns it unchanged.
    assert await stub.Generate(req) == resp

    # Critique the generated examples plus hand-made ones whose fate is known.
    known = [
        {"id": "copy", "input": banking77.seeds[0]["input"], "label": banking77.seeds[0]["label"]},
        {"id": "bad-label", "input": "What is the weather like tomorrow?", "label": "weather"},
        {"id": "good", "input": "My new card still has not come after ten days.", "label": "card_arrival"},
    ]
    examples_ref = store.put_bytes("inputs/examples.jsonl", dumps_jsonl(records + known))
    creq = teacher_pb2.CritiqueRequest(
        mode=teacher_pb2.CRITIQUE_MODE_RULES,
        kind=CLASSIFICATION,
        labels=list(req.labels),
        examples=ref_to_pb(examples_ref),
        seeds=ref_to_pb(seeds_ref),
        output_key="jobs/j1/round-1/critique-abc",
    )
    cresp = await stub.Critique(creq)
    critiques = verified(store, cresp.critiques)
    kept = verified(store, cresp.kept)
    assert len(critiques) == len(records) + 3 == cresp.kept_count + cresp.dropped_count
    by_id = {c["id"]: c for c in critiques}
    assert by_id["copy"]["keep"] is False and by_id["copy"]["reason"].startswith("copies_seed")
    assert by_id["bad-label"]["reason"].startswith("label_not_in_task")
    assert by_id["good"] == {"id": "good", "keep": True, "reason": "ok"}
    assert [k["id"] for k in kept] == [c["id"] for c in critiques if c["keep"]]
    assert cresp.kept.uri.endswith("critique-abc-kept.jsonl")
    assert await stub.Critique(creq) == cresp


async def test_question_kinds_expand_questions_and_critique_them_without_labels(teacher, tiny_model_dir, banking77) -> None:
    """kind numeric (no label set): Generate writes new questions (label "", method question_expansion),
    and the rule critique vets them without the label rule."""
    stub, store = teacher
    seeds = [{"input": "Dan had 4 dollars and spent 3. How many are left?", "label": "1"},
             {"input": "Ann has 2 apples and gets 2 more. How many apples?", "label": "4"}]  # fmt: skip
    seeds_ref = store.put_bytes("inputs/q-seeds.jsonl", dumps_jsonl(seeds))
    request = generate_request(str(tiny_model_dir), banking77, seeds_ref, kind=common_pb2.TASK_KIND_NUMERIC, labels=[],
                               per_label=3, output_key="jobs/j1/round-1/generate-q.jsonl")  # fmt: skip
    response = await stub.Generate(request)
    records = verified(store, response.examples)
    assert response.generated + response.unparsable + response.duplicates_removed == 3 * 2  # prompts x n
    assert all(r["label"] == "" and r["provenance"]["method"] == "question_expansion" for r in records)
    if records:
        critique = await stub.Critique(teacher_pb2.CritiqueRequest(
            kind=common_pb2.TASK_KIND_NUMERIC, examples=response.examples, seeds=ref_to_pb(seeds_ref),
            output_key="jobs/j1/round-1/critique-q",
        ))  # fmt: skip
        reasons = [c["reason"] for c in verified(store, critique.critiques)]
        assert len(reasons) == len(records) and not any(r.startswith("label_not_in_task") for r in reasons)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"labels": []}, "labels: at least 2 labels required"),
        ({"per_label": 0}, "per_label: must be > 0"),
        ({"kind": common_pb2.TASK_KIND_UNSPECIFIED}, "kind: must be a TaskKind, got 0"),
        ({"kind": common_pb2.TASK_KIND_NUMERIC}, "labels: only classification tasks have labels"),
        ({"output_key": "../escape.jsonl"}, "output_key: invalid artifact key"),
        ({"seeds": None}, "seeds: required"),
        ({"sampling": common_pb2.SamplingParams(temperature=0.5)}, "sampling.max_new_tokens: must be > 0"),
    ],
)
async def test_generate_rejects_malformed_requests(
    teacher, tiny_model_dir, banking77, overrides, message
) -> None:
    stub, store = teacher
    seeds_ref = store.put_bytes("inputs/seeds.jsonl", dumps_jsonl(banking77.seeds))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(generate_request(str(tiny_model_dir), banking77, seeds_ref, **overrides))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(message)


async def test_generate_maps_store_and_model_errors(teacher, tiny_model_dir, tmp_path, banking77) -> None:
    stub, store = teacher
    seeds_ref = store.put_bytes("inputs/seeds.jsonl", dumps_jsonl(banking77.seeds))

    async def code(**overrides) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(generate_request(str(tiny_model_dir), banking77, seeds_ref, **overrides))
        return err.value.code()

    missing = common_pb2.ArtifactRef(uri=store.uri_for("inputs/nope.jsonl"), sha256="0" * 64, size_bytes=1)
    corrupt = common_pb2.ArtifactRef(uri=seeds_ref.uri, sha256="0" * 64, size_bytes=seeds_ref.size_bytes)
    assert await code(seeds=missing) == grpc.StatusCode.NOT_FOUND
    assert await code(seeds=corrupt) == grpc.StatusCode.DATA_LOSS
    assert (
        await code(model=common_pb2.ModelRef(base=str(tmp_path / "no-model")))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert await code(model=common_pb2.ModelRef(base="bundled:nope")) == grpc.StatusCode.FAILED_PRECONDITION


async def test_critique_rejects_malformed_requests(teacher, banking77) -> None:
    stub, store = teacher
    seeds_ref = ref_to_pb(store.put_bytes("inputs/seeds.jsonl", dumps_jsonl(banking77.seeds)))
    good = {
        "kind": CLASSIFICATION,
        "labels": banking77.labels,
        "examples": seeds_ref,
        "seeds": seeds_ref,
        "output_key": "jobs/t/c/x",
    }
    for overrides, message in [
        ({"labels": ["only"]}, "labels: at least 2 labels required"),
        ({"seeds": None}, "seeds: required"),
        ({"output_key": ""}, "output_key: invalid artifact key"),
        ({"kind": common_pb2.TASK_KIND_UNSPECIFIED}, "kind: must be a TaskKind, got 0"),
        ({"kind": common_pb2.TASK_KIND_NUMERIC}, "labels: only classification tasks have labels"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Critique(teacher_pb2.CritiqueRequest(**{**good, **overrides}))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(message)


async def test_analyze_errors_and_generate_leakage_guard(teacher, tiny_model_dir, banking77) -> None:
    stub, store = teacher
    eval_items = [{"id": f"e{i}", "input": s["input"], "label": s["label"]} for i, s in enumerate(banking77.seeds[:4])]
    eval_ref = store.put_bytes("inputs/eval.jsonl", dumps_jsonl(eval_items))
    preds = [{"id": e["id"], "label": e["label"], "prediction": banking77.labels[2], "correct": False} for e in eval_items]
    preds_ref = store.put_bytes("inputs/predictions.jsonl", dumps_jsonl(preds))
    req = teacher_pb2.AnalyzeErrorsRequest(
        kind=CLASSIFICATION, labels=banking77.labels, predictions=ref_to_pb(preds_ref), eval=ref_to_pb(eval_ref),
        output_key="jobs/j1/round-1/errors.jsonl",
    )  # fmt: skip
    resp = await stub.AnalyzeErrors(req)
    assert (resp.evaluated, resp.wrong) == (4, 4)
    skills = verified(store, resp.skills)
    assert skills[0]["confused_with"] == banking77.labels[2] and sum(s["count"] for s in skills) == 4
    assert (await stub.AnalyzeErrors(req)).skills == resp.skills  # idempotent on the output key
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AnalyzeErrors(teacher_pb2.AnalyzeErrorsRequest(kind=CLASSIFICATION, labels=banking77.labels,
                                                                  eval=ref_to_pb(eval_ref), output_key="jobs/t/x.jsonl"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "predictions" in err.value.details()

    # The seeds themselves as eval items: anything generated that copies them is a leak, counted.
    seeds_ref = store.put_bytes("inputs/seeds.jsonl", dumps_jsonl(banking77.seeds))
    gen = await stub.Generate(generate_request(str(tiny_model_dir), banking77, seeds_ref, eval=ref_to_pb(eval_ref),
                                               output_key="jobs/j1/round-1/generate-leak.jsonl"))  # fmt: skip
    assert gen.generated + gen.duplicates_removed + gen.unparsable + gen.leaked_removed == 8
    for rec in verified(store, gen.examples):
        assert LeakageGuard([e["input"] for e in eval_items]).check(rec["input"]) is None
