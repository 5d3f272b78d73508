"""Does the loop teach better than plain SFT on the teacher's data? Each task through `syllabus run`,
with its counterfactual baseline arms, repeated over training seeds, on one embedded stack.

Run: .venv/bin/python -m bench.outcome [--task banking77 svamp | PATH ...] [--repeats 3]
         [--split eval|validation] [--set KEY=VALUE ...] [--json]

    .venv/bin/python -m bench.outcome --json                          # both tasks, as recorded
    .venv/bin/python -m bench.outcome --task banking77 --split validation --set select.metric=ifd

Each task (`banking77`: examples/banking77/outcome.yaml, 10 intents the demo does not use; `svamp`:
examples/svamp/task.yaml; or a task file) is submitted with `syllabus run TASK --json` to one private
stack (Temporal dev server, the three services, worker, gateway in a temporary home on free ports),
with `baselines: {arms: [seeds_only, all_kept, random], repeats: N}` put in: each arm trains N times
(seeds seed, seed+1, ...) on its own data with the loop's recipe, and the job's report gives the loop's
lift over each arm with a paired-bootstrap 95% CI pooled over the repeats and the eval items
(`syllabus.stats.compare`; docs/task-format.md, "Baselines").

`--split validation` evaluates on the task's validation split instead of `eval`: tune levers there,
report on `eval` (docs/outcome.md). `--set select.metric=ifd` overrides one task field (the value is
YAML) for every task: how a lever is tried without a new task file.

Progress (each step, and the bench's ETA from the tasks done so far and the job's own ETA) goes to
stderr. The last stdout line is JSON: per task its name, file, split, overrides, wall seconds, the
base student's accuracy and per round the loop's accuracy and, per arm, its mean, its per-repeat
accuracies and the loop's lift with its CI (fractions), and the final round's verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TASKS = {
    "banking77": ROOT / "examples" / "banking77" / "outcome.yaml",
    "svamp": ROOT / "examples" / "svamp" / "task.yaml",
}
ARMS = ["seeds_only", "all_kept", "random"]
SPLITS = ("eval", "validation")


def _log(msg: str) -> None:
    print(f"bench.outcome: {msg}", file=sys.stderr, flush=True)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def parse_set(items: list[str]) -> dict[str, object]:
    """`KEY=VALUE` pairs (KEY dotted, VALUE YAML) as {key: value}; a malformed one is a usage error."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. select.metric=ifd")
        out[key.strip()] = yaml.safe_load(value)
    return out


def prepare(path: Path, split: str, repeats: int, overrides: dict[str, object]):
    """The task at `path` as it is measured: the baseline arms and repeats put in, evaluated on
    `split`, with `overrides` applied (and checked) like any task file's fields."""
    from syllabus.tasks import load_task, parse_task

    task = load_task(path)
    data = task.model_dump(mode="json")
    if split == "validation":
        if not data["validation"]:
            raise ValueError(f"{path}: --split validation, but the task has no validation split")
        data["eval"] = data["validation"]
    data["baselines"] = {"arms": ARMS, "repeats": repeats}
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ValueError(f"--set {key}: {p!r} is not a section of the task")  # noqa: TRY004 (a user mistake)
            node = node[p]
        node[leaf] = value
    # Checked as any task file is (one line naming the field), not as a raw validation error.
    return parse_task(yaml.safe_dump(data, sort_keys=False), f"{path} with --set", inline_only=True)


def summarize(report: dict) -> dict:
    """The bench's view of one job's `syllabus run --json` report."""
    rounds = []
    for r in report["rounds"]:
        arms = {}
        for b in report["baselines"]:
            row = next((x for x in b["rounds"] if x["round"] == r["round"]), None)
            if row is not None:
                arms[b["arm"]] = {k: row[k] for k in ("accuracy", "accuracies", "trained", "lift", "ci_low", "ci_high")}
        rounds.append({"round": r["round"], "loop": r["accuracy"], "trained": r["trained"], "selected": r["selected"],
                       "kept": r["kept"], "selection_dropped": r["selection_dropped"], "arms": arms})  # fmt: skip
    final = rounds[-1] if rounds else {"arms": {}}
    wins = {arm: a["ci_low"] is not None and a["ci_low"] > 0 for arm, a in final["arms"].items()}
    return {"base": report["baseline_accuracy"], "final": report["final_accuracy"], "rounds": rounds,
            "verdicts": {b["arm"]: b["verdict"] for b in report["baselines"]}, "wins": wins,
            "never_below_seeds_only": all(r["loop"] >= r["arms"]["seeds_only"]["accuracy"] for r in rounds
                                          if "seeds_only" in r["arms"])}  # fmt: skip


def _progress(config, proc: subprocess.Popen, name: str, t0: float, eta: float | None, every: float = 60.0) -> str:
    """Say the job's round, step and ETA every `every` seconds while `syllabus run` follows it; returns
    its stderr (the human report)."""
    from syllabus.auth import client_token
    from syllabus_sdk import SyllabusClient, SyllabusError

    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    job_id = None
    with SyllabusClient(config.gateway_address, token=client_token(config), timeout=30) as client:
        while proc.poll() is None:
            reader.join(timeout=every)
            job_id = job_id or next((m.group(1) for line in err if (m := _SUBMITTED.search(line))), None)
            if job_id is None or proc.poll() is not None:
                continue
            try:
                job = client.get_job(job_id)
            except SyllabusError:
                continue
            job_eta = f", job ETA {_minutes(job.job_eta_s)}" if job.HasField("job_eta_s") else ""
            left = f", bench ETA {_minutes(max(0.0, eta - (time.monotonic() - t0)))}" if eta is not None else ""
            _log(f"{name}: {_minutes(time.monotonic() - t0)} in, round {job.current_round}/{job.rounds_total} "
                 f"{job.current_step} {job.step_detail}{job_eta}{left}".rstrip())  # fmt: skip
    reader.join()
    return "".join(err)


_SUBMITTED = re.compile(r"submitted job (\S+)")


def run_task(config, task, workdir: Path, eta: float | None) -> dict:
    """`syllabus run TASK --json` on one prepared task, against the bench's stack."""
    from orchestrator.stack import config_env
    from syllabus.tasks import dump_task

    path = workdir / f"{task.name}.yaml"
    path.write_text(dump_task(task))
    cmd = [str(Path(sys.executable).with_name("syllabus")), "run", str(path), "--json"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=config_env(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_lines: list[str] = []
    stdout = threading.Thread(target=lambda: out_lines.extend(proc.stdout), daemon=True)
    stdout.start()
    err = _progress(config, proc, task.name, t0, eta)
    stdout.join()
    reports = [x for x in out_lines if x.startswith("{")]
    if not reports:
        raise RuntimeError(f"syllabus run {task.name} exited {proc.returncode} without a report:\n{err[-2000:]}")
    report = json.loads(reports[-1])
    if report["status"] != "completed":
        raise RuntimeError(f"{task.name}: the job ended {report['status']}: {report['error']}")
    steps = [{"name": s["name"], "round": s["round"], "seconds": s["seconds"]} for s in report["steps"]]
    return {"job_id": report["job_id"], "wall_seconds": round(time.monotonic() - t0, 1), "steps": steps, **summarize(report)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", default=list(TASKS), help=f"task names ({', '.join(TASKS)}) or task files")
    parser.add_argument("--repeats", type=int, default=3, help="training seeds per baseline arm")
    parser.add_argument("--split", choices=SPLITS, default="eval", help="evaluate on eval (report) or validation (tune)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a task field")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()

    from orchestrator.stack import Stack, loopback_config
    from syllabus.tasks import TaskSpecError

    try:
        overrides = parse_set(args.set)
        paths = [TASKS.get(t, Path(t)) for t in args.task]
        tasks = [prepare(p, args.split, args.repeats, overrides) for p in paths]
    except (ValueError, TaskSpecError, OSError) as e:
        print(f"bench.outcome: {e}", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="bench-outcome-"))
    config = loopback_config(home, task_queue="bench-outcome")
    models = tuple(dict.fromkeys(m for t in tasks for m in (t.student.model, t.teacher.model)))
    stack = Stack(config, preload=models, log=lambda m: print(m, file=sys.stderr))
    results, t_start = [], time.monotonic()
    try:
        asyncio.run(stack.start())
        for i, (path, task) in enumerate(zip(paths, tasks, strict=True)):
            done = time.monotonic() - t_start
            eta = done / i * (len(tasks) - i) if i else None
            _log(f"task {i + 1}/{len(tasks)}: {task.name} ({args.split}, {args.repeats} repeats)"
                 + (f", ETA {_minutes(eta)}" if eta else ""))  # fmt: skip
            res = run_task(config, task, home, eta)
            results.append({"task": task.name, "file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                            "split": args.split, "overrides": overrides, "repeats": args.repeats, **res})  # fmt: skip
            _log(f"{task.name}: done in {_minutes(res['wall_seconds'])}: loop {res['final']:.1%}, "
                 + ", ".join(f"{a} {x['accuracy']:.1%} (lift {x['lift']:+.1%} [{x['ci_low']:+.1%}, {x['ci_high']:+.1%}])"
                             for a, x in res["rounds"][-1]["arms"].items()))  # fmt: skip
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    out = {"tasks": results, "wall_seconds": round(time.monotonic() - t_start, 1)}
    print(json.dumps(out, sort_keys=True) if args.json else json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
