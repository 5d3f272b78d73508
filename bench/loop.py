"""The whole loop, end to end: the demo task on the embedded stack, timed step by step.

Run: .venv/bin/python -m bench.loop [--task examples/banking77/task.yaml] [--json]

Starts a private embedded stack (Temporal dev server, the three services, worker, gateway) in a
temporary home on free ports, submits the task through the gateway, waits for the job and prints:
- `steps`: seconds of each workflow step (name, round), as the workflow recorded them;
- `total_seconds`: the sum of the step seconds (the compute the loop paid for);
- `wall_seconds`: submit -> completed, seen from the client;
- `overhead_seconds`: wall minus total (scheduling, SQL, artifact moves, polling);
- `baseline_accuracy`, `final_accuracy` on the task's eval set.
Stack start-up (model loading) is timed apart (`startup_seconds`) and is in none of the above.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TASK = ROOT / "examples" / "banking77" / "task.yaml"


def _client(config):
    import inspect

    from syllabus_sdk import SyllabusClient

    if "token" not in inspect.signature(SyllabusClient).parameters:  # a tree from before authentication
        return SyllabusClient(config.gateway_address, timeout=30)
    from syllabus.auth import client_token

    return SyllabusClient(config.gateway_address, token=client_token(config), timeout=30)


def _loopback_config(home: Path, **overrides):
    try:
        from orchestrator.stack import loopback_config
    except ImportError:  # a tree from before loopback_config: the same free loopback ports, spelled out here
        from orchestrator.stack import free_port
        from syllabus.config import Config

        names = ("temporal_address", "gateway_address", "teacher_address", "student_address", "trainer_address")
        ports = {name: f"127.0.0.1:{free_port()}" for name in names}
        return Config(home=home, temporal_ui_url=f"http://127.0.0.1:{free_port()}", **ports, **overrides)
    return loopback_config(home, **overrides)


def run(task_path: Path) -> dict:
    from orchestrator.stack import Stack
    from syllabus.tasks import dump_task, load_task

    task = load_task(task_path)
    home = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    config = _loopback_config(home, task_queue="bench-loop")
    stack = Stack(config, preload=tuple(dict.fromkeys((task.student.model, task.teacher.model))),
                  log=lambda m: print(m, file=sys.stderr))
    t0 = time.monotonic()
    try:
        asyncio.run(stack.start())
        startup = time.monotonic() - t0
        with _client(config) as client:
            submitted = time.monotonic()
            job = client.submit_job(dump_task(task), job_id="bench-loop")
            for update in client.watch_job(job.job_id):
                if update.current_step:
                    print(f"round {update.current_round} {update.current_step} {update.step_detail}", file=sys.stderr)
            wall = time.monotonic() - submitted
            job = client.get_job(job.job_id)
    finally:
        stack.stop()
    if job.status != 2:  # COMPLETED
        raise SystemExit(f"the job ended {job.status}: {job.error}")
    steps = [{"name": s.name, "round": s.round, "seconds": round(s.seconds, 2)} for s in job.steps]
    total = sum(s.seconds for s in job.steps)
    return {
        "task": task.name,
        "steps": steps,
        "total_seconds": round(total, 2),
        "wall_seconds": round(wall, 2),
        "overhead_seconds": round(wall - total, 2),
        "startup_seconds": round(startup, 2),
        "baseline_accuracy": job.baseline_accuracy,
        "final_accuracy": job.final_accuracy,
        "threads": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, default=DEFAULT_TASK)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    result = run(args.task)
    print(json.dumps(result, sort_keys=True) if args.json else json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
