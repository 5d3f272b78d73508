"""The workflows call activities through declarations (`orchestrator.calls`, and the child flows'
own): a workflow module imports no grpc, SQLAlchemy or torch, and every declaration matches the
implementation the worker registers under its name (input and output types included), both ways."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from temporalio import activity

from orchestrator import baselines, calls, tailoring
from orchestrator.activities import Activities
from syllabus.config import Config

pytestmark = pytest.mark.unit

WORKFLOW_MODULES = ("orchestrator.workflows", "orchestrator.baselines", "orchestrator.tailoring")
HEAVY = ("grpc", "grpc_health", "grpc_reflection", "sqlalchemy", "torch", "transformers", "peft", "minio", "boto3")


def test_the_workflow_modules_import_no_grpc_sql_or_torch_of_their_own() -> None:
    """Temporal's client brings grpc along; what the workflow modules add on top must bring none."""
    probe = f"""
import sys
import temporalio.client, temporalio.workflow
before = set(sys.modules)
for name in {WORKFLOW_MODULES!r}:
    __import__(name)
added = set(sys.modules) - before
print(sorted(m for m in added if m.split(".")[0] in {HEAVY!r} or m.endswith("_pb2_grpc")))
"""
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "[]", f"a workflow module imports {out}"


def _declarations() -> dict[str, object]:
    found = {}
    for module in (calls, baselines, tailoring):
        for value in vars(module).values():
            if callable(value) and (defn := activity._Definition.from_callable(value)) is not None:
                assert defn.name not in found, f"{defn.name} is declared twice"
                found[defn.name] = value
    return found


def test_every_declaration_matches_the_implementation_the_worker_registers(tmp_path: Path) -> None:
    registered = {activity._Definition.must_from_callable(fn).name: fn for fn in Activities(Config(home=tmp_path)).all()}
    declared = _declarations()
    assert sorted(declared) == sorted(registered)
    for name, stub in declared.items():
        impl = typing.get_type_hints(registered[name])
        assert typing.get_type_hints(stub) == {"inp": impl["inp"], "return": impl["return"]}, name
        with pytest.raises(NotImplementedError, match="declaration"):
            stub(None).send(None)  # a declaration never runs in place of its implementation
