"""Composition only in the orchestrator: no service package imports another service package or the
orchestrator, and the shared library imports none of them.

Every `.py` file is parsed with `ast`; imports at any depth count (module level, inside functions,
under `if TYPE_CHECKING:`), so a lazy import cannot slip a service-to-service call past the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("teacher_svc", "student_svc", "trainer_svc")
ORCHESTRATOR = "orchestrator"


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; relative imports resolve against
    the file's package (`from .. import x` names the module x)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(root).parent.parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            if node.module:
                found.append((node.lineno, ".".join((*base, node.module))))
            else:
                found += [(node.lineno, ".".join((*base, alias.name))) for alias in node.names]
    return found


def violations(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module in imported_modules(path, root):
            if module.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(root)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_nor_the_orchestrator(service: str) -> None:
    forbidden = tuple(s for s in SERVICES if s != service) + (ORCHESTRATOR,)
    assert violations(service, forbidden) == []


def test_the_shared_library_imports_no_service_nor_the_orchestrator() -> None:
    assert violations("syllabus", (*SERVICES, ORCHESTRATOR)) == []


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "teacher_svc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text(
        "import json\n"
        "def f():\n"
        "    from student_svc.evaluation import LABEL\n"
        "    import trainer_svc.jobs\n"
        "    from .. import orchestrator\n"
        "    return LABEL\n"
    )
    assert violations("teacher_svc", ("student_svc", "trainer_svc", "orchestrator"), tmp_path) == [
        "teacher_svc/bad.py:3 imports student_svc.evaluation",
        "teacher_svc/bad.py:4 imports trainer_svc.jobs",
        "teacher_svc/bad.py:5 imports orchestrator",
    ]
