"""The environment is the lock: scripts/check_lock.py passes on the venv the tests run in and names
every way a venv or a lock can drift from it (a package installed beside the lock, a missing or moved
one, a dependency the lock no longer answers)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
check_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lock)


def test_the_venv_running_the_tests_holds_exactly_the_lock() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_lock.py")],
                         check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_a_package_installed_beside_the_lock_is_caught(tmp_path: Path) -> None:
    # A real distribution on the import path, found the way the check finds the venv's own.
    info = tmp_path / "stray_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stray_pkg\nVersion: 1.0\n")
    present = check_lock.installed([*sys.path, str(tmp_path)])
    assert present["stray-pkg"] == "1.0"
    assert check_lock.differences(check_lock.read_lock(), present) == ["stray-pkg==1.0 is installed but not in the lock"]


def test_missing_and_moved_packages_are_named() -> None:
    locked = {"torch": "2.13.0+cpu", "grpcio": "1.85.4", "pyyaml": "6.0.4"}
    present = {"torch": "2.13.0+cpu", "grpcio": "1.86.0"}
    assert check_lock.differences(locked, present) == [
        "pyyaml==6.0.4 is in the lock but not installed",
        "grpcio is 1.86.0, the lock says 1.85.4",
    ]


def test_the_lock_reads_names_canonically_and_skips_hashes(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("# make lock\nPyYAML==6.0.4 \\\n    --hash=sha256:ab\n    # via x\n"
                    "typing_extensions==4.16.0 ; python_full_version < '3.13' \\\n    --hash=sha256:cd\n")
    assert check_lock.read_lock([lock]) == {"pyyaml": "6.0.4", "typing-extensions": "4.16.0"}


def test_a_lock_that_no_longer_answers_the_pyproject_is_stale() -> None:
    locked = {"grpcio": "1.85.4", "pyyaml": "6.0.4"}
    reqs = [Requirement("grpcio>=1.90"), Requirement("pyyaml>=6"), Requirement("rich>=13"),
            Requirement("syllabus-sdk==0.1.0"), Requirement("vllm; extra == 'gpu'")]
    assert check_lock.stale(locked, reqs) == [
        "grpcio>=1.90 is declared but the lock has grpcio==1.85.4 (run make lock)",
        "rich>=13 is declared but not in the lock (run make lock)",
    ]


def test_the_committed_lock_answers_both_pyproject_files() -> None:
    assert check_lock.stale(check_lock.read_lock(), check_lock.declared()) == []
