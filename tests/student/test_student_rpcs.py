"""ScoreStream, Select and the generation scorers of Evaluate over gRPC (tiny model)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from student_svc.arte import one_shot, probe_set_by_discrimination
from student_svc.evaluation import generate_greedy, label_from_generation
from student_svc.server import create_server, make_servicer
from syllabus import pb
from syllabus.answers import answers_match, extract_number, normalize
from syllabus.config import Config
from syllabus.models import DEFAULT_MODEL
from syllabus.records import dumps_jsonl, loads_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2, student_pb2_grpc

pytestmark = pytest.mark.integration

@pytest.fixture
async def served_student(tmp_path: Path, tiny_models, store, service_token):
    config = Config(home=tmp_path / "home", service_token=service_token, artifact_url=store.root.as_uri())
    return config

async def _stub(config, tiny_models):
    served = await create_server(config, servicer=make_servicer(config, models=tiny_models))
    await served.set_serving(True)
    return served

def test_answer_matching():
    assert answers_match(" The Answer. ", "the answer", "exact")
    assert not answers_match("the answers", "the answer", "exact")
    assert extract_number("so 3 + 4 = 7\n#### 1,234") == 1234.0
    assert extract_number("the total is 12.5 dollars") == 12.5
    assert answers_match("It is 42.", "#### 42", "numeric")
    assert not answers_match("no number", "42", "numeric")
    assert label_from_generation("Card_arrival, I think", ["card_arrival", "exchange_rate"]) == "card_arrival"
    assert label_from_generation("nothing", ["card_arrival"]) is None

async def test_score_stream_reports_progress_then_the_result(served_student, tiny_models, tiny_model_dir, store, mixed_records, service_channel):
    served = await _stub(served_student, tiny_models)
    dataset = pb.ref_to_pb(store.put_bytes("in/c.jsonl", dumps_jsonl(mixed_records)))
    try:
        async with service_channel(served.port) as channel:
            stub = student_pb2_grpc.StudentServiceStub(channel)
            request = student_pb2.ScoreRequest(
                model=common_pb2.ModelRef(base=str(tiny_model_dir)),
                dataset=dataset,
                metrics=[student_pb2.METRIC_IFD, student_pb2.METRIC_LOSS_BASE],
                precision=student_pb2.PRECISION_FLOAT32,
                max_batch_tokens=256,
                output_key="jobs/t/out/stream.jsonl",
            )
            events = [e async for e in stub.ScoreStream(student_pb2.ScoreStreamRequest(request=request))]
            unary = await stub.Score(
                student_pb2.ScoreRequest(
                    model=request.model, dataset=dataset, metrics=request.metrics,
                    precision=student_pb2.PRECISION_FLOAT32, output_key="jobs/t/out/unary.jsonl",
                )
            )
    finally:
        await served.stop(0)
    progress = [e.progress for e in events[:-1]]
    assert progress and all(e.WhichOneof("event") == "progress" for e in events[:-1])
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == progress[-1].total
    result = events[-1].result
    assert result.count == unary.count == len(mixed_records)
    streamed = loads_jsonl(store.get_bytes(pb.ref_from_pb(result.scores)))
    plain = loads_jsonl(store.get_bytes(pb.ref_from_pb(unary.scores)))
    for a, b in zip(streamed, plain, strict=True):
        assert a["ifd_ppl"] == pytest.approx(b["ifd_ppl"], rel=1e-4)
        assert set(a) == {"id", "loss_base", "ifd_ppl", "ifd_loss", "answer_loss_cond", "answer_loss_uncond"}

async def test_select_top_k_and_diversity(served_student, tiny_models, tiny_model_dir, store, mixed_records, service_channel):
    served = await _stub(served_student, tiny_models)
    dataset = pb.ref_to_pb(store.put_bytes("in/c.jsonl", dumps_jsonl(mixed_records)))
    scores = [{"id": r["id"], "learnability": i / 10, "ifd_ppl": 0.5 if i % 2 else 1.5} for i, r in enumerate(mixed_records)]
    scores_ref = pb.ref_to_pb(store.put_bytes("in/s.jsonl", dumps_jsonl(scores)))
    try:
        async with service_channel(served.port) as channel:
            stub = student_pb2_grpc.StudentServiceStub(channel)
            top = await stub.Select(
                student_pb2.SelectRequest(
                    dataset=dataset, scores=scores_ref, column="learnability", policy=student_pb2.SELECT_POLICY_TOP_K,
                    k=3, ifd_filter=True, output_key="jobs/t/out/top.jsonl",
                )
            )
            div = await stub.Select(
                student_pb2.SelectRequest(
                    model=common_pb2.ModelRef(base=str(tiny_model_dir)), dataset=dataset, scores=scores_ref,
                    column="learnability", policy=student_pb2.SELECT_POLICY_DIVERSITY, k=5, n_clusters=3,
                    output_key="jobs/t/out/div.jsonl",
                )
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Select(student_pb2.SelectRequest(dataset=dataset, scores=scores_ref, policy=student_pb2.SELECT_POLICY_TOP_K, k=1, output_key="jobs/t/o/x.jsonl"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("column")
    finally:
        await served.stop(0)
    kept = loads_jsonl(store.get_bytes(pb.ref_from_pb(top.selected)))
    assert [r["id"] for r in kept] == ["s11", "s9", "s7"]  # odd ids pass the IFD filter
    assert kept[0] == mixed_records[11]
    picked = loads_jsonl(store.get_bytes(pb.ref_from_pb(div.selected)))
    assert div.count == 5 and len({r["id"] for r in picked}) == 5

async def test_evaluate_exact_match_by_generation(served_student, tiny_models, store, service_channel):
    # The bundled model: the random-init tiny model answers only blank lines, which match a blank gold by accident.
    model, tok = tiny_models.get(DEFAULT_MODEL)
    prompts = ["What is 2 + 2?", "Name a colour.", "Say hi"]
    gens = generate_greedy(model, tok, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens=6)
    # Gold answers: q0's is the model's greedy answer re-cased, quoted and padded (equal only after exact-match
    # normalization); q1's is the model's answer plus a word (a near miss that a prefix match would take); q2's
    # is nothing the model says.
    assert all(normalize(g) for g in gens[:2]), gens
    golds = [f'  "{gens[0].upper()}".  ', f"{gens[1]} extra", "zzz-never"]
    assert normalize(golds[0]) == normalize(gens[0]) and gens[0] != golds[0]
    records = [{"id": f"q{i}", "prompt": p, "label": gold} for i, (p, gold) in enumerate(zip(prompts, golds, strict=True))]
    eval_set = pb.ref_to_pb(store.put_bytes("in/qa.jsonl", dumps_jsonl(records)))
    served = await _stub(served_student, tiny_models)
    try:
        async with service_channel(served.port) as channel:
            resp = await student_pb2_grpc.StudentServiceStub(channel).Evaluate(
                student_pb2.EvaluateRequest(
                    model=common_pb2.ModelRef(base=DEFAULT_MODEL),
                    kind=common_pb2.TASK_KIND_EXACT_ANSWER,
                    eval_set=eval_set,
                    max_new_tokens=6,
                    precision=student_pb2.PRECISION_FLOAT32,
                    output_key="jobs/t/out/qa-predictions.jsonl",
                )
            )
    finally:
        await served.stop(0)
    rows = loads_jsonl(store.get_bytes(pb.ref_from_pb(resp.predictions)))
    assert [r["generation"] for r in rows] == gens
    assert [r["correct"] for r in rows] == [True, False, False]
    assert resp.total == 3 and resp.correct == sum(r["correct"] for r in rows)

async def test_evaluate_open_ended_writes_generations_and_calls_no_teacher(served_student, tiny_models, tiny_model_dir, store, service_channel):
    # The student never calls the teacher: open-ended answers are generated and written for the
    # orchestrator's judge step (orchestrator.judging); the retired judge scorer is refused.
    records = [
        {"id": "o1", "prompt": "Write a sentence about the sea.", "label": ""},
        {"id": "o2", "prompt": "Describe a cat.", "label": ""},
    ]
    eval_set = pb.ref_to_pb(store.put_bytes("in/open.jsonl", dumps_jsonl(records)))
    gens = generate_greedy(*tiny_models.get(str(tiny_model_dir)), [[{"role": "user", "content": r["prompt"]}] for r in records], max_new_tokens=8)
    served = await _stub(served_student, tiny_models)
    try:
        async with service_channel(served.port) as channel:
            stub = student_pb2_grpc.StudentServiceStub(channel)
            resp = await stub.Evaluate(
                student_pb2.EvaluateRequest(
                    model=common_pb2.ModelRef(base=str(tiny_model_dir)),
                    kind=common_pb2.TASK_KIND_OPEN_ENDED,
                    eval_set=eval_set,
                    max_new_tokens=8,
                    precision=student_pb2.PRECISION_FLOAT32,
                    output_key="jobs/t/out/open-predictions.jsonl",
                )
            )
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Evaluate(
                    student_pb2.EvaluateRequest(
                        model=common_pb2.ModelRef(base=str(tiny_model_dir)), kind=common_pb2.TASK_KIND_OPEN_ENDED,
                        eval_set=eval_set, scorer=5, output_key="jobs/t/out/judged.jsonl",  # the reserved EVAL_SCORER_JUDGE
                    )
                )
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("scorer")
    finally:
        await served.stop(0)
    rows = loads_jsonl(store.get_bytes(pb.ref_from_pb(resp.predictions)))
    assert [r["generation"] for r in rows] == gens
    assert all("reason" not in r for r in rows)
    assert resp.total == 2 and resp.correct == sum(r["correct"] for r in rows)

async def test_score_car_arte_and_crowd_difficulty(served_student, tiny_models, tiny_model_dir, store, put_adapter, service_channel):

    labels = ["card_arrival", "exchange_rate", "top_up_failed"]
    records = [
        {"id": f"r{i}", "prompt": f"Classify: message {i}\nIntent:", "response": labels[i % 3],
         "teacher": "t1" if i < 3 else "t2", "reward": float(i)}
        for i in range(6)
    ]
    probes = [{"id": f"p{j}", "prompt": f"Question {j}?", "answer": "yes" if j % 2 else ""} for j in range(4)]
    responses = [{"item_id": f"p{j}", "subject": f"m{s}", "correct": (j + s) % 3 == 0} for j in range(4) for s in range(5)]
    # ARTE's 2 probes are the most discriminative under the crowd's responses. The first one's answer is what
    # the student replies to it after r0's demonstration, the second's nothing it says: r0 scores exactly 0.5,
    # the others what their own replies (computed here, the same greedy decoding) match, halved.
    chosen = [p["id"] for p in probe_set_by_discrimination(probes, responses, 2)]
    model, tok = tiny_models.get(str(tiny_model_dir))
    by_id = {p["id"]: p for p in probes}
    replies = generate_greedy(model, tok, [one_shot(r["prompt"], r["response"], by_id[j]["prompt"]) for r in records for j in chosen],
                              max_new_tokens=4)
    by_id[chosen[0]]["answer"], by_id[chosen[1]]["answer"] = replies[0], "zzz-never"
    expected_s_r = [answers_match(replies[2 * k], replies[0]) / 2 for k in range(len(records))]
    adapter = put_adapter(store)
    served = await _stub(served_student, tiny_models)
    try:
        async with service_channel(served.port) as channel:
            resp = await student_pb2_grpc.StudentServiceStub(channel).Score(
                student_pb2.ScoreRequest(
                    model=common_pb2.ModelRef(base=str(tiny_model_dir)),
                    dataset=pb.ref_to_pb(store.put_bytes("in/r.jsonl", dumps_jsonl(records))),
                    metrics=[student_pb2.METRIC_CAR, student_pb2.METRIC_ARTE_PREFERENCE, student_pb2.METRIC_IRT_DIFFICULTY],
                    car_beta=0.5,
                    arte=student_pb2.ArteSettings(
                        probe_set=pb.ref_to_pb(store.put_bytes("in/p.jsonl", dumps_jsonl(probes))),
                        probe_responses=pb.ref_to_pb(store.put_bytes("in/pr.jsonl", dumps_jsonl(responses))),
                        probe_k=2, max_new_tokens=4,
                    ),
                    irt=student_pb2.IrtSettings(crowd=[pb.ref_to_pb(adapter)], include_base=True, labels=labels),
                    precision=student_pb2.PRECISION_FLOAT32,
                    output_key="jobs/t/out/all.jsonl",
                )
            )
    finally:
        await served.stop(0)
    rows = loads_jsonl(store.get_bytes(pb.ref_from_pb(resp.scores)))
    assert {"loss_base", "arte_s_r", "arte_s_q", "irt_difficulty", "crowd_correct"} <= set(rows[0])
    by_teacher = {g.teacher: g for g in resp.car}
    for t, members in (("t1", rows[:3]), ("t2", rows[3:])):
        loss = sum(r["loss_base"] for r in members) / 3
        reward = sum(float(r["id"][1:]) for r in members) / 3
        assert by_teacher[t].car == pytest.approx(reward / (1 + 0.5 * loss))
    assert [r["arte_s_r"] for r in rows] == expected_s_r and expected_s_r[0] == 0.5
    assert [r["arte_s_q"] for r in rows] == expected_s_r  # one rationale per question: s_q = s_r
    assert all(0 <= r["crowd_correct"] <= 2 for r in rows)
    # More crowd members right -> easier (lower difficulty).
    order = sorted(rows, key=lambda r: r["crowd_correct"])
    assert order[0]["irt_difficulty"] >= order[-1]["irt_difficulty"]
