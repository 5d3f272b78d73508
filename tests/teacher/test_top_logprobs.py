"""TeacherService.TopLogprobs over a real grpc.aio channel, and the pieces under it: the top-k
artifact, the batched capture against a plain forward, and the teacher/student tokenizer check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from syllabus import topk
from syllabus.artifacts import LocalArtifactStore
from syllabus.models import load_model, load_tokenizer
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.prompts import IGNORE_INDEX, encode_example
from syllabus.records import dumps_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2
from teacher_svc.logprobs import first_difference, transformers_topk

RECORDS = [
    {"prompt": "Classify: my card has not arrived yet", "response": "card_arrival"},
    {"prompt": "Classify: what is the exchange rate for euros today, and is there a fee?", "response": "exchange_rate"},
    {"prompt": "Classify: top up failed", "response": "top_up_failed"},
]


def _other_template(src: Path, dest: Path) -> Path:
    """A copy of a model directory whose chat template puts a system line first (same vocabulary)."""
    shutil.copytree(src, dest)
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    template = cfg.get("chat_template") or load_tokenizer(str(src)).chat_template
    cfg["chat_template"] = "{{ 'You are a teacher.\\n' }}" + template
    cfg_path.write_text(json.dumps(cfg))
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    return dest


@pytest.mark.unit
def test_topk_artifact_round_trips_and_refuses_what_does_not_fit() -> None:
    rng = np.random.default_rng(0)
    rows = {topk.record_digest(r["prompt"], r["response"]): topk.TopK(
        rng.integers(0, 1000, (n, 4)).astype(np.int32), -rng.random((n, 4)).astype(np.float16), -rng.random(n).astype(np.float16))
        for r, n in zip(RECORDS, (3, 5, 2), strict=True)}  # fmt: skip
    got = topk.loads(topk.dumps(rows, 4, {"id": "t@1", "model": "t"}))
    assert got.k == 4 and got.teacher == {"id": "t@1", "model": "t"}
    for d, row in rows.items():
        assert np.array_equal(got.rows[d].ids, row.ids) and np.array_equal(got.rows[d].logprobs, row.logprobs)
    first = got.for_record(RECORDS[1]["prompt"], RECORDS[1]["response"], 3)  # a truncated response: its first rows
    assert np.array_equal(first.ids, rows[topk.record_digest(RECORDS[1]["prompt"], RECORDS[1]["response"])].ids[:3])
    with pytest.raises(topk.TopKError, match="tokenize differently"):
        got.for_record(RECORDS[2]["prompt"], RECORDS[2]["response"], 3)
    with pytest.raises(topk.TopKError, match="no teacher log-probs"):
        got.for_record("another prompt", "x", 1)
    with pytest.raises(topk.TopKError, match="not a top-k artifact"):
        topk.loads(b"PK\x03\x04 not really a zip")
    assert topk.record_digest("ab", "c") != topk.record_digest("a", "bc")
    # deterministic bytes (no clock in the zip entries): a retried step republishes the same artifact
    import io
    import zipfile

    data = topk.dumps(rows, 4, {"id": "t@1"})
    assert {i.date_time for i in zipfile.ZipFile(io.BytesIO(data)).infolist()} == {(1980, 1, 1, 0, 0, 0)}


@pytest.mark.unit
def test_batched_capture_equals_a_plain_forward(tiny_model_dir: Path) -> None:
    lm, tok = load_model(str(tiny_model_dir))
    lm.eval()
    pairs = [(r["prompt"], r["response"]) for r in RECORDS]
    rows = transformers_topk(lm, tok, pairs, 7, 512)
    for (prompt, response), row in zip(pairs, rows, strict=True):
        ids, labels = encode_example(tok, prompt, response, 512)
        at = [t for t, lab in enumerate(labels) if lab != IGNORE_INDEX]
        with torch.no_grad():
            logp = torch.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)[[t - 1 for t in at]]
        assert len(row) == len(at)
        top = logp.topk(7, -1)
        np.testing.assert_allclose(row.logprobs.astype(np.float32), top.values.numpy(), atol=2e-3, rtol=1e-3)
        np.testing.assert_allclose(row.chosen.astype(np.float32), logp[range(len(at)), [labels[t] for t in at]].numpy(), atol=2e-3, rtol=1e-3)
        assert (row.ids[:, 0] == top.indices[:, 0].numpy()).all()


@pytest.mark.unit
def test_first_difference_names_template_and_vocabulary_mismatches(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    assert first_difference(tok, load_tokenizer(str(tiny_model_dir))) is None
    other = load_tokenizer(str(_other_template(tiny_model_dir, tmp_path / "other")))
    assert "chat templates render differently" in first_difference(tok, other)
    grown = load_tokenizer(str(tiny_model_dir))
    grown.add_tokens(["<extra_token_for_test>"])
    assert "vocabularies differ in size" in first_difference(tok, grown)


@pytest.mark.integration
async def test_top_logprobs_rpc_writes_once_and_refuses_mismatches(teacher, tiny_model_dir: Path, tmp_path: Path) -> None:
    stub, store = teacher
    model = common_pb2.ModelRef(base=str(tiny_model_dir))
    records = store.put_bytes("jobs/t/in/train.jsonl", dumps_jsonl(RECORDS))
    request = teacher_pb2.TopLogprobsRequest(model=model, student=model, records=ref_to_pb(records), top_k=5,
                                             output_prefix="jobs/t/round-1/teacher-logprobs")  # fmt: skip
    first = await stub.TopLogprobs(request)
    assert first.records == 3 and not first.existing
    assert first.teacher["model"] == str(tiny_model_dir) and first.teacher["backend"] == "transformers"
    got = topk.loads(store.get_bytes(ref_from_pb(first.logprobs)))
    lm, tok = load_model(str(tiny_model_dir))
    want = transformers_topk(lm.eval(), tok, [(r["prompt"], r["response"]) for r in RECORDS], 5, 512)
    assert first.tokens == sum(len(w) for w in want)
    for r, w in zip(RECORDS, want, strict=True):
        row = got.rows[topk.record_digest(r["prompt"], r["response"])]
        np.testing.assert_allclose(row.logprobs.astype(np.float32), w.logprobs.astype(np.float32), atol=2e-3)
    again = await stub.TopLogprobs(request)  # a retry: the same artifact, nothing recomputed
    assert again.existing and again.logprobs.sha256 == first.logprobs.sha256

    # A privileged context: another teacher of the same weights (its own artifact and id), scoring
    # the context + the prompt, filed under the student's record.
    context = "Solved examples:\n\nInput: my card never came\nAnswer: card_arrival"
    request.context = context
    ctx = await stub.TopLogprobs(request)
    assert not ctx.existing and ctx.logprobs.uri != first.logprobs.uri and ctx.teacher["context_sha256"]
    assert ctx.teacher["id"] != first.teacher["id"]
    got = topk.loads(store.get_bytes(ref_from_pb(ctx.logprobs)))
    want = transformers_topk(lm, tok, [(f"{context}\n\n{r['prompt']}", r["response"]) for r in RECORDS], 5, 1024)
    for r, w in zip(RECORDS, want, strict=True):
        row = got.rows[topk.record_digest(r["prompt"], r["response"])]
        np.testing.assert_allclose(row.logprobs.astype(np.float32), w.logprobs.astype(np.float32), atol=2e-3)

    mismatched = common_pb2.ModelRef(base=str(_other_template(tiny_model_dir, tmp_path / "other-template")))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.TopLogprobs(teacher_pb2.TopLogprobsRequest(model=model, student=mismatched, top_k=5))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tokenize differently: chat templates render differently" in e.value.details()
    assert "\n" not in e.value.details()

    check = await stub.TopLogprobs(teacher_pb2.TopLogprobsRequest(model=model, student=model))  # check only
    assert not check.HasField("logprobs") and check.teacher["id"]
    for bad, field in (({"top_k": 101}, "top_k"), ({"student": common_pb2.ModelRef()}, "student.base"),
                       ({"model": common_pb2.ModelRef(base="openai:any")}, "model.base")):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.TopLogprobs(teacher_pb2.TopLogprobsRequest(**{"model": model, "student": model, **bad}))
        assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
        assert field in e.value.details()


@pytest.mark.unit
async def test_a_teacher_whose_log_probs_are_not_reproducible_fails_its_self_test(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A backend that answers each call with other numbers (as one whose results hang on batch-mates
    would): the self-test scores records again alone and refuses to store targets that move."""
    from syllabus.serving import RequestFailed
    from teacher_svc.service import ModelCache, TeacherServicer

    real = load_tokenizer(str(tiny_model_dir))

    class Drifting:
        name, revision, tokenizer = "transformers", "r1", real
        calls = 0

        def top_logprobs(self, records, k, max_len):
            Drifting.calls += 1
            rng = np.random.default_rng(Drifting.calls)
            return [topk.TopK(np.zeros((3, k), np.int32), -rng.random((3, k)).astype(np.float16), -rng.random(3).astype(np.float16))
                    for _ in records]  # fmt: skip

    store = LocalArtifactStore(tmp_path / "artifacts")
    servicer = TeacherServicer(store, ModelCache(load=lambda base: Drifting()))
    records = store.put_bytes("jobs/t/in/train.jsonl", dumps_jsonl(RECORDS))
    model = common_pb2.ModelRef(base=str(tiny_model_dir))
    request = teacher_pb2.TopLogprobsRequest(model=model, student=model, records=ref_to_pb(records), top_k=5,
                                             output_prefix="jobs/t/round-1/teacher-logprobs")  # fmt: skip
    with pytest.raises(RequestFailed) as e:
        await servicer._top_logprobs(request)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "teacher self-test failed" in e.value.message
    assert not list((tmp_path / "artifacts").rglob("*.npz"))  # nothing stored
