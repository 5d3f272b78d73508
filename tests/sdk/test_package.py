"""The SDK is its own distribution, `syllabus-sdk` (sdk/pyproject.toml), that needs only grpcio and
protobuf; the main `syllabus` distribution depends on it instead of packaging it.
(tests/e2e/test_sdk_package.py installs it alone in a fresh venv and runs a job through it.)"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk"


def _load(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _lower_bound(requirements: list[str], name: str) -> tuple[int, ...]:
    (req,) = [r for r in requirements if _name(r) == name]
    m = re.search(r">=\s*([\d.]+)", req)
    assert m, f"{req}: give a lower bound"
    return tuple(int(x) for x in m.group(1).split("."))


def test_the_sdk_depends_only_on_grpcio_and_protobuf_new_enough_for_its_stubs() -> None:
    project = _load(SDK / "pyproject.toml")["project"]
    deps = project["dependencies"]
    assert project["name"] == "syllabus-sdk"
    assert sorted(_name(r) for r in deps) == ["grpcio", "protobuf"]
    # The generated modules refuse older runtimes: the bounds must admit only versions they accept.
    from syllabus_sdk.jobs.v1 import jobs_pb2_grpc

    grpc_generated = tuple(int(x) for x in jobs_pb2_grpc.GRPC_GENERATED_VERSION.split("."))
    assert _lower_bound(deps, "grpcio") >= grpc_generated
    text = (SDK / "syllabus_sdk/jobs/v1/jobs_pb2.py").read_text()
    m = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", text)
    assert m, "the generated module no longer checks the protobuf runtime version: update this test"
    assert _lower_bound(deps, "protobuf") >= tuple(int(x) for x in m.groups())


def test_the_main_package_depends_on_the_sdk_and_does_not_ship_it() -> None:
    main = _load(ROOT / "pyproject.toml")
    sdk_version = _load(SDK / "pyproject.toml")["project"]["version"]
    assert f"syllabus-sdk=={sdk_version}" in main["project"]["dependencies"]
    find = main["tool"]["setuptools"]["packages"]["find"]
    assert "sdk" not in find["where"] and not any(p.startswith("syllabus_sdk") for p in find["include"])
    assert "syllabus_sdk" not in main["tool"]["setuptools"].get("package-data", {})
    # `make install` installs both from the checkout (the sdk is on no index) without resolving anything
    # (their dependencies come from the lock), and reinstalls when either pyproject changes.
    makefile = (ROOT / "Makefile").read_text()
    assert "pyproject.toml sdk/pyproject.toml" in makefile
    assert "pip install -q --no-deps --no-build-isolation -e ./sdk -e ." in makefile


def test_the_sdk_imports_only_grpc_protobuf_and_the_standard_library() -> None:
    allowed = {"grpc", "google", "syllabus_sdk", *sys.stdlib_module_names}
    bad = []
    for path in sorted((SDK / "syllabus_sdk").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            bad += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] not in allowed]
    assert bad == []
