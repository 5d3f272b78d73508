"""Jobs per hour with 2 replicas of each service against 1, every process pinned to one thread.

Run: .venv/bin/python -m bench.scale [--jobs 3] [--repeats 3] [--task FILE] [--json]

Two embedded stacks start once (`orchestrator.stack.Stack`, the layout `syllabus up --replicas N` runs):
`replicas-2` (two teacher, student and trainer processes, each with its worker on its service's task
queue, `orchestrator.routing`) and `replicas-1` (one of each, the same queues). Every process runs
one torch thread (OMP_NUM_THREADS=1), so on a 2-core machine the comparison is replicas, not
threads. Each stack first runs one job untimed (model and adapter caches warm). Then the arms take
turns (`bench.interleave`): a round submits `--jobs` jobs of the task at once to one stack and times
from the first submission to the last completion; work is jobs, the rate jobs per second
(`jobs_per_hour` is it x 3600).

The task (default: the demo task, 1 round, with a random-subset baseline arm) is the same file for
both arms; correctness fields: every job completed, `same_accuracies` (each job's final and
baseline accuracies, which do not depend on the replica that computed them, equal across arms) and
`every_replica_worked` (each replica of the 2-replica stack took calls, its ProgressService counter).

What bounds the ratio: `cpu_busy_share` is the share of the machine's CPU time (all cores, /proc/stat)
that was busy during an arm's rounds. More replicas can only fill the idle rest, so
`speedup_bound` = 1 / replicas-1's busy share is the most any replica count can gain on these cores:
where it is below a target, the machine (not the routing) is what stops the target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from bench.interleave import Arm, Run, interleave, report, sig
from bench.trainer import emit

ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "examples" / "banking77" / "task.yaml"


def scale_task(path: Path) -> str:
    """The task as submitted: `path`, 1 round, with a random-subset baseline arm (a task with
    baseline arms, whose arms train in parallel when several trainers exist)."""
    from syllabus.tasks import dump_task, load_task

    task = load_task(path)
    raw = yaml.safe_load(dump_task(task))
    raw["rounds"] = 1
    if not raw.get("baselines"):
        raw["baselines"] = {"arms": ["random"], "repeats": 1}
    return yaml.safe_dump(raw)


def cpu_times(stat: str | None = None) -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat's `cpu` line:
    busy is everything but idle and iowait."""
    text = stat if stat is not None else Path("/proc/stat").read_text()
    fields = [int(x) for x in text.splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])  # guest time is already inside user; counting it twice would dilute the share
    return total - idle, total


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of CPU time that was busy between two `cpu_times` snapshots."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


class ScaleStack:
    """One embedded stack with `replicas` of each service, on free loopback ports."""

    def __init__(self, home: Path, replicas: int, model: str) -> None:
        from orchestrator.stack import Stack, loopback_config

        config = loopback_config(home, task_queue=f"scale-{replicas}", service_queues=True)
        self.stack = Stack(config, preload=(model,), log=lambda _m: None, replicas=replicas)
        self.replicas = replicas

    def start(self) -> None:
        asyncio.run(self.stack.start())
        self.stack.supervise()

    def run_jobs(self, task_yaml: str, ids: list[str], timeout: float = 3600) -> tuple[float, list[tuple]]:
        """Submit `ids` at once: (seconds from the first submission to the last completion, each
        job's (baseline, final) accuracy)."""
        from syllabus.auth import client_token
        from syllabus_sdk import SyllabusClient

        with SyllabusClient(self.stack.config.gateway_address, token=client_token(self.stack.config), timeout=30) as c:
            c.wait_ready()
            t0 = time.perf_counter()
            for job_id in ids:
                c.submit_job(task_yaml, job_id=job_id)
            pending, jobs = set(ids), {}
            while pending:
                for job_id in sorted(pending):
                    job = c.get_job(job_id)
                    if job.status != 1:
                        if job.status != 2:
                            raise SystemExit(f"bench.scale: job {job_id} ended with status {job.status}: {job.error}")
                        jobs[job_id] = job
                        pending.discard(job_id)
                if time.perf_counter() - t0 > timeout:
                    raise SystemExit(f"bench.scale: jobs {sorted(pending)} did not finish in {timeout:.0f} s")
                time.sleep(0.5)
            seconds = time.perf_counter() - t0
        return seconds, [(jobs[i].baseline_accuracy, jobs[i].final_accuracy) for i in ids]

    def calls(self) -> dict[str, int]:
        """Calls each replica took (its ProgressService counter)."""
        from syllabus.auth import channel, service_token
        from syllabus_sdk.common.v1 import progress_pb2, progress_pb2_grpc

        async def ask(address: str) -> int:
            async with channel(address, service_token(self.stack.config)) as ch:
                stub = progress_pb2_grpc.ProgressServiceStub(ch)
                return int((await stub.GetProgress(progress_pb2.GetProgressRequest(), timeout=10)).calls)

        return {f"{name}@{a}": asyncio.run(ask(a)) for name, addrs in self.stack.addresses.items() for a in addrs}

    def stop(self) -> None:
        self.stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--task", type=Path, default=TASK, help="task file (default: the demo task)")
    ap.add_argument("--jobs", type=int, default=3, help="concurrent jobs per round")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--json", action="store_true", help="print the JSON summary as the last line")
    args = ap.parse_args()
    # one thread per process, set before any service starts (they inherit it): replicas, not threads
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    from syllabus.tasks import load_task

    task_yaml = scale_task(args.task)
    model = load_task(args.task).student.model
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        stacks = {n: ScaleStack(Path(tmp) / f"r{n}", n, model) for n in (2, 1)}
        try:
            for s in stacks.values():
                s.start()
                s.run_jobs(task_yaml, [f"warmup-{s.replicas}"])  # caches warm; not timed
            before = stacks[2].calls()
            accuracies: dict[str, list] = {}
            busy: dict[str, list[float]] = {}

            def arm(n: int) -> Arm:
                def run(chunk: int) -> Run:
                    ids = [f"r{n}-{chunk}-{k}" for k in range(args.jobs)]
                    cpu0 = cpu_times()
                    seconds, acc = stacks[n].run_jobs(task_yaml, ids)
                    busy.setdefault(f"replicas-{n}", []).append(busy_share(cpu0, cpu_times()))
                    accuracies.setdefault(f"replicas-{n}", []).extend(acc)
                    return Run(work=len(ids), seconds=seconds)

                return Arm(f"replicas-{n}", run)

            runs = interleave([arm(2), arm(1)], args.repeats)
            after = stacks[2].calls()
        finally:
            for s in stacks.values():
                s.stop()
    result = report(runs, "jobs", {"speedup": ("replicas-2", "replicas-1")})
    for name, a in result["arms"].items():
        a["jobs_per_hour"] = sig(a["jobs_per_s"]["median"] * 3600)
        a["cpu_busy_share"] = sig(statistics.median(busy[name]))
    took = {k: after[k] - before[k] for k in after}
    checks = {
        # every job of the task computes the same accuracies, whichever replica served which step
        "same_accuracies": len({acc for v in accuracies.values() for acc in v}) == 1,
        "every_replica_worked": all(v > 0 for v in took.values()),
    }
    summary = {
        "bench": "scale",
        "task": str(args.task.relative_to(ROOT) if args.task.is_relative_to(ROOT) else args.task),
        "jobs_per_round": args.jobs,
        "threads_per_process": 1,
        "cpu_count": os.cpu_count(),
        **result,
        **checks,
        "accuracies": {k: sorted(set(v)) for k, v in accuracies.items()},
        "replica_calls": took,
        "checks": checks,
        # the most more replicas could gain here: they can only fill the CPU time one replica left idle
        "speedup_bound": sig(1 / max(result["arms"]["replicas-1"]["cpu_busy_share"], 1e-9)),
    }
    emit(summary, args.json)


if __name__ == "__main__":
    main()
