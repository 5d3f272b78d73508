"""Check that the venv holds exactly the lock, and that the lock still answers the pyproject files.

Run: python scripts/check_lock.py      (`make install` and `make check-lock` do; exit 1 on any difference)

Two checks, each a list of one-line problems:
- the installed distributions equal requirements/lock.txt + model.txt, name for name and version for
  version (pip, setuptools included; the checkout's own two packages, installed editable, excepted):
  a package pip-installed beside the lock, a missing one or another version is named;
- every dependency the pyproject files declare (the main package with its dev extra, and the SDK) is in
  the lock at a version its range admits; otherwise the lock is stale and `make lock` refreshes it.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCKS = (ROOT / "requirements" / "lock.txt", ROOT / "requirements" / "model.txt")
PROJECTS = {ROOT / "pyproject.toml": ("dev",), ROOT / "sdk" / "pyproject.toml": ()}
# Installed editable from the checkout by `make install`, so never in the lock.
OWN = {"syllabus", "syllabus-sdk"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(paths: Iterable[Path] = LOCKS) -> dict[str, str]:
    """name -> version of every `name==version` line of the lock files."""
    pins: dict[str, str] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if m := PIN.match(line):
                pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed(path: list[str] | None = None) -> dict[str, str]:
    """name -> version of every distribution importable from `path` (default sys.path), ours excepted."""
    found = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=path or sys.path)}
    return {name: version for name, version in found.items() if name not in OWN}


def differences(locked: Mapping[str, str], present: Mapping[str, str]) -> list[str]:
    problems = [f"{n}=={v} is installed but not in the lock" for n, v in sorted(present.items()) if n not in locked]
    problems += [f"{n}=={v} is in the lock but not installed" for n, v in sorted(locked.items()) if n not in present]
    problems += [f"{n} is {present[n]}, the lock says {v}" for n, v in sorted(locked.items())
                 if n in present and present[n] != v]
    return problems


def declared(projects: Mapping[Path, tuple[str, ...]] = PROJECTS) -> list[Requirement]:
    """The requirements the pyproject files declare for this environment (with the given extras)."""
    reqs = []
    for path, extras in projects.items():
        project = tomllib.loads(path.read_text())["project"]
        lines = list(project.get("dependencies", []))
        for extra in extras:
            lines += project.get("optional-dependencies", {}).get(extra, [])
        reqs += [Requirement(line) for line in lines]
    return reqs


def stale(locked: Mapping[str, str], requirements: Iterable[Requirement]) -> list[str]:
    problems = []
    for req in requirements:
        name = canonical(req.name)
        if name in OWN or (req.marker is not None and not req.marker.evaluate({"extra": "dev"})):
            continue
        if name not in locked:
            problems.append(f"{req} is declared but not in the lock (run make lock)")
        elif not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{req} is declared but the lock has {name}=={locked[name]} (run make lock)")
    return problems


def main() -> int:
    locked = read_lock()
    problems = stale(locked, declared()) + differences(locked, installed())
    for problem in problems:
        print(f"check_lock: {problem}", file=sys.stderr)
    if problems:
        print("check_lock: the venv is not the lock; rebuild it with `rm -rf .venv && make install`", file=sys.stderr)
        return 1
    print(f"check_lock: the venv holds exactly the lock's {len(locked)} packages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
