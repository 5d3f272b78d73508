"""Containment regressions (issue 10): one test per finding, unit-level where possible.

- a task sent to the gateway with `seeds: /etc/shadow` never opens the file;
- `teacher.model: openai:m@http://ANY-HOST/v1` (SSRF + key leak) is refused everywhere;
- `ModelRef.adapter.sha256 = "../../../tmp/x/adapterdir"` never loads a directory outside the store;
- `train.lora_alpha: .inf` (and NaN anywhere) is refused, naming the field;
- a 1 MB key gets a bounded error detail;
- malformed task files (non-UTF-8, deep nesting, non-UTF-8 seeds, huge numbers) are one line, exit 2.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import grpc
import pytest

from syllabus.artifacts import (
    ArtifactRef,
    InvalidKey,
    LocalArtifactStore,
    validate_key,
    validate_output_key,
)
from syllabus.auth import bounded
from syllabus.models import VERIFIED_MARKER, fetch_adapter, pack_adapter
from syllabus.pb import first_nonfinite
from syllabus.tasks import TaskSpecError, parse_task
from syllabus_sdk.common.v1 import common_pb2
from syllabus_sdk.student.v1 import student_pb2
from syllabus_sdk.teacher.v1 import teacher_pb2
from syllabus_sdk.trainer.v1 import trainer_pb2

pytestmark = pytest.mark.unit

TASK = """name: t
kind: classification
instructions: classify
labels: [a, b]
seeds: [{input: one, label: a}, {input: two, label: b}]
eval: [{input: three, label: a}]
"""
INLINE_ONLY = "seeds: a task sent to the gateway must carry its examples inline; `syllabus run` inlines files"


class Aborted(Exception):
    def __init__(self, code, details):
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


class FakeContext:
    async def abort(self, code, details="", trailing_metadata=()):
        raise Aborted(code, details)


# -- the gateway reads no server files -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/passwd", "/nonexistent/seeds.jsonl", "seeds.jsonl"])
def test_gateway_task_with_a_file_reference_is_rejected_without_opening_it(path, monkeypatch) -> None:
    opened = []
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(self) or b"")
    monkeypatch.setattr(Path, "is_file", lambda self: opened.append(self) or True)
    with pytest.raises(TaskSpecError) as err:
        parse_task(TASK.replace("seeds: [{input: one, label: a}, {input: two, label: b}]", f"seeds: {path}"),
                   source="task_yaml", inline_only=True)  # fmt: skip
    assert str(err.value) == INLINE_ONLY  # the same answer whether the file exists or not
    assert opened == []


def test_gateway_submit_job_answers_invalid_argument_for_a_file_reference(tmp_path) -> None:
    from orchestrator.gateway import JobServicer
    from syllabus.config import Config
    from syllabus_sdk.jobs.v1 import jobs_pb2

    servicer = JobServicer(Config(home=tmp_path), client=None)
    request = jobs_pb2.SubmitJobRequest(task_yaml=TASK.replace("eval: [{input: three, label: a}]", "eval: /etc/shadow"))
    with pytest.raises(Aborted) as err:
        asyncio.run(servicer.SubmitJob(request, FakeContext()))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details.startswith("eval: a task sent to the gateway must carry its examples inline")


def test_cli_inlines_file_references_before_submitting(tmp_path) -> None:
    from syllabus.tasks import dump_task, load_task

    (tmp_path / "seeds.jsonl").write_text('{"input": "one", "label": "a"}\n{"input": "two", "label": "b"}\n')
    (tmp_path / "task.yaml").write_text(TASK.replace("seeds: [{input: one, label: a}, {input: two, label: b}]", "seeds: seeds.jsonl"))
    sent = dump_task(load_task(tmp_path / "task.yaml"))
    assert [ex.input for ex in parse_task(sent, inline_only=True).seeds] == ["one", "two"]


# -- teachers at HTTP endpoints come from server config ------------------------------------------


@pytest.mark.parametrize("model", ["openai:m@http://ANY-HOST/v1", "openai:http://10.0.0.1/v1", "http://x/m"])
def test_a_url_as_teacher_model_is_refused(model) -> None:
    from teacher_svc.service import RequestFailed, _check_model

    with pytest.raises(TaskSpecError, match="teacher.model: name a configured endpoint, not a URL"):
        parse_task(TASK + f"teacher: {{model: '{model}'}}\n")
    with pytest.raises(RequestFailed) as err:
        _check_model(common_pb2.ModelRef(base=model))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message.startswith("model.base: name a configured endpoint")


# -- every ArtifactRef / adapter reference is checked ---------------------------------------------


def test_adapter_sha256_path_traversal_never_loads_outside_the_store(tmp_path) -> None:
    from student_svc.service import InvalidRequest, StudentServicer
    from teacher_svc.service import RequestFailed, _check_model

    evil = tmp_path / "x" / "adapterdir"
    evil.mkdir(parents=True)
    (evil / "adapter_config.json").write_text("{}")
    (evil / VERIFIED_MARKER).write_text("forged\n")
    store = LocalArtifactStore(tmp_path / "store")
    good = store.put_bytes("jobs/j/a.tar", b"x")
    cache = tmp_path / "cache" / "a" / "b"
    sha = "../../../x/adapterdir"
    assert (cache / sha).resolve() == evil.resolve()  # what the unchecked cache lookup used to return
    ref = ArtifactRef(uri=good.uri, sha256=sha, size_bytes=1)
    with pytest.raises(InvalidKey) as err:
        fetch_adapter(store, ref, cache)
    assert err.value.part == "sha256"

    with pytest.raises(RequestFailed) as terr:
        _check_model(common_pb2.ModelRef(base="bundled:smollm2-135m-instruct",
                                         adapter=common_pb2.ArtifactRef(uri=good.uri, sha256=sha)))  # fmt: skip
    assert (terr.value.code, terr.value.message.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "model.adapter.sha256")

    student = StudentServicer(store, models=None, adapter_cache=cache)
    with pytest.raises(InvalidRequest) as serr:
        student._adapter_dir(ref)
    assert serr.value.field == "model.adapter.sha256"


def test_refs_outside_the_store_and_bad_checksums_are_invalid(tmp_path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    good = store.put_bytes("jobs/j/x.jsonl", b"{}\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("s")
    for uri in (outside.as_uri(), good.uri.replace("/jobs/", "/../secret.txt/"), "s3://bucket/jobs/j/x.jsonl",
                "http://evil/x", "file://otherhost" + good.uri.removeprefix("file://")):  # fmt: skip
        with pytest.raises(InvalidKey):
            store.get_bytes(ArtifactRef(uri=uri, sha256=good.sha256, size_bytes=1))
    for sha in ("", "ABC", good.sha256.upper(), good.sha256 + "0", "../" + good.sha256[3:]):
        with pytest.raises(InvalidKey) as err:
            store.get_bytes(ArtifactRef(uri=good.uri, sha256=sha, size_bytes=1))
        assert err.value.part == "sha256"
    assert store.get_bytes(good) == b"{}\n"


def test_cached_adapter_dir_is_used_only_after_verification(tmp_path, tiny_adapter_dir) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    ref = store.put_bytes("jobs/j/adapter.tar", pack_adapter(tiny_adapter_dir))
    cache = tmp_path / "cache"
    planted = cache / ref.sha256
    planted.mkdir(parents=True)
    (planted / "adapter_config.json").write_text('{"planted": true}')  # unverified: not trusted
    out = fetch_adapter(store, ref, cache)
    assert out == planted and (out / VERIFIED_MARKER).is_file()
    assert "planted" not in (out / "adapter_config.json").read_text()


@pytest.fixture
def tiny_adapter_dir(tmp_path) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    return d


# -- output keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["out/x.jsonl", "jobs/x.jsonl", "jobs/j/../x", "/jobs/j/x", "jobs//j/x", "jobs/j/x/", "jobs/j/x\x00",
     "jobs/j/" + "a" * 201, "jobs/j/" + "a/" * 300 + "x", "jobs/j/x y", "jobs/j/\u00e9", "jobs/j/.tmp-x"],
)  # fmt: skip
def test_bad_output_keys_are_rejected_with_a_bounded_message(key) -> None:
    with pytest.raises(InvalidKey) as err:
        validate_output_key(key)
    assert len(str(err.value)) < 200 and "\n" not in str(err.value)


def test_a_1mb_key_gets_a_bounded_detail(tmp_path) -> None:
    from teacher_svc.service import RequestFailed, _check_key

    key = "jobs/j/" + "k" * (1 << 20)
    with pytest.raises(RequestFailed) as err:
        _check_key("output_key", key)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and len(err.value.message) < 200
    with pytest.raises(InvalidKey):
        validate_key("x/" * (1 << 19))
    assert len(bounded("output_key: " + key)) <= 400


def test_an_output_key_naming_a_directory_is_invalid_before_any_compute(tmp_path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    store.put_bytes("jobs/j/round-1/a.jsonl", b"x")
    for key in ("jobs/j/round-1", "jobs/j/round-1/a.jsonl/b"):
        with pytest.raises(InvalidKey):
            store.stat(key)
        with pytest.raises(InvalidKey):
            store.put_bytes(key, b"y")


# -- no inf/NaN anywhere -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_tail", "field"),
    [("train: {lora_alpha: .inf}", "train.lora_alpha"), ("train: {learning_rate: .nan}", "train.learning_rate"),
     ("generate: {temperature: -.inf}", "generate.temperature"), ("select: {top_fraction: .NaN}", "select.top_fraction"),
     ("train: {lora_alpha: 1e400}", "train.lora_alpha"), ("train: {seed: 99999999999999999999999}", "train.seed")],
)  # fmt: skip
def test_non_finite_and_huge_numbers_in_a_task_are_refused(yaml_tail, field) -> None:
    with pytest.raises(TaskSpecError) as err:
        parse_task(TASK + yaml_tail + "\n", source="task_yaml")
    assert str(err.value).startswith(f"task_yaml: {field}: ")


@pytest.mark.parametrize(
    ("recipe", "field"),
    [("{stages: [{lora: {rank: 100000}}]}", "train.recipe.stages[0].lora.rank"),
     ("{stages: [{epochs: 1000000}]}", "train.recipe.stages[0].epochs"),
     ("{stages: [{steps: 99999999999}]}", "train.recipe.stages[0].steps"),
     ("{max_seq_len: 10000000, row_tokens: 10000000, stages: [{}]}", "train.recipe.max_seq_len"),
     ("{batch_size: 1000000, stages: [{}]}", "train.recipe.batch_size"),
     ("{stages: [" + ", ".join(["{}"] * 17) + "]}", "train.recipe.stages"),
     ("{stages: [{lora: {targets: []}}]}", "train.recipe.stages[0].lora.targets")],
)  # fmt: skip
def test_an_inline_recipe_is_bounded_like_the_train_fields(recipe: str, field: str) -> None:
    """An inline train.recipe skipped every TrainSpec limit: one tenant's rank, steps or sequence
    length could hold the single trainer for days or crash-loop it."""
    with pytest.raises(TaskSpecError) as err:
        parse_task(TASK + f"train: {{recipe: {recipe}}}\n", source="task_yaml")
    assert str(err.value).startswith(f"task_yaml: {field}"), str(err.value)
    assert "\n" not in str(err.value)


def test_non_finite_request_fields_are_named() -> None:
    from trainer_svc.jobs import InvalidRequest
    from trainer_svc.server import check_request

    req = trainer_pb2.StartTrainingRequest(lora=trainer_pb2.LoraSpec(alpha=math.inf), output_key="jobs/j/a.tar")
    with pytest.raises(InvalidRequest) as err:
        check_request(req)
    assert err.value.field == "lora.alpha"
    assert first_nonfinite(teacher_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(top_p=math.nan))) == "sampling.top_p"
    assert first_nonfinite(student_pb2.SelectRequest(temperature=-math.inf)) == "temperature"
    assert first_nonfinite(trainer_pb2.DpoSpec(beta=0.5)) is None


# -- malformed task files: one line, exit code 2 -------------------------------------------------


def _run_cli(tmp_path, capsys, monkeypatch, task: bytes, seeds: bytes | None = None) -> tuple[int, str]:
    from orchestrator.cli import main

    monkeypatch.setenv("SYLLABUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SYLLABUS_GATEWAY_ADDRESS", "127.0.0.1:9")  # never reached: validation fails first
    (tmp_path / "task.yaml").write_bytes(task)
    if seeds is not None:
        (tmp_path / "seeds.jsonl").write_bytes(seeds)
    code = main(["run", str(tmp_path / "task.yaml")])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("task", "seeds", "needle"),
    [
        (b"name: t\nkind: classification\ninstructions: \xff\xfe bad\n", None, "not UTF-8"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", None, "nested too deeply"),
        (b"a: " + b"{b: " * 2000 + b"1" + b"}" * 2000 + b"\n", None, "nested too deeply"),
        (TASK.replace("seeds: [{input: one, label: a}, {input: two, label: b}]", "seeds: seeds.jsonl").encode(),
         b'{"input": "\xff", "label": "a"}\n', "seeds: seeds.jsonl is not UTF-8"),
        (TASK.replace("seeds: [{input: one, label: a}, {input: two, label: b}]", "seeds: seeds.jsonl").encode(),
         b"[" * 100000 + b"\n", "invalid JSON"),
        ((TASK + "train: {lora_alpha: .inf}\n").encode(), None, "train.lora_alpha"),
        ((TASK + "rounds: " + "9" * 5000 + "\n").encode(), None, "task.yaml"),
    ],
)  # fmt: skip
def test_malformed_task_files_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, task, seeds, needle) -> None:
    code, err = _run_cli(tmp_path, capsys, monkeypatch, task, seeds)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err and len(err) < 600


# -- one tenant cannot stall the gateway with a task file (issue 25, item 2) ----------------------


def _finishes(fn, timeout: float = 20.0):
    """fn()'s result or exception, or pytest.fail when it is still running after `timeout` (a hang
    guard, not a timing: each of these took minutes to hours before the fix)."""
    import threading

    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"still running after {timeout:.0f} s")
    return out


def _alias_bomb(levels: int = 20) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return TASK + "\n".join(lines) + "\n"  # ~10^20 paths for anything that walks it


def test_a_yaml_alias_bomb_is_refused_before_it_expands() -> None:
    bomb = _alias_bomb()
    assert len(bomb) < 2000
    out = _finishes(lambda: parse_task(bomb, source="task_yaml", inline_only=True))
    assert isinstance(out.get("error"), TaskSpecError)
    assert str(out["error"]) == "task_yaml: invalid YAML: its aliases expand to 1.23e+20 nodes; at most 4000000 are allowed"


def test_aliases_that_expand_little_still_read_and_a_recipe_bomb_is_refused() -> None:
    import yaml

    from syllabus.recipe import RecipeError, load_recipe

    stage = {"name": "a", "steps": 1}
    shared = yaml.safe_dump({"stages": [stage, stage]})  # PyYAML writes &id001 / *id001 for a shared object
    assert "*id001" in shared and len(load_recipe(shared).stages) == 2
    bomb = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
                                                                    for i in range(1, 20)])  # fmt: skip
    out = _finishes(lambda: load_recipe(bomb))
    assert isinstance(out.get("error"), RecipeError) and "aliases expand to" in str(out["error"])


def test_an_oversized_task_is_refused_before_parsing(monkeypatch) -> None:
    from syllabus import tasks

    monkeypatch.setattr(tasks, "MAX_TASK_BYTES", 1000)
    with pytest.raises(TaskSpecError, match="^task_yaml: 1001 bytes; a task file is at most 1000 bytes$"):
        parse_task(b"#" * 1001, source="task_yaml")


def test_label_checks_stay_linear_and_their_messages_bounded() -> None:
    labels = [f"l{i}" for i in range(60_000)]  # the quadratic checks ran for over 2 minutes on this many
    task = TASK.replace("labels: [a, b]", "labels: [a, b, " + ", ".join(labels) + "]")
    out = _finishes(lambda: parse_task(task), timeout=90)  # ~7 s alone; the old checks, over 2 minutes
    err = str(out.get("error"))
    assert err.startswith("task: seeds: no seed example for label(s) l0, l1,") and err.endswith("and 59990 more")
    out = _finishes(lambda: parse_task(TASK.replace("labels: [a, b]", "labels: [a, b, " + ", ".join(labels * 2) + "]")), timeout=90)
    assert str(out.get("error")).endswith("and 59990 more")


def test_the_gateway_parses_a_task_off_its_event_loop(tmp_path, monkeypatch) -> None:
    import threading

    from orchestrator import gateway
    from syllabus.config import Config
    from syllabus_sdk.jobs.v1 import jobs_pb2

    threads = []

    def parse(*args, **kwargs):
        threads.append(threading.current_thread())
        raise TaskSpecError("task_yaml: refused after the thread check")

    monkeypatch.setattr(gateway, "parse_task", parse)
    servicer = gateway.JobServicer(Config(home=tmp_path), client=None)
    with pytest.raises(Aborted) as err:
        asyncio.run(servicer.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=_alias_bomb()), FakeContext()))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert threads and threads[0] is not threading.main_thread()


# -- a checkpoint from the store is data, never code (issue 25, item 5) ---------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))  # runs on load under weights_only=False


def test_a_tampered_checkpoint_runs_nothing_and_training_starts_over(tmp_path, caplog) -> None:
    import io

    import torch

    from trainer_svc.staged import CKPT_FORMAT, _load_ckpt

    store = LocalArtifactStore(tmp_path / "store")
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": CKPT_FORMAT, "stage": 0, "step": 1, "evil": _Payload(marker)}, buf)
    store.put_bytes("jobs/j/adapter.ckpt", buf.getvalue())
    with caplog.at_level("WARNING"):
        assert _load_ckpt(store, "jobs/j/adapter.ckpt") is None
    assert not marker.exists()
    assert "is refused" in caplog.text and "training from the start" in caplog.text


# -- a job id cannot name another job's child workflow (issue 25, item 7) -------------------------


@pytest.mark.parametrize("job_id", ["victim-tailor-1", "victim-baseline-random-2", "victim-baseline-seeds_only-10"])
def test_a_job_id_shaped_like_a_child_workflow_is_refused(tmp_path, job_id: str) -> None:
    from orchestrator.gateway import JobServicer
    from orchestrator.keys import baseline_workflow_id, tailor_workflow_id
    from syllabus.config import Config
    from syllabus_sdk.jobs.v1 import jobs_pb2

    assert {tailor_workflow_id("victim", 1), baseline_workflow_id("victim", "random", 2)} <= {
        "victim-tailor-1", "victim-baseline-random-2"}  # the ids the workflows use  # fmt: skip
    servicer = JobServicer(Config(home=tmp_path), client=None)
    with pytest.raises(Aborted) as err:
        asyncio.run(servicer.SubmitJob(jobs_pb2.SubmitJobRequest(task_yaml=TASK, job_id=job_id), FakeContext()))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details == "job_id: a '-tailor-N' or '-baseline-ARM-N' ending is reserved for a job's own steps"
