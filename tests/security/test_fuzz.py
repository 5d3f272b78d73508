"""A seeded, bounded fuzzer over every RPC of the teacher, student, trainer and gateway (issue 10).

The servers run in-process on the tiny model. Requests are valid templates mutated field by field
(path-like and huge strings, NUL bytes, URLs, deep YAML, negative/huge/inf/NaN numbers, bad enums,
refs outside the store or with a traversal as sha256), raw bytes with invalid UTF-8 in a string
field, truncated messages and random blobs, all sent with a valid token. The contract: no UNKNOWN,
no INTERNAL, every detail at most 400 characters without server paths, every server SERVING at
the end. Requests that pass validation may start real work: short deadlines bound them
(DEADLINE_EXCEEDED / CANCELLED / UNAVAILABLE are acceptable answers).

    FUZZ_SEED=7 FUZZ_REQUESTS=2000 pytest tests/security/test_fuzz.py -m integration
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import random
import shutil
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from syllabus import auth
from syllabus.config import Config
from syllabus.records import dumps_jsonl
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.jobs.v1 import jobs_pb2
from syllabus_sdk.student.v1 import student_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2
from syllabus_sdk.trainer.v1 import trainer_pb2

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("FUZZ_SEED", "20260101"))
REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "2000"))
CONCURRENCY = 24
DEADLINE_S = 3.0
OK_CODES = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ABORTED,
}  # fmt: skip
INF, NAN = math.inf, math.nan


def _ref(ref) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size_bytes)


class Stack:
    def __init__(self, tmp: Path, model: str) -> None:
        self.tmp, self.model = tmp, model
        self.served: dict[str, object] = {}
        self.channels: dict[str, grpc.aio.Channel] = {}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    from student_svc.server import create_server as create_student
    from syllabus.artifacts import open_store
    from teacher_svc.server import create_server as create_teacher
    from trainer_svc.server import create_server as create_trainer
    from trainer_svc.server import jobs_for

    tmp = tmp_path_factory.mktemp("fuzz")
    auth.ensure_local_tokens(tmp)
    config = Config(home=tmp, database_url=f"sqlite:///{tmp / 'syllabus.db'}", artifact_url=(tmp / "artifacts").as_uri(),
                    task_queue=f"fuzz-{uuid.uuid4().hex[:6]}")  # fmt: skip
    jobs = jobs_for(config)
    trainer = await create_trainer(config, jobs=jobs)
    config = config.model_copy(update={"trainer_address": f"127.0.0.1:{trainer.port}"})
    teacher = await create_teacher(config)
    student = await create_student(config)
    s = Stack(tmp, str(tiny_model_dir))
    s.served = {"teacher": teacher, "student": student, "trainer": trainer}
    s.store = open_store(config.resolved_artifact_url(), config)
    temporal = None
    path = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    if path:
        from temporalio.testing import WorkflowEnvironment

        from orchestrator.gateway import create_server as create_gateway

        try:
            temporal = await asyncio.wait_for(WorkflowEnvironment.start_local(dev_server_existing_path=path), 60)
            s.served["gateway"] = await create_gateway(config, "127.0.0.1:0", client=temporal.client)
        except Exception as e:  # noqa: BLE001 — the services are fuzzed either way
            print(f"fuzz: gateway not started ({type(e).__name__}: {e})")
    for served in s.served.values():
        await served.set_serving(True)
    svc_token, client_token = auth.service_token(config), auth.client_token(config)
    for name, served in s.served.items():
        s.channels[name] = auth.channel(f"127.0.0.1:{served.port}", client_token if name == "gateway" else svc_token,
                                        options=[("grpc.max_receive_message_length", 8 << 20)])  # fmt: skip
    try:
        yield s
    finally:
        for ch in s.channels.values():
            await ch.close()
        for served in s.served.values():
            await served.stop(0.5)
        await jobs.close()
        if temporal is not None:
            await temporal.shutdown()


def _templates(s: Stack) -> dict[str, object]:
    """One valid (or nearly valid) request per method, cheap on the tiny model."""
    put = s.store.put_bytes
    seeds = _ref(put("jobs/fuzz/in/seeds.jsonl", dumps_jsonl([{"input": "one", "label": "a"}, {"input": "two", "label": "b"}])))
    examples = _ref(put("jobs/fuzz/in/examples.jsonl", dumps_jsonl(
        [{"id": "e1", "input": "uno", "label": "a"}, {"id": "e2", "input": "dos", "label": "b"}])))  # fmt: skip
    evalset = _ref(put("jobs/fuzz/in/eval.jsonl", dumps_jsonl([{"id": "v1", "input": "three", "label": "a"}])))
    preds = _ref(put("jobs/fuzz/in/preds.jsonl", dumps_jsonl([{"id": "v1", "label": "a", "prediction": "b", "correct": False}])))
    pairs = _ref(put("jobs/fuzz/in/pairs.jsonl", dumps_jsonl([{"prompt": "p", "response": "r"}] * 2)))
    junk_tar = _ref(put("jobs/fuzz/in/adapter.tar", os.urandom(700)))
    model = common_pb2.ModelRef(base=s.model)
    sampling = common_pb2.SamplingParams(temperature=0.0, max_new_tokens=4)
    kind, labels = common_pb2.TASK_KIND_CLASSIFICATION, ["a", "b"]
    task_yaml = (f"name: fuzz\nkind: classification\ninstructions: classify\nlabels: [a, b]\nrounds: 1\n"
                 f"seeds: [{{input: one, label: a}}, {{input: two, label: b}}]\neval: [{{input: three, label: a}}]\n"
                 f"teacher: {{model: '{s.model}'}}\nstudent: {{model: '{s.model}'}}\n")  # fmt: skip
    s.refs = [seeds, examples, evalset, preds, pairs, junk_tar]
    return {
        "/syllabus.teacher.v1.TeacherService/Generate": teacher_pb2.GenerateRequest(
            model=model, instructions="classify", labels=labels, kind=kind, seeds=seeds, per_label=1, sampling=sampling,
            batch_size=2, output_key="jobs/fuzz/gen.jsonl"),
        "/syllabus.teacher.v1.TeacherService/Critique": teacher_pb2.CritiqueRequest(
            kind=kind, labels=labels, examples=examples, seeds=seeds, output_key="jobs/fuzz/crit"),
        "/syllabus.teacher.v1.TeacherService/AnalyzeErrors": teacher_pb2.AnalyzeErrorsRequest(
            kind=kind, labels=labels, predictions=preds, eval=evalset, output_key="jobs/fuzz/skills.jsonl"),
        "/syllabus.teacher.v1.TeacherService/Tailor": teacher_pb2.TailorRequest(
            instructions="x", drafts=examples, scores=preds, output_key="jobs/fuzz/tailor.jsonl"),
        "/syllabus.teacher.v1.TeacherService/TopLogprobs": teacher_pb2.TopLogprobsRequest(
            model=model, student=model, records=pairs, top_k=2, output_prefix="jobs/fuzz/topk"),
        "/syllabus.student.v1.StudentService/Score": student_pb2.ScoreRequest(
            model=model, dataset=pairs, output_key="jobs/fuzz/score.jsonl"),
        "/syllabus.student.v1.StudentService/ScoreStream": student_pb2.ScoreStreamRequest(
            request=student_pb2.ScoreRequest(model=model, dataset=pairs, output_key="jobs/fuzz/score2.jsonl")),
        "/syllabus.student.v1.StudentService/Evaluate": student_pb2.EvaluateRequest(
            model=model, kind=kind, eval_set=evalset, labels=labels, output_key="jobs/fuzz/eval.jsonl"),
        "/syllabus.student.v1.StudentService/Sample": student_pb2.SampleRequest(
            model=model, dataset=pairs, sampling=common_pb2.SamplingParams(temperature=1.0, max_new_tokens=4),
            output_key="jobs/fuzz/samples.jsonl"),
        "/syllabus.student.v1.StudentService/Select": student_pb2.SelectRequest(
            dataset=examples, scores=examples, policy=student_pb2.SELECT_POLICY_TOP_K, column="label", k=1,
            output_key="jobs/fuzz/sel.jsonl"),
        "/syllabus.trainer.v1.TrainerService/StartTraining": trainer_pb2.StartTrainingRequest(
            job_key="jobs/fuzz/train", model=model, dataset=pairs,
            lora=trainer_pb2.LoraSpec(rank=2, alpha=4, target_modules=["q_proj"]),
            training=trainer_pb2.TrainingSpec(epochs=1, learning_rate=1e-3, batch_size=2), output_key="jobs/fuzz/a.tar"),
        "/syllabus.trainer.v1.TrainerService/WatchTraining": trainer_pb2.WatchTrainingRequest(training_id="nope"),
        "/syllabus.trainer.v1.TrainerService/CancelTraining": trainer_pb2.CancelTrainingRequest(training_id="nope"),
        "/syllabus.jobs.v1.JobService/SubmitJob": jobs_pb2.SubmitJobRequest(task_yaml=task_yaml, job_id="fuzz-1"),
        "/syllabus.jobs.v1.JobService/GetJob": jobs_pb2.GetJobRequest(job_id="fuzz-1"),
        "/syllabus.jobs.v1.JobService/ListJobs": jobs_pb2.ListJobsRequest(limit=5),
        "/syllabus.jobs.v1.JobService/WatchJob": jobs_pb2.WatchJobRequest(job_id="fuzz-1"),
        "/syllabus.jobs.v1.JobService/CancelJob": jobs_pb2.CancelJobRequest(job_id="fuzz-1"),
        "/syllabus.jobs.v1.JobService/GetLineage": jobs_pb2.GetLineageRequest(training_run_id=1),
    }


def _methods(s: Stack) -> list[tuple[str, str, object, bool]]:
    """(server, path, request class, server streaming) for every method of every served service."""
    out = []
    for server, mod in (("teacher", teacher_pb2), ("student", student_pb2), ("trainer", trainer_pb2), ("gateway", jobs_pb2)):
        if server not in s.served:
            continue
        for service in mod.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                cls = message_factory.GetMessageClass(m.input_type)
                out.append((server, f"/{service.full_name}/{m.name}", cls, m.server_streaming))
    return out


def _strings(s: Stack, rng: random.Random) -> list[str]:
    return [
        "", "../../etc/passwd", "/etc/shadow", "jobs/fuzz/../../x", "k" * (1 << 20), "jobs/" + "a" * 300 + "/x",
        "a\x00b", "jobs/fuzz/in", "jobs/fuzz/in/seeds.jsonl/x", str(s.tmp / "artifacts"), s.tmp.as_uri() + "/x",
        "openai:m@http://127.0.0.1:9/v1", "openai:nope", "vllm:x", "bundled:nope", "[" * 20000, "{a: " * 5000,
        ".inf", ".nan", "\u202e\u2603\U0001f600", s.model, "jobs/fuzz/" + "x" * 250, "s3://other/x",
        "name: x\nseeds: /etc/shadow\n", "".join(chr(rng.randrange(32, 0x2000)) for _ in range(50)), "-1", "fuzz-1",
    ]  # fmt: skip


_NUMS = {
    "int": [-1, 0, 1, 7, 2**31 - 1, -(2**31)],
    "int64": [-1, 0, 2**63 - 1, -(2**63), 10**12],
    "uint": [0, 1, 2**32 - 1],
    "float": [INF, -INF, NAN, -1.0, 0.0, 1e30, 1e-30, 0.5, 3.4e38],
}
_INTS = {FieldDescriptor.TYPE_INT32: "int", FieldDescriptor.TYPE_SINT32: "int", FieldDescriptor.TYPE_ENUM: "int",
         FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_SINT64: "int64",
         FieldDescriptor.TYPE_UINT32: "uint", FieldDescriptor.TYPE_UINT64: "uint"}  # fmt: skip


def _repeated(f) -> bool:
    return f.is_repeated if hasattr(f, "is_repeated") else f.label == FieldDescriptor.LABEL_REPEATED


def _value(f, s: Stack, rng: random.Random):
    if f.type == FieldDescriptor.TYPE_STRING:
        return rng.choice(s.strings)
    if f.type == FieldDescriptor.TYPE_BYTES:
        return os.urandom(rng.randrange(0, 64))
    if f.type == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice(_NUMS["float"])
    return rng.choice(_NUMS[_INTS.get(f.type, "int")])


def _bad_ref(s: Stack, rng: random.Random) -> common_pb2.ArtifactRef:
    good = rng.choice(s.refs)
    return rng.choice([
        good,
        common_pb2.ArtifactRef(uri=good.uri, sha256="../../../tmp/x/adapterdir"),
        common_pb2.ArtifactRef(uri=good.uri, sha256="0" * 64),
        common_pb2.ArtifactRef(uri="file:///etc/passwd", sha256=good.sha256),
        common_pb2.ArtifactRef(uri=good.uri.replace("/jobs/", "/jobs/../../"), sha256=good.sha256),
        common_pb2.ArtifactRef(uri=s.tmp.as_uri() + "/artifacts/jobs/fuzz/in", sha256=good.sha256),
        common_pb2.ArtifactRef(uri=rng.choice(s.strings)[:2000], sha256=rng.choice(s.strings)[:100]),
    ])  # fmt: skip


def _mutate(msg, s: Stack, rng: random.Random, depth: int = 0) -> None:
    fields = list(msg.DESCRIPTOR.fields)
    if not fields:
        return
    f = rng.choice(fields)
    try:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if f.message_type.GetOptions().map_entry:
                m = getattr(msg, f.name)
                key = _value(f.message_type.fields_by_name["key"], s, rng)
                vf = f.message_type.fields_by_name["value"]
                if vf.type == FieldDescriptor.TYPE_MESSAGE:
                    _mutate(m[key], s, rng, depth + 1)
                else:
                    m[key] = _value(vf, s, rng)
                return
            if f.message_type.full_name == "syllabus.common.v1.ArtifactRef":
                target = getattr(msg, f.name).add() if _repeated(f) else getattr(msg, f.name)
                target.CopyFrom(_bad_ref(s, rng))
                return
            target = getattr(msg, f.name).add() if _repeated(f) else getattr(msg, f.name)
            if depth < 4:
                for _ in range(rng.randrange(1, 3)):
                    _mutate(target, s, rng, depth + 1)
            return
        if _repeated(f):
            getattr(msg, f.name).extend(_value(f, s, rng) for _ in range(rng.randrange(1, 4)))
        else:
            setattr(msg, f.name, _value(f, s, rng))
    except (ValueError, TypeError):  # a value the client library itself refuses (e.g. -1 in a uint)
        pass


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _invalid_utf8(msg, rng: random.Random) -> bytes:
    """The message's bytes plus a string field holding bytes that are not UTF-8 (top level, or nested)."""
    strings = [f for f in msg.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_STRING]
    blob = rng.choice([b"\xff\xfe", b"abc\xc3\x28", b"\xed\xa0\x80", b"jobs/\x80/x"])
    if not strings:
        subs = [f for f in msg.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_MESSAGE]
        if not subs:
            return msg.SerializeToString() + os.urandom(8)
        f = rng.choice(subs)
        inner = b""
        nested = [g for g in f.message_type.fields if g.type == FieldDescriptor.TYPE_STRING]
        if nested:
            g = rng.choice(nested)
            inner = _varint(g.number << 3 | 2) + _varint(len(blob)) + blob
        return msg.SerializeToString() + _varint(f.number << 3 | 2) + _varint(len(inner)) + inner
    f = rng.choice(strings)
    return msg.SerializeToString() + _varint(f.number << 3 | 2) + _varint(len(blob)) + blob


def _build(path: str, cls, template, s: Stack, rng: random.Random, i: int) -> bytes:
    msg = cls()
    if template is not None:
        msg.CopyFrom(template)
    r = rng.random()
    if r < 0.04:
        return os.urandom(rng.randrange(1, 300))
    if r < 0.08:
        data = msg.SerializeToString()
        return data[: rng.randrange(0, max(1, len(data)))] + b"\x0a\xff"
    for _ in range(rng.randrange(1, 4)):
        _mutate(msg, s, rng)
    for name in ("output_key", "job_key"):  # vary keys so valid requests are not all answered from a cache
        if name in msg.DESCRIPTOR.fields_by_name and getattr(msg, name) == getattr(template, name, None) and rng.random() < 0.5:
            setattr(msg, name, f"{getattr(msg, name)}-{i}")
    if r < 0.2:
        return _invalid_utf8(msg, rng)
    return msg.SerializeToString()


async def _call(s: Stack, server: str, path: str, streaming: bool, data: bytes, stats, problems) -> None:
    ch = s.channels[server]
    code, details = grpc.StatusCode.OK, ""
    try:
        if streaming:
            call = ch.unary_stream(path, request_serializer=None, response_deserializer=None)(data, timeout=1.5 if server == "gateway" else DEADLINE_S)
            async for _ in call:
                pass
        else:
            resp = await ch.unary_unary(path, request_serializer=None, response_deserializer=None)(data, timeout=DEADLINE_S)
            if path.endswith("/StartTraining"):  # bound the work a valid request started
                started = trainer_pb2.StartTrainingResponse.FromString(resp)
                await ch.unary_unary("/syllabus.trainer.v1.TrainerService/CancelTraining")(
                    trainer_pb2.CancelTrainingRequest(training_id=started.training_id).SerializeToString(), timeout=DEADLINE_S)
    except grpc.aio.AioRpcError as e:
        code, details = e.code(), e.details() or ""
    stats[(path.rsplit("/", 1)[1], code.name)] += 1
    bad = []
    if code not in OK_CODES:
        bad.append(f"status {code.name}")
    if len(details) > 400:
        bad.append(f"detail of {len(details)} chars")
    if str(s.tmp) in details or "/tmp/" in details or "Traceback" in details or "\n" in details:
        bad.append("server path or traceback in detail")
    if bad:
        problems.append(f"{path} {code.name}: {', '.join(bad)}: {details[:300]!r}")


async def test_fuzz_all_rpcs(stack: Stack) -> None:
    rng = random.Random(SEED)
    stack.strings = _strings(stack, rng)
    templates = _templates(stack)
    methods = _methods(stack)
    assert len(methods) >= 11  # teacher 4, student 4, trainer 3 (+ gateway 6 when Temporal is available)
    stats: collections.Counter = collections.Counter()
    problems: list[str] = []
    started = time.monotonic()
    requests = []
    for i in range(REQUESTS):
        server, path, cls, streaming = methods[i % len(methods)]
        requests.append((server, path, streaming, _build(path, cls, templates.get(path), stack, rng, i)))
    rng.shuffle(requests)
    for k in range(0, len(requests), CONCURRENCY):
        await asyncio.gather(*(_call(stack, *r, stats, problems) for r in requests[k : k + CONCURRENCY]))
    elapsed = time.monotonic() - started

    by_code = collections.Counter()
    for (_, code), n in stats.items():
        by_code[code] += n
    print(f"\nfuzz seed {SEED}: {sum(stats.values())} requests over {len(methods)} methods in {elapsed:.0f}s: {dict(by_code)}")
    for (method, code), n in sorted(stats.items()):
        print(f"  {method:16s} {code:20s} {n}")
    assert not problems, f"{len(problems)} bad answers, e.g.:\n" + "\n".join(problems[:15])
    assert by_code.get("UNKNOWN", 0) == 0 and by_code.get("INTERNAL", 0) == 0

    for name, served in stack.served.items():  # every server survived and still serves
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
