"""Evaluate on the bundled SmolLM2 model and the Banking77 example, checked against a direct,
independent computation (full forwards, no KV cache, one sequence at a time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from student_svc.models import ModelCache
from student_svc.server import create_server, make_servicer
from syllabus import pb
from syllabus.config import Config
from syllabus.models import DEFAULT_MODEL, load_model
from syllabus.prompts import IGNORE_INDEX, encode_example
from syllabus.records import content_id, dumps_jsonl, loads_jsonl
from syllabus.tasks import load_task
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

pytestmark = pytest.mark.integration

TASK = Path(__file__).resolve().parents[2] / "examples" / "banking77" / "task.yaml"
N_ITEMS = 10


async def test_evaluate_banking77_matches_direct_computation(tmp_path, store, service_token, service_channel):
    task = load_task(TASK)
    items = task.eval[:: len(task.eval) // N_ITEMS][:N_ITEMS]  # spread over the intents
    records = [
        {
            "id": content_id(ex.input, ex.label),
            "input": ex.input,
            "label": ex.label,
            "prompt": task.prompt_for(ex.input),
        }
        for ex in items
    ]
    eval_set = store.put_bytes("in/banking77-eval.jsonl", dumps_jsonl(records))

    config = Config(home=tmp_path / "home", service_token=service_token, artifact_url=store.root.as_uri())
    served = await create_server(config, servicer=make_servicer(config, models=ModelCache(device="cpu")))
    await served.set_serving(True)
    try:
        async with service_channel(served.port) as channel:
            resp = await student_pb2_grpc.StudentServiceStub(channel).Evaluate(
                student_pb2.EvaluateRequest(
                    model=common_pb2.ModelRef(base=DEFAULT_MODEL),
                    kind=common_pb2.TASK_KIND_CLASSIFICATION,
                    eval_set=pb.ref_to_pb(eval_set),
                    labels=task.labels,
                    output_key="jobs/t/out/banking77-predictions.jsonl",
                )
            )
    finally:
        await served.stop(0)
    rows = loads_jsonl(store.get_bytes(pb.ref_from_pb(resp.predictions)))

    model, tok = load_model(DEFAULT_MODEL)
    correct = 0
    for rec, row in zip(records, rows, strict=True):
        direct = {}
        for label in task.labels:
            ids, labels = encode_example(tok, rec["prompt"], label)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            direct[label] = -F.cross_entropy(
                logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX, reduction="sum"
            ).item()
        prediction = max(task.labels, key=lambda label: direct[label])
        correct += prediction == rec["label"]
        assert row["prediction"] == prediction
        assert row["label_logprobs"] == pytest.approx(direct, abs=1e-3)

    assert resp.total == N_ITEMS
    assert resp.correct == correct
    assert resp.accuracy == pytest.approx(correct / N_ITEMS)


def test_ifd_is_well_below_one_when_the_prompt_gives_the_answer_away():
    """Hand-checkable IFD on the real model: an answer the prompt dictates word for word is far more
    predictable with the prompt (IFD << 1) than an answer unrelated to its prompt (IFD near 1)."""
    from student_svc.scoring import IFD, ScoreOptions, score_records

    model, tok = load_model(DEFAULT_MODEL)
    answer = "The purple elephant quietly painted seventeen lighthouses before breakfast on Tuesday."
    records = [
        {"id": "given", "prompt": f"Repeat this sentence exactly: {answer}", "response": answer},
        {"id": "unrelated", "prompt": "What is the capital of France?", "response": answer},
    ]
    given, unrelated = score_records(model, tok, records, [IFD], options=ScoreOptions(dtype="float32"))
    assert given["ifd_ppl"] < 0.2
    assert given["ifd_loss"] < 0.5
    assert unrelated["ifd_ppl"] > 0.5
    assert given["ifd_ppl"] < unrelated["ifd_ppl"]
