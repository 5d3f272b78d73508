"""Integration tests: a real StudentService on port 0, called over a grpc.aio channel (tiny model)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from student_svc.server import create_server, make_servicer
from syllabus import pb
from syllabus.config import Config
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

pytestmark = pytest.mark.integration

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]


@pytest.fixture
async def student(tmp_path: Path, tiny_models, store, service_token, service_channel):
    """A started server whose artifact store is the `store` fixture's directory; yields a stub."""
    config = Config(home=tmp_path / "home", service_token=service_token, artifact_url=store.root.as_uri())
    served = await create_server(config, servicer=make_servicer(config, models=tiny_models))
    await served.set_serving(True)
    async with service_channel(served.port) as channel:
        yield student_pb2_grpc.StudentServiceStub(channel)
    await served.stop(0)


def _model(tiny_model_dir: Path, adapter=None) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(base=str(tiny_model_dir), adapter=pb.ref_to_pb(adapter))


def _eval_records() -> list[dict]:
    texts = ["Where is my card?", "My card was stolen", "What is the euro rate?", "card still not here"]
    return [
        {"id": f"e{i}", "input": t, "label": LABELS[i % 3], "prompt": f"Classify: {t}\nIntent:"}
        for i, t in enumerate(texts)
    ]


async def test_score_over_grpc(student, store, tiny_model_dir, mixed_records, put_adapter):
    dataset = store.put_bytes("in/candidates.jsonl", dumps_jsonl(mixed_records))
    adapter = put_adapter(store)
    request = student_pb2.ScoreRequest(
        model=_model(tiny_model_dir, adapter),
        dataset=pb.ref_to_pb(dataset),
        batch_size=4,
        output_key="jobs/t/out/scores.jsonl",
    )
    resp = await student.Score(request)
    assert resp.count == len(mixed_records)
    rows = loads_jsonl(store.get_bytes(pb.ref_from_pb(resp.scores)))
    assert [r["id"] for r in rows] == [r["id"] for r in mixed_records]
    for r in rows:
        assert set(r) == {"id", "loss_base", "loss_ref", "learnability"}
        assert r["learnability"] == pytest.approx((r["loss_base"] - r["loss_ref"]) / r["loss_base"])

    # Idempotent: the same output key returns the same artifact, even with other parameters.
    again = await student.Score(
        student_pb2.ScoreRequest(
            model=_model(tiny_model_dir, adapter),
            dataset=pb.ref_to_pb(dataset),
            metrics=[student_pb2.METRIC_LOSS_BASE],
            output_key="jobs/t/out/scores.jsonl",
        )
    )
    assert again.scores == resp.scores
    assert again.count == resp.count

    # The base is clean after the adapter request: base losses without an adapter are the same.
    base_only = await student.Score(
        student_pb2.ScoreRequest(
            model=_model(tiny_model_dir),
            dataset=pb.ref_to_pb(dataset),
            metrics=[student_pb2.METRIC_LOSS_BASE],
            output_key="jobs/t/out/base.jsonl",
        )
    )
    base_rows = loads_jsonl(store.get_bytes(pb.ref_from_pb(base_only.scores)))
    assert [r["loss_base"] for r in base_rows] == pytest.approx([r["loss_base"] for r in rows], abs=1e-4)
    assert all(set(r) == {"id", "loss_base"} for r in base_rows)


async def test_evaluate_over_grpc(student, store, tiny_model_dir):
    records = _eval_records()
    eval_set = store.put_bytes("in/eval.jsonl", dumps_jsonl(records))
    request = student_pb2.EvaluateRequest(
        model=_model(tiny_model_dir),
        kind=common_pb2.TASK_KIND_CLASSIFICATION,
        eval_set=pb.ref_to_pb(eval_set),
        labels=LABELS,
        output_key="jobs/t/out/predictions.jsonl",
    )
    resp = await student.Evaluate(request)
    rows = loads_jsonl(store.get_bytes(pb.ref_from_pb(resp.predictions)))
    assert resp.total == len(records) == len(rows)
    assert resp.correct == sum(r["correct"] for r in rows)
    assert resp.accuracy == pytest.approx(resp.correct / resp.total)
    for rec, row in zip(records, rows, strict=True):
        assert row["prediction"] == max(LABELS, key=lambda label: row["label_logprobs"][label])
        assert row["correct"] == (row["prediction"] == rec["label"])

    again = await student.Evaluate(request)
    assert again == resp


async def test_evaluate_with_adapter_differs_from_base(student, store, tiny_model_dir, put_adapter):
    eval_set = pb.ref_to_pb(store.put_bytes("in/eval.jsonl", dumps_jsonl(_eval_records())))
    common = {"kind": common_pb2.TASK_KIND_CLASSIFICATION, "eval_set": eval_set, "labels": LABELS}
    base = await student.Evaluate(
        student_pb2.EvaluateRequest(model=_model(tiny_model_dir), output_key="jobs/t/out/p-base.jsonl", **common)
    )
    tuned = await student.Evaluate(
        student_pb2.EvaluateRequest(
            model=_model(tiny_model_dir, put_adapter(store)), output_key="jobs/t/out/p-adapter.jsonl", **common
        )
    )
    base_rows = loads_jsonl(store.get_bytes(pb.ref_from_pb(base.predictions)))
    tuned_rows = loads_jsonl(store.get_bytes(pb.ref_from_pb(tuned.predictions)))
    assert [r["label_logprobs"] for r in base_rows] != [r["label_logprobs"] for r in tuned_rows]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.ClearField("dataset"), "dataset"),
        (lambda r: r.model.ClearField("base"), "model.base"),
        (lambda r: setattr(r, "output_key", "../escape.jsonl"), "output_key"),
        (lambda r: setattr(r, "output_key", ""), "output_key"),
        (lambda r: r.metrics.append(student_pb2.METRIC_UNSPECIFIED), "metrics[1]"),
        (lambda r: r.metrics.append(student_pb2.METRIC_LEARNABILITY), "model.adapter"),
        (lambda r: r.ClearField("metrics"), "model.adapter"),  # empty = all metrics, which need the adapter
        (lambda r: setattr(r, "batch_size", -1), "batch_size"),
    ],
)
async def test_score_rejects_malformed_requests(student, store, tiny_model_dir, mixed_records, mutate, field):
    dataset = store.put_bytes("in/candidates.jsonl", dumps_jsonl(mixed_records))
    request = student_pb2.ScoreRequest(
        model=_model(tiny_model_dir),
        dataset=pb.ref_to_pb(dataset),
        metrics=[student_pb2.METRIC_LOSS_BASE],
        output_key="jobs/t/out/s.jsonl",
    )
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await student.Score(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


async def test_score_rejects_records_lacking_fields(student, store, tiny_model_dir):
    dataset = store.put_bytes("in/bad.jsonl", dumps_jsonl([{"id": "a", "prompt": "p"}]))
    request = student_pb2.ScoreRequest(
        model=_model(tiny_model_dir),
        dataset=pb.ref_to_pb(dataset),
        metrics=[student_pb2.METRIC_LOSS_BASE],
        output_key="jobs/t/out/s.jsonl",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await student.Score(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset:" in err.value.details() and "'response'" in err.value.details()
    assert store.stat("jobs/t/out/s.jsonl") is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.ClearField("labels"), "labels"),
        (lambda r: r.labels.append(LABELS[0]), "labels[3]"),
        (lambda r: setattr(r, "kind", common_pb2.TASK_KIND_UNSPECIFIED), "kind"),
        (lambda r: r.ClearField("eval_set"), "eval_set"),
        (lambda r: setattr(r, "output_key", "/abs.jsonl"), "output_key"),
    ],
)
async def test_evaluate_rejects_malformed_requests(student, store, tiny_model_dir, mutate, field):
    eval_set = store.put_bytes("in/eval.jsonl", dumps_jsonl(_eval_records()))
    request = student_pb2.EvaluateRequest(
        model=_model(tiny_model_dir),
        kind=common_pb2.TASK_KIND_CLASSIFICATION,
        eval_set=pb.ref_to_pb(eval_set),
        labels=LABELS,
        output_key="jobs/t/out/p.jsonl",
    )
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await student.Evaluate(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:")


async def test_evaluate_rejects_labels_outside_the_label_set(student, store, tiny_model_dir):
    records = [{"id": "x", "input": "hi", "label": "greeting", "prompt": "hi"}]
    eval_set = store.put_bytes("in/eval.jsonl", dumps_jsonl(records))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await student.Evaluate(
            student_pb2.EvaluateRequest(
                model=_model(tiny_model_dir),
                kind=common_pb2.TASK_KIND_CLASSIFICATION,
                eval_set=pb.ref_to_pb(eval_set),
                labels=LABELS,
                output_key="jobs/t/out/p.jsonl",
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("eval_set:")


async def test_missing_artifacts_are_not_found(student, store, tiny_model_dir, mixed_records):
    missing = common_pb2.ArtifactRef(uri=store.uri_for("in/nothing.jsonl"), sha256="0" * 64, size_bytes=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await student.Score(
            student_pb2.ScoreRequest(model=_model(tiny_model_dir), dataset=missing, output_key="jobs/t/out/s.jsonl")
        )
    # LOSS_REF/LEARNABILITY without an adapter is rejected before any artifact is read.
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await student.Score(
            student_pb2.ScoreRequest(
                model=_model(tiny_model_dir),
                dataset=missing,
                metrics=[student_pb2.METRIC_LOSS_BASE],
                output_key="jobs/t/out/s.jsonl",
            )
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("dataset:")

    dataset = pb.ref_to_pb(store.put_bytes("in/candidates.jsonl", dumps_jsonl(mixed_records)))
    model = common_pb2.ModelRef(base=str(tiny_model_dir), adapter=missing)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await student.Score(student_pb2.ScoreRequest(model=model, dataset=dataset, output_key="jobs/t/out/s.jsonl"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("model.adapter:")


async def test_checksum_mismatch_is_data_loss(student, store, tiny_model_dir, mixed_records):
    ref = store.put_bytes("in/candidates.jsonl", dumps_jsonl(mixed_records))
    tampered = common_pb2.ArtifactRef(uri=ref.uri, sha256="f" * 64, size_bytes=ref.size_bytes)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await student.Score(
            student_pb2.ScoreRequest(
                model=_model(tiny_model_dir),
                dataset=tampered,
                metrics=[student_pb2.METRIC_LOSS_BASE],
                output_key="jobs/t/out/s.jsonl",
            )
        )
    assert err.value.code() == grpc.StatusCode.DATA_LOSS


async def test_unknown_model_is_failed_precondition(student, store, tmp_path, mixed_records):
    dataset = pb.ref_to_pb(store.put_bytes("in/candidates.jsonl", dumps_jsonl(mixed_records)))
    for base in ("bundled:no-such-model", str(tmp_path / "not-a-model")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await student.Score(
                student_pb2.ScoreRequest(
                    model=common_pb2.ModelRef(base=base),
                    dataset=dataset,
                    metrics=[student_pb2.METRIC_LOSS_BASE],
                    output_key="jobs/t/out/s.jsonl",
                )
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details().startswith("model.base:")


async def test_health_is_not_serving_until_ready(tmp_path, tiny_models, service_token):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    config = Config(home=tmp_path / "home", service_token=service_token, artifact_url=(tmp_path / "artifacts").as_uri())
    served = await create_server(config, servicer=make_servicer(config, models=tiny_models))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:  # health needs no token
            health = health_pb2_grpc.HealthStub(channel)
            service = "syllabus.student.v1.StudentService"
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await served.set_serving(True)
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await served.stop(0)


async def test_lobass_later_round_takes_l0_under_the_current_student(
    student, store, tiny_model_dir, mixed_records, tiny_adapter_dir, tmp_path
):
    """LoBaSS round >= 2: loss_base (L0) under base + the current student's adapter, loss_ref (Lref)
    under the reference adapter; each equals that adapter's own loss, not the bare base's."""
    import shutil

    from safetensors.torch import load_file, save_file

    from syllabus.models import pack_adapter

    other = tmp_path / "reference-adapter"
    shutil.copytree(tiny_adapter_dir, other)
    weights = load_file(other / "adapter_model.safetensors")
    save_file({k: (-2 * v if "lora_B" in k else v) for k, v in weights.items()}, other / "adapter_model.safetensors")
    current = store.put_bytes("jobs/t/round-1/train.tar", pack_adapter(tiny_adapter_dir))
    reference = store.put_bytes("jobs/t/round-2/reference.tar", pack_adapter(other))
    dataset = store.put_bytes("jobs/t/candidates.jsonl", dumps_jsonl(mixed_records))

    async def losses(adapter, key: str, base_adapter=None) -> list[dict]:
        req = student_pb2.ScoreRequest(model=_model(tiny_model_dir, adapter), dataset=pb.ref_to_pb(dataset), output_key=key,
                                       metrics=[student_pb2.METRIC_LOSS_BASE, student_pb2.METRIC_LOSS_REF])
        if base_adapter is not None:
            req.base_adapter.CopyFrom(pb.ref_to_pb(base_adapter))
        return loads_jsonl(store.get_bytes(pb.ref_from_pb((await student.Score(req)).scores)))

    both = await losses(reference, "jobs/t/out/round2.jsonl", base_adapter=current)
    under_current = await losses(current, "jobs/t/out/current.jsonl")
    under_reference = await losses(reference, "jobs/t/out/reference.jsonl")
    assert [r["loss_base"] for r in both] == pytest.approx([r["loss_ref"] for r in under_current], abs=1e-4)
    assert [r["loss_ref"] for r in both] == pytest.approx([r["loss_ref"] for r in under_reference], abs=1e-4)
    # and not the round-1 semantics, where L0 is the bare base
    assert [r["loss_base"] for r in both] != pytest.approx([r["loss_base"] for r in under_reference], abs=1e-3)
