"""TopLogprobs from an OpenAI-compatible endpoint teacher, over a real grpc.aio channel and real HTTP.

The endpoint is a loopback server speaking vLLM's completions protocol for prompt log-probs (the
prompt as token ids, `echo`, `logprobs: k`, `return_tokens_as_token_ids`), whose numbers come from a
real forward of the test model: what TopLogprobs stores from it must match the transformers backend
on the same records. Servers that fall short of the protocol fail the check in one line.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from chat_server import ChatServer, send_json
from test_top_logprobs import RECORDS, _other_template

from syllabus import topk
from syllabus.config import TeacherEndpoint
from syllabus.models import load_model
from syllabus.pb import ref_from_pb, ref_to_pb
from syllabus.records import dumps_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2
from teacher_svc.logprobs import transformers_topk

pytestmark = pytest.mark.integration


class PromptLogprobServer(ChatServer):
    """POST /v1/completions as vLLM answers `echo` + `logprobs` for a token-id prompt: per prompt
    position the actual token's log-prob and the top-k (plus the actual token), keyed "token_id:<id>"
    (`as_ids=False`: keyed by the token's text, as a server without `return_tokens_as_token_ids` does)."""

    def __init__(self, model_dir: Path, as_ids: bool = True) -> None:
        self.lm, self.tok = load_model(str(model_dir))
        self.lm.eval()
        self.as_ids = as_ids
        super().__init__()

    def name(self, i: int) -> str:
        return f"token_id:{i}" if self.as_ids else self.tok.decode([i])

    def handle(self, h: BaseHTTPRequestHandler, i: int, body: dict) -> None:
        assert h.path == "/v1/completions" and body["echo"] and body["return_tokens_as_token_ids"]
        ids, k = body["prompt"], body["logprobs"]
        with torch.no_grad():
            logp = torch.log_softmax(self.lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        top = [None]
        for t in range(1, len(ids)):
            best = logp[t - 1].topk(k)
            entry = {self.name(j): v for j, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)}
            top.append({**entry, self.name(ids[t]): float(logp[t - 1, ids[t]])})
        generated = int(logp[-1].argmax())  # the one token max_tokens: 1 asks for, which the client drops
        logprobs = {"tokens": [self.name(t) for t in [*ids, generated]],
                    "token_logprobs": [None, *(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))), float(logp[-1].max())],
                    "top_logprobs": [*top, {self.name(generated): float(logp[-1].max())}]}  # fmt: skip
        send_json(h, {"object": "text_completion", "choices": [{"index": 0, "text": "", "logprobs": logprobs}]})


async def test_an_endpoint_teacher_gives_the_log_probs_transformers_gives(serve_teacher, tiny_model_dir: Path, tmp_path: Path) -> None:
    good, texts = PromptLogprobServer(tiny_model_dir), PromptLogprobServer(tiny_model_dir, as_ids=False)
    mismatched = _other_template(tiny_model_dir, tmp_path / "other-template")
    endpoints = {
        "vllm": TeacherEndpoint(url=good.url, model="m", tokenizer=str(tiny_model_dir)),
        "texts": TeacherEndpoint(url=texts.url, model="m", tokenizer=str(tiny_model_dir)),
        "plain": TeacherEndpoint(url=good.url, model="m"),  # no tokenizer: no prompt log-probs offered
        "other": TeacherEndpoint(url=good.url, model="m", tokenizer=str(mismatched)),
    }
    student = common_pb2.ModelRef(base=str(tiny_model_dir))
    try:
        async with serve_teacher(teacher_endpoints=endpoints) as (stub, store):
            records = store.put_bytes("jobs/t/in/train.jsonl", dumps_jsonl(RECORDS))
            request = teacher_pb2.TopLogprobsRequest(model=common_pb2.ModelRef(base="openai:vllm"), student=student,
                                                     records=ref_to_pb(records), top_k=5, output_prefix="jobs/t/round-1/tl")  # fmt: skip
            got = await stub.TopLogprobs(request)
            assert got.records == 3 and got.teacher["backend"] == "openai" and got.teacher["model"] == "openai:vllm"
            rows = topk.loads(store.get_bytes(ref_from_pb(got.logprobs))).rows
            lm, tok = load_model(str(tiny_model_dir))
            want = transformers_topk(lm.eval(), tok, [(r["prompt"], r["response"]) for r in RECORDS], 5, 512)
            for r, w in zip(RECORDS, want, strict=True):
                row = rows[topk.record_digest(r["prompt"], r["response"])]
                assert (row.ids[:, 0] == w.ids[:, 0]).all()
                np.testing.assert_allclose(row.logprobs.astype(np.float32), w.logprobs.astype(np.float32), atol=2e-3)
                np.testing.assert_allclose(row.chosen.astype(np.float32), w.chosen.astype(np.float32), atol=2e-3)
            # one request per record, each the student's own token ids
            prompts = [b["prompt"] for b in good.bodies if b.get("prompt")]
            assert all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompts)

            for name, message in (("texts", "the prompt's token ids were not echoed"),
                                  ("plain", "gives no prompt log-probs"),
                                  ("other", "tokenize differently: chat templates render differently")):  # fmt: skip
                with pytest.raises(grpc.aio.AioRpcError) as e:  # the check alone, as the job's distill-check step asks
                    await stub.TopLogprobs(teacher_pb2.TopLogprobsRequest(model=common_pb2.ModelRef(base=f"openai:{name}"),
                                                                          student=student, top_k=5))  # fmt: skip
                assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
                assert message in e.value.details() and "\n" not in e.value.details(), e.value.details()
    finally:
        good.close()
        texts.close()
