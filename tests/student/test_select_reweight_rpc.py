"""StudentService.Select with a reward-gap column: Diversify and Conquer's reweighting on the real
service (the tiny model's embeddings, the service's k-means)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from student_svc import selection
from student_svc.server import create_server, make_servicer
from syllabus import pb
from syllabus.config import Config
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

pytestmark = pytest.mark.integration


async def test_a_gap_column_gives_the_cluster_the_student_answers_worst_the_budget(
    tmp_path: Path, tiny_models, tiny_model_dir, store, mixed_records, service_token, service_channel
) -> None:
    config = Config(home=tmp_path / "home", service_token=service_token, artifact_url=store.root.as_uri())
    # The clusters the service will form: the same embeddings and k-means seed.
    model, tok = tiny_models.get(str(tiny_model_dir))
    texts = [f"{r['prompt']}\n{r['response']}" for r in mixed_records]
    assign = selection.kmeans(selection.embed_records(model, tok, texts), 3, seed=0)
    worst = [r["id"] for r, a in zip(mixed_records, assign, strict=True) if a == assign[0]]
    # gap 1 in s0's cluster, 0 elsewhere, temperature 0.01: w = softmax([100, 0, 0]) ~ [1, 0, 0]
    scores = [{"id": r["id"], "gap": float(a == assign[0])} for r, a in zip(mixed_records, assign, strict=True)]
    dataset = pb.ref_to_pb(store.put_bytes("in/c.jsonl", dumps_jsonl(mixed_records)))
    scores_ref = pb.ref_to_pb(store.put_bytes("in/s.jsonl", dumps_jsonl(scores)))
    k = min(5, len(worst))

    def request(**over) -> student_pb2.SelectRequest:
        return student_pb2.SelectRequest(**{
            "model": common_pb2.ModelRef(base=str(tiny_model_dir)), "dataset": dataset, "scores": scores_ref,
            "policy": student_pb2.SELECT_POLICY_DIVERSITY, "k": k, "n_clusters": 3, "seed": 0,
            "gap_column": "gap", "gap_temperature": 0.01, "output_key": "jobs/t/out/gap.jsonl", **over,
        })  # fmt: skip

    served = await create_server(config, servicer=make_servicer(config, models=tiny_models))
    await served.set_serving(True)
    try:
        async with service_channel(served.port) as channel:
            stub = student_pb2_grpc.StudentServiceStub(channel)
            reply = await stub.Select(request())
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Select(
                    request(policy=student_pb2.SELECT_POLICY_TOP_K, column="gap", output_key="jobs/t/o/x.jsonl")
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("gap_column")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Select(request(gap_column="nope", output_key="jobs/t/o/y.jsonl"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope" in err.value.details()
    finally:
        await served.stop(0)
    picked = [r["id"] for r in loads_jsonl(store.get_bytes(pb.ref_from_pb(reply.selected)))]
    assert len(picked) == k and set(picked) <= set(worst)
    assert len(worst) < len(mixed_records)  # the clusters split the records, so a no-op would pick elsewhere too
