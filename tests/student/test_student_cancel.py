"""A Score cancelled mid-run, followed at once by another, gives the same scores as an uncancelled run
(issue 25's acceptance for item 4): the cancelled call keeps the model until its thread ends, so the
next one never shares the model while the first swaps the reference adapter in and out."""

from __future__ import annotations

from pathlib import Path

import pytest

from student_svc.server import create_server, make_servicer
from syllabus import pb
from syllabus.config import Config
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

pytestmark = pytest.mark.integration


async def test_a_cancelled_score_then_another_gives_the_uncancelled_scores(
    tmp_path: Path, tiny_models, tiny_model_dir: Path, store, put_adapter, mixed_records, service_token, service_channel
) -> None:
    config = Config(home=tmp_path / "home", service_token=service_token, artifact_url=store.root.as_uri())
    served = await create_server(config, servicer=make_servicer(config, models=tiny_models))
    await served.set_serving(True)
    records = [dict(r, id=f"{r['id']}-{k}") for k in range(8) for r in mixed_records]  # 96 records, many batches
    dataset = pb.ref_to_pb(store.put_bytes("in/c.jsonl", dumps_jsonl(records)))
    model = common_pb2.ModelRef(base=str(tiny_model_dir), adapter=pb.ref_to_pb(put_adapter(store)))

    def request(key: str) -> student_pb2.ScoreRequest:
        return student_pb2.ScoreRequest(model=model, dataset=dataset, output_key=key, max_batch_tokens=128,
                                        metrics=[student_pb2.METRIC_LEARNABILITY, student_pb2.METRIC_IFD],
                                        precision=student_pb2.PRECISION_FLOAT32)  # fmt: skip

    try:
        async with service_channel(served.port) as channel:
            stub = student_pb2_grpc.StudentServiceStub(channel)
            clean = await stub.Score(request("jobs/t/clean.jsonl"))
            stream = stub.ScoreStream(student_pb2.ScoreStreamRequest(request=request("jobs/t/cancelled.jsonl")))
            first = await stream.read()  # its thread is scoring now
            assert first.WhichOneof("event") == "progress" and first.progress.done < first.progress.total
            stream.cancel()
            again = await stub.Score(request("jobs/t/again.jsonl"))  # at once, while the cancelled thread may run
    finally:
        await served.stop(0)
    want = loads_jsonl(store.get_bytes(pb.ref_from_pb(clean.scores)))
    got = loads_jsonl(store.get_bytes(pb.ref_from_pb(again.scores)))
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a == b  # bit for bit: the same model state, the same batches
    assert stream.cancelled()  # the cancelled call really was cancelled, not finished
