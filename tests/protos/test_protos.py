"""The contract: buf lint passes and the generated SDK code is exactly what the script produces."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "syllabus_sdk"
AREAS = ("common", "teacher", "student", "trainer", "jobs")

pytestmark = pytest.mark.unit


def _buf() -> str:
    return shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf") or pytest.fail("buf not installed (pip install buf-bin)")


def test_buf_lint_passes() -> None:
    result = subprocess.run([_buf(), "lint"], cwd=ROOT, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_catches_a_violation(tmp_path: Path) -> None:
    # Guard against a lint config that checks nothing: an uncommented, badly named RPC must fail.
    mod = tmp_path / "protos" / "syllabus" / "bad" / "v1"
    mod.mkdir(parents=True)
    (mod / "bad.proto").write_text('syntax = "proto3";\npackage syllabus.bad.v1;\nservice Bad { rpc do_it(X) returns (X); }\nmessage X {}\n')
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    result = subprocess.run([_buf(), "lint"], cwd=tmp_path, check=False, capture_output=True, text=True)
    assert result.returncode != 0
    assert "do_it" in result.stdout + result.stderr


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for area in AREAS for p in sorted((root / area).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_is_reproducible(tmp_path: Path) -> None:
    # Generated beside the committed code, never over it: a failing run leaves the checkout as it was.
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
                            check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    committed, fresh = _snapshot(SDK), _snapshot(tmp_path)
    hint = "the committed stubs are not what the locked grpcio-tools generates: run `make protos` and commit"
    assert sorted(fresh) == sorted(committed), hint
    changed = [name for name in committed if committed[name] != fresh[name]]
    assert not changed, f"{hint} (differs: {changed})"


def test_the_stubs_were_generated_by_the_locked_grpcio_tools() -> None:
    # A lock refresh that moves grpcio-tools must come with regenerated stubs (make protos).
    lock = (ROOT / "requirements" / "lock.txt").read_text()
    locked = re.search(r"^grpcio-tools==(\S+)", lock, re.MULTILINE).group(1)
    from syllabus_sdk.jobs.v1 import jobs_pb2_grpc

    assert jobs_pb2_grpc.GRPC_GENERATED_VERSION == locked, "run `make protos` and commit the stubs"


def test_generated_imports_live_in_the_sdk_package() -> None:
    from syllabus_sdk.jobs.v1 import jobs_pb2
    from syllabus_sdk.teacher.v1 import teacher_pb2

    assert jobs_pb2.DESCRIPTOR.package == "syllabus.jobs.v1"
    assert teacher_pb2.GenerateRequest().model.DESCRIPTOR.full_name == "syllabus.common.v1.ModelRef"
    assert (SDK / "teacher" / "v1" / "teacher_pb2.pyi").is_file()
