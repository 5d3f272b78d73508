"""The whole loop, end to end, on two checkouts interleaved: the demo task on each one's embedded stack.

Run: .venv/bin/python -m bench.loop --baseline DIR [--candidate DIR] [--task FILE] [--repeats 3] [--json]

    git worktree add /tmp/bench-old 2fc6034     # the checkout to compare against
    .venv/bin/python -m bench.loop --baseline /tmp/bench-old --json

Each checkout (`--baseline`, and `--candidate`, default this one) runs a private embedded stack
(Temporal dev server, the three services, worker, gateway) in a temporary home on free ports, in a
child process with that checkout's packages first on the path; both stacks start once (model loading
is timed apart, `startup_seconds`) and each runs one untimed warm-up job (first-call imports and
allocations, caches: `warmup_seconds`), then they take turns (`bench.interleave`): each round submits
the task as a new job to each stack, one after the other, the order reversing. Both run the same task
file: `--task`, default this checkout's examples/banking77/task.yaml (the demo task), so the arms do
the same work; `--own-tasks` gives each checkout its own copy instead (an older checkout whose task
format differs).

The last stdout line is JSON with, per arm (`baseline`, `candidate`): the checkout, `startup_seconds`,
seconds per job (submit -> completed, seen from the client) as median and spread under `arms`, and
the median over its jobs of `total_seconds` (the sum of the workflow's step seconds: the compute the
loop paid for), `overhead_seconds` (wall minus total: scheduling, SQL, artifact moves, polling) and
each step's seconds (name, round); every job's `baseline_accuracy` and `final_accuracy` on the
task's eval set. `speedup` is the median over the rounds of baseline seconds / candidate seconds.
Threads: the services set none, so each uses torch's default (`threads`: this machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASK = Path("examples") / "banking77" / "task.yaml"
#: Lines of the child's stdout that carry a message (anything else is passed on to stderr).
PREFIX = "bench.loop: "

# The child half (`--serve`) runs on another checkout's packages: it imports only the standard
# library at module level and what every checkout has (orchestrator, syllabus, syllabus_sdk).


def _say(msg: dict) -> None:
    print(PREFIX + json.dumps(msg), flush=True)


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


def _run_job(client, task, job_id: str) -> dict:
    from syllabus.tasks import dump_task

    submitted = time.monotonic()
    job = client.submit_job(dump_task(task), job_id=job_id)
    for update in client.watch_job(job.job_id):
        if update.current_step:
            print(f"{job_id} round {update.current_round} {update.current_step} {update.step_detail}", file=sys.stderr)
    wall = time.monotonic() - submitted
    job = client.get_job(job.job_id)
    if job.status != 2:  # COMPLETED
        return {"error": f"job {job_id} ended {job.status}: {job.error}"}
    total = sum(s.seconds for s in job.steps)
    return {
        "steps": [{"name": s.name, "round": s.round, "seconds": round(s.seconds, 2)} for s in job.steps],
        "total_seconds": round(total, 2),
        "wall_seconds": round(wall, 2),
        "baseline_accuracy": job.baseline_accuracy,
        "final_accuracy": job.final_accuracy,
    }


def serve(task_path: Path) -> None:
    """Child: start a stack of this process's checkout, say its start-up time, then run one job per
    job id read from stdin and say its result; stop the stack at end of input."""
    from orchestrator.stack import Stack
    from syllabus.tasks import load_task

    task = load_task(task_path)
    home = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    config = _loopback_config(home, task_queue="bench-loop")
    stack = Stack(config, preload=tuple(dict.fromkeys((task.student.model, task.teacher.model))),
                  log=lambda m: print(m, file=sys.stderr))
    t0 = time.monotonic()
    try:
        asyncio.run(stack.start())
        _say({"task": task.name, "startup_seconds": round(time.monotonic() - t0, 2)})
        with _client(config) as client:
            for line in sys.stdin:
                _say(_run_job(client, task, line.strip()))
    finally:
        stack.stop()
    shutil.rmtree(home, ignore_errors=True)


# The parent half: one child per checkout, interleaved.


class StackProcess:
    """One checkout's stack in a child process (`serve`), driven over its stdin and stdout."""

    def __init__(self, name: str, tree: Path, task: Path) -> None:
        self.name, self.tree = name, tree
        self.startup: dict = {}  # its first message: task name, start-up seconds
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "sdk")])}
        # -P: the script's own directory (bench/) stays off the path; the checkout's packages come first.
        cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--serve", "--task", str(task)]
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def answer(self) -> dict:
        for line in self.proc.stdout:
            if not line.startswith(PREFIX):
                sys.stderr.write(line)
                continue
            msg = json.loads(line[len(PREFIX):])
            if "error" in msg:
                raise RuntimeError(f"{self.name} ({self.tree}): {msg['error']}")
            return msg
        raise RuntimeError(f"the {self.name} stack ({self.tree}) exited with code {self.proc.wait()}; its log is above")

    def job(self, job_id: str) -> dict:
        self.proc.stdin.write(job_id + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_stacks(trees: dict[str, Path], task: Path | None) -> dict[str, StackProcess]:
    """Start every checkout's stack at once; returns when all are up."""
    stacks = {name: StackProcess(name, tree, task or tree / TASK) for name, tree in trees.items()}
    try:
        for s in stacks.values():
            s.startup = s.answer()
    except BaseException:
        for s in stacks.values():
            s.close()
        raise
    return stacks


def warm_up(stack: StackProcess) -> float:
    """One untimed job on `stack` (its first pays one-time costs); returns its wall seconds."""
    t0 = time.monotonic()
    stack.job(f"bench-loop-{stack.name}-warmup")
    return round(time.monotonic() - t0, 2)


def measure(stacks: dict[str, StackProcess], repeats: int, slow: dict[str, float] | None = None) -> dict:
    """Interleave one job per round on each stack; `slow`: arm name -> slowdown factor (tests)."""
    from bench.interleave import Arm, Run, interleave, report, sig, timed
    from bench.record import tree_label

    slow = slow or {}

    def arm(name: str) -> Arm:
        def run(i: int) -> Run:
            res, seconds = timed(lambda: stacks[name].job(f"bench-loop-{name}-{i}"), slow.get(name, 1))
            return Run(1, seconds, res)

        return Arm(name, run)

    runs = interleave([arm(name) for name in stacks], repeats)
    result = report(runs, "jobs", {"speedup": ("candidate", "baseline")})
    for name, rs in runs.items():
        jobs = [r.detail for r in rs]
        steps: dict[tuple[str, int], list[float]] = {}
        for job in jobs:
            for s in job["steps"]:
                steps.setdefault((s["name"], s["round"]), []).append(s["seconds"])
        result[name] = {
            "code": tree_label(stacks[name].tree),
            "task": stacks[name].startup["task"],
            "startup_seconds": stacks[name].startup["startup_seconds"],
            "seconds": result["arms"][name]["seconds"]["median"],
            "total_seconds": sig(statistics.median(j["total_seconds"] for j in jobs)),
            "overhead_seconds": sig(statistics.median(j["wall_seconds"] - j["total_seconds"] for j in jobs)),
            "steps": [{"name": n, "round": r, "seconds": sig(statistics.median(v))} for (n, r), v in steps.items()],
            "baseline_accuracy": [j["baseline_accuracy"] for j in jobs],
            "final_accuracy": [j["final_accuracy"] for j in jobs],
        }
    result["threads"] = os.cpu_count()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="the checkout to compare against (e.g. a git worktree of an older commit)")
    parser.add_argument("--candidate", type=Path, default=ROOT, help="the checkout measured against it (default: this one)")
    parser.add_argument("--task", type=Path, default=ROOT / TASK, help="the task both run (default: the demo task of this checkout)")
    parser.add_argument("--own-tasks", action="store_true", help="each checkout runs its own examples/banking77/task.yaml")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up job on each stack")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (each: one job on each stack)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child half
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    if args.serve:
        serve(args.task)
        return
    if args.baseline is None:
        parser.error("--baseline DIR is required: bench.loop compares two checkouts (git worktree add DIR COMMIT)")
    trees = {"baseline": args.baseline.resolve(), "candidate": args.candidate.resolve()}
    stacks = start_stacks(trees, None if args.own_tasks else args.task.resolve())
    try:
        warmups = {} if args.no_warmup else {name: warm_up(s) for name, s in stacks.items()}
        result = measure(stacks, args.repeats)
        for name, seconds in warmups.items():
            result[name]["warmup_seconds"] = seconds
    finally:
        for s in stacks.values():
            s.close()
    print(json.dumps(result, sort_keys=True) if args.json else json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
