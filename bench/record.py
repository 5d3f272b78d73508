"""Run benchmarks and append their JSON results, with the machine and date, to bench/RESULTS.md.

Run: .venv/bin/python -m bench.record generation scoring trainer     (each runs `python -m bench.<name> --json`)

Numbers in RESULTS.md come only from here: each entry is the last stdout line of a real run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f"{mem_kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        mem = "unknown RAM"
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = "no torch"
    return f"{cpu}, {os.cpu_count()} cores, {mem}, Python {platform.python_version()}, torch {torch_v}"


def tree_label(tree: Path | None) -> str:
    """The checkout a benchmark ran on: `git describe` of `tree` (default: this one)."""
    where = tree or RESULTS.parent.parent
    proc = subprocess.run(["git", "-C", str(where), "log", "-1", "--format=%h %s"], check=False, capture_output=True, text=True)
    return proc.stdout.strip()[:100] or str(where)


def run(name: str, extra: list[str], tree: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", f"bench.{name}", "--json", *extra]
    started = time.monotonic()
    # progress (stderr) passes through; with `tree`, the benchmark runs that checkout's code
    env = None
    if tree is not None:  # that checkout's packages and generated SDK first, not the installed ones
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "sdk")])}
    proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, cwd=tree, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench.{name} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"cmd": " ".join(["python", "-m", f"bench.{name}", "--json", *extra]), "seconds": time.monotonic() - started, "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="benchmark modules under bench/ (generation, scoring, trainer)")
    parser.add_argument("--args", default="", help="extra arguments passed to every benchmark")
    parser.add_argument("--tree", type=Path, help="run the benchmarks on another checkout (e.g. an older commit, "
                        "as a git worktree with bench/<name>.py copied in); recorded in the entry")
    args = parser.parse_args()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    entries = []
    for name in args.names:
        print(f"running bench.{name} ...", file=sys.stderr, flush=True)
        entries.append((name, run(name, args.args.split(), args.tree)))
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by `python -m bench.record NAME...`; never edited by hand.\n")
    with open(RESULTS, "a") as f:
        for name, e in entries:
            f.write(f"\n## bench.{name} — {when}\n\n- machine: {machine()}\n- command: `{e['cmd']}` ({e['seconds']:.0f} s)\n- code: {tree_label(args.tree)}\n\n")
            f.write("```json\n" + json.dumps(e["result"], indent=2, sort_keys=True) + "\n```\n")
            print(json.dumps({"bench": name, **e["result"]}))


if __name__ == "__main__":
    main()
