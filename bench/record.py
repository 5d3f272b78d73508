"""Run benchmarks and append their JSON results, with the machine, load and date, to bench/RESULTS.md.

Run: .venv/bin/python -m bench.record generation scoring trainer     (each runs `python -m bench.<name> --json`)
     .venv/bin/python -m bench.record loop --args "--baseline /tmp/bench-old"
     .venv/bin/python -m bench.record scoring --supersede "noisy non-interleaved measurement"

Numbers in RESULTS.md come only from here: each entry is the last stdout line of a real run, with
the machine's load average (1, 5, 15 min) before and after the run and the torch threads it used.
Every benchmark interleaves its arms (`bench.interleave`); a figure is refused (exit code 2, one
line saying why) when its run had fewer than `MIN_REPEATS` rounds, is not interleaved, when a
ratio's spread (max - min over the rounds) is more than `--max-spread` of its median (the machine
was too noisy for the figure to mean anything), when a ratio's arms did unequal work, or when one
of the benchmark's correctness `checks` failed (identical texts, fp32 agreement, equal steps, loss
within 5%): a fast arm that computes something else is no figure. `--record-anyway REASON` records
it regardless, with the reason written next to the figure.

The machine is the CPU model with its matmul flags (`bench.peak.cpu`: "AMD EPYC" names CPUs with
and without AVX-512) and its cores. A figure whose machine differs from the one of the entry it
would follow is refused unless `--cpu-changed REASON` says why it is still worth recording (a ratio
moves with the kernels a CPU has). `--supersede REASON` marks the earlier entries of each recorded
benchmark as superseded by the new one, with the reason and the new entry's machine; they stay in
the file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.interleave import MIN_REPEATS

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: The largest spread (max - min over the rounds) of a ratio, as a share of its median, that is recorded.
MAX_SPREAD = 0.25


def cpu_label() -> str:
    """The CPU model and its matmul flags, e.g. "AMD EPYC (avx2 fma), 2 cores"."""
    from bench.peak import cpu

    found = cpu()
    model = found["model"] if found["model"] != "unknown" else (platform.processor() or platform.machine())
    return f"{model} ({' '.join(found['flags']) or 'no matmul flags'}), {os.cpu_count()} cores"


def machine() -> str:
    try:
        mem_kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f"{mem_kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        mem = "unknown RAM"
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = "no torch"
    return f"{cpu_label()}, {mem}, Python {platform.python_version()}, torch {torch_v}"


def tree_label(tree: Path | None) -> str:
    """The checkout a benchmark ran on: `git describe` of `tree` (default: this one)."""
    where = tree or RESULTS.parent.parent
    proc = subprocess.run(["git", "-C", str(where), "log", "-1", "--format=%h %s"], check=False, capture_output=True, text=True)
    return proc.stdout.strip()[:100] or str(where)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(name: str, extra: list[str], tree: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", f"bench.{name}", "--json", *extra]
    started = time.monotonic()
    load_before = load()
    # progress (stderr) passes through; with `tree`, the benchmark runs that checkout's code
    env = None
    if tree is not None:  # that checkout's packages and generated SDK first, not the installed ones
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "sdk")])}
    proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, cwd=tree, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench.{name} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "cmd": " ".join(["python", "-m", f"bench.{name}", "--json", *extra]),
        "seconds": time.monotonic() - started,
        "load_before": load_before,
        "load_after": load(),
        "result": result,
    }


#: Training seeds per baseline arm below which an outcome figure (bench.outcome) is refused.
OUTCOME_REPEATS = 3


def refusal(result: dict, max_spread: float) -> str | None:
    """Why `result` is not fit to record, or None. An outcome result (bench.outcome: accuracies over
    training seeds, no timing) needs OUTCOME_REPEATS repeats per arm instead of interleaved ratios.
    A timed result needs its correctness `checks` to hold and every ratio's arms to do equal work."""
    if "tasks" in result:
        short = [f"{t['task']} ({t.get('repeats', 0)})" for t in result["tasks"] if t.get("repeats", 0) < OUTCOME_REPEATS]
        return f"repeats per arm fewer than {OUTCOME_REPEATS}: {', '.join(short)}" if short else None
    ratios = result.get("ratios")
    if not isinstance(ratios, dict) or not ratios:
        return "no interleaved ratios in its result (a benchmark from before bench.interleave)"
    if result.get("repeats", 0) < MIN_REPEATS:
        return f"{result.get('repeats', 0)} rounds, fewer than {MIN_REPEATS}"
    if failed := [name for name, ok in result.get("checks", {}).items() if not ok]:
        return f"correctness checks failed: {', '.join(failed)}"
    if unequal := [key for key, r in ratios.items() if r.get("equal_work") is False]:
        return f"the arms of {', '.join(unequal)} did unequal work: not like for like"
    for key, r in ratios.items():
        if r["rel_spread"] > max_spread:
            return (f"{key} spread {r['min']}-{r['max']} is {r['rel_spread']:.0%} of its median {r['median']} "
                    f"(limit {max_spread:.0%}): the machine was too noisy")
    return None


def figures(result: dict) -> list[str]:
    """One line per ratio: median, the rounds' range, and the range as a share of the median; for an
    outcome result, one line per task: the loop's final accuracy and its lift over each arm."""
    if "tasks" in result:
        return [
            f"- {t['task']} ({t['split']}, {t['repeats']} repeats, round {t['rounds'][-1]['round']}): loop {t['final']:.1%}; "
            + "; ".join(f"vs {arm} {a['accuracy']:.1%}: {a['lift']:+.1%} [{a['ci_low']:+.1%}, {a['ci_high']:+.1%}]"
                        for arm, a in t["rounds"][-1]["arms"].items())
            for t in result["tasks"]
        ]  # fmt: skip
    return [
        f"- {key}: {r['median']} ({r['of']}, median of {result['repeats']} interleaved rounds; "
        f"range {r['min']}-{r['max']}, {r['rel_spread']:.0%} of the median)"
        for key, r in result.get("ratios", {}).items()
    ]


def latest_cpu(text: str, name: str) -> str | None:
    """The CPU (`cpu_label` form, up to the cores) of the last entry of bench.`name` in `text` that is
    not superseded, or None when there is none. Entries from before the flags were recorded give
    their model alone, which no `cpu_label` equals: their kernels are unknown."""
    heading = re.compile(rf"^## bench\.{re.escape(name)} — .+ UTC$")
    found, current = None, False
    for line in text.split("\n"):
        if line.startswith("## "):
            current = bool(heading.match(line))
        elif current and line.startswith("- machine: "):
            found = re.sub(r"(, \d+ cores).*$", r"\1", line.removeprefix("- machine: "))
    return found


def cpu_refusal(text: str, name: str, cpu: str) -> str | None:
    """Why a figure on `cpu` may not follow the entries of bench.`name` in `text` unexplained, or None."""
    before = latest_cpu(text, name)
    if before is None or before == cpu:
        return None
    return f"the machine changed ({before} -> {cpu}): a ratio moves with the CPU's kernels"


def supersede(text: str, name: str, when: str, reason: str, machine_line: str = "") -> str:
    """`text` with every entry of bench.`name` not yet superseded marked superseded by the entry of
    `when`: " (superseded)" after its heading, the reason (and the new entry's machine) as its first line."""
    on = f" (on {machine_line})" if machine_line else ""
    heading = re.compile(rf"^## bench\.{re.escape(name)} — .+ UTC$")
    out: list[str] = []
    pending = False
    for line in text.split("\n"):
        if heading.match(line):
            out.append(f"{line} (superseded)")
            pending = True
            continue
        out.append(line)
        if pending and line == "":
            out.append(f"- superseded by the entry of {when}{on}: {reason}")
            pending = False
    return "\n".join(out)


def entry(name: str, e: dict, when: str, tree: Path | None, anyway: str | None, cpu_changed: str | None = None) -> str:
    result = e["result"]
    threads = result.get("threads", "not reported")
    lines = [
        f"## bench.{name} — {when}",
        "",
        f"- machine: {machine()}",
        f"- command: `{e['cmd']}` ({e['seconds']:.0f} s)",
        f"- code: {tree_label(tree)}",
        f"- torch threads: {threads}",
        f"- load average (1, 5, 15 min): before {e['load_before']}, after {e['load_after']}",
        *figures(result),
    ]
    if peak := result.get("peak"):
        lines.append(f"- machine peak (this run, {peak['threads']} threads): fp32 {peak['fp32_gflops']} GFLOP/s, "
                     f"bf16 {peak['bf16_gflops']} GFLOP/s")
        lines += [f"- {arm}: {a['gflops']} GFLOP/s {a['dtype']}, {a['peak_fraction']:.0%} of peak"
                  for arm, a in result.get("achieved", {}).items()]  # fmt: skip
    if cpu_changed:
        lines.append(f"- machine changed from the entry before: {cpu_changed}")
    if anyway:
        lines.append(f"- recorded anyway ({e['refused']}): {anyway}")
    return "\n" + "\n".join(lines) + "\n\n```json\n" + json.dumps(result, indent=2, sort_keys=True) + "\n```\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="benchmark modules under bench/ (generation, scoring, trainer, loop)")
    parser.add_argument("--args", default="", help="extra arguments passed to every benchmark")
    parser.add_argument("--tree", type=Path, help="run the benchmarks on another checkout (e.g. an older commit, "
                        "as a git worktree with bench/ copied in); recorded in the entry")
    parser.add_argument("--max-spread", type=float, default=MAX_SPREAD,
                        help=f"refuse a ratio whose range over the rounds exceeds this share of its median (default {MAX_SPREAD})")
    parser.add_argument("--record-anyway", metavar="REASON", help="record a refused figure, with this reason next to it")
    parser.add_argument("--supersede", metavar="REASON", help="mark the earlier entries of each recorded benchmark superseded")
    parser.add_argument("--cpu-changed", metavar="REASON",
                        help="record a figure whose machine differs from the one of the entry it follows, saying why")
    args = parser.parse_args()
    refused = 0
    for name in args.names:
        print(f"running bench.{name} ...", file=sys.stderr, flush=True)
        e = run(name, args.args.split(), args.tree)
        print(json.dumps({"bench": name, **e["result"]}))
        why = refusal(e["result"], args.max_spread)
        if why and not args.record_anyway:
            print(f"bench.{name} not recorded: {why}; rerun it, or pass --record-anyway REASON", file=sys.stderr)
            refused += 1
            continue
        e["refused"] = why
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n\nAppended by `python -m bench.record NAME...`; never edited by hand.\n")
        text = RESULTS.read_text()
        if (moved := cpu_refusal(text, name, cpu_label())) and not args.cpu_changed:
            print(f"bench.{name} not recorded: {moved}; pass --cpu-changed REASON to record it anyway", file=sys.stderr)
            refused += 1
            continue
        if args.supersede:
            text = supersede(text, name, when, args.supersede, machine())
        RESULTS.write_text(text + entry(name, e, when, args.tree, args.record_anyway if why else None,
                                        args.cpu_changed if moved else None))  # fmt: skip
    if refused:
        raise SystemExit(2)


if __name__ == "__main__":
    main()
