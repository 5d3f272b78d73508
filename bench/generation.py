"""Batched vs one-prompt-at-a-time greedy generation with the bundled teacher, interleaved.

    .venv/bin/python -m bench.generation --json            # 64 prompts x 48 new tokens, 3 rounds
    .venv/bin/python -m bench.generation --prompts 16 --max-new-tokens 16 --threads 1

Both arms use `teacher_svc.backend.TransformersBackend` with greedy decoding (temperature 0) on the
same prompts: the batched arm sends all of them in batches of `--batch-size` (left padding, position
ids from the attention mask), the sequential arm one prompt per call. The arms take turns
(`bench.interleave`): `--repeats` rounds, each round both arms over the whole prompt set, the order
reversing. Progress goes to stderr; the last line of stdout is JSON with `speedup` (median over the
rounds of batched tokens/s over sequential tokens/s), per-arm medians and spreads under `arms`, the
per-round ratios under `ratios`, `identical_share` (share of prompts whose greedy text is identical in
both arms, first round) and the prompts that differ, and `deterministic` (every round of an arm gave
the same texts).

Efficiency of the batched arm: KV cache (transformers' default dynamic cache), static left padding with
position ids from the attention mask, greedy batches sorted by prompt length (less padding in the
prefill), fp32 in both arms. Threads: torch's default, as the teacher service runs (`--threads N` sets
N). bf16 autocast is not used: on a CPU with native bf16 (AMX, or AVX512-BF16) it makes the batched arm
faster, but batched and one-at-a-time bf16 greedy texts then diverge on about half the prompts, so the
comparison would no longer be like for like.

`peak` is the machine's matmul peak measured in the same run (`bench.peak`) and `achieved` each arm's
GFLOP/s over its decode steps (generated tokens x one forward's matmul FLOPs) and its fraction of the
fp32 peak.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.interleave import Arm, Run, interleave, log, median_of, report, timed
from bench.peak import achieved, forward_flops_per_token, measure_peak
from syllabus.models import DEFAULT_MODEL
from syllabus.records import loads_jsonl

DATA = Path(__file__).resolve().parents[1] / "examples" / "banking77" / "data"
TEMPLATES = (
    "A bank customer wrote: \"{m}\". Write a short, polite reply from the bank.",
    "Rewrite this customer message more formally: {m}",
    "What is the customer asking for in this message? {m}",
    "Summarise in one sentence: {m}",
)


def build_prompts(count: int) -> list[str]:
    """`count` distinct prompts of varied length from the Banking77 example messages."""
    messages = [r["input"] for r in loads_jsonl((DATA / "seeds.jsonl").read_bytes())]
    messages += [r["input"] for r in loads_jsonl((DATA / "eval.jsonl").read_bytes())]
    # Message i with template i (mod 4); after a pass over the messages the template shifts by one.
    n = len(messages)
    return [TEMPLATES[(i + i // n) % len(TEMPLATES)].format(m=messages[i % n]) for i in range(count)]


def measure(
    backend, prompts: Sequence, max_new_tokens: int, batch_size: int, repeats: int, slow: Mapping[str, float] | None = None
) -> dict:
    """Interleave the batched and sequential arms over `prompts` (`ChatPrompt`s) for `repeats` rounds.
    `slow`: arm name -> slowdown factor (tests)."""
    from teacher_svc.backend import Sampling

    slow = slow or {}
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens, n=1)
    backend.generate(prompts[:2], greedy, batch_size=2)  # warm-up: first-call allocations, both code paths
    backend.generate(prompts[:1], greedy, batch_size=1)

    def batched(_: int) -> Run:
        out, seconds = timed(lambda: [c[0] for c in backend.generate(prompts, greedy, batch_size=batch_size)], slow.get("batched", 1))
        return Run(sum(c.tokens for c in out), seconds, out)

    def sequential(_: int) -> Run:
        out, seconds = timed(lambda: [backend.generate([p], greedy, batch_size=1)[0][0] for p in prompts], slow.get("sequential", 1))
        return Run(sum(c.tokens for c in out), seconds, out)

    runs = interleave([Arm("batched", batched), Arm("sequential", sequential)], repeats)
    texts = {name: [[c.text for c in r.detail] for r in rs] for name, rs in runs.items()}
    differing = [
        {"index": i, "prompt": p.user, "batched": b, "sequential": s}
        for i, (p, b, s) in enumerate(zip(prompts, texts["batched"][0], texts["sequential"][0], strict=True))
        if b != s
    ]
    result = report(runs, "tokens", {"speedup": ("batched", "sequential")})
    for name, rs in runs.items():
        result[f"{name}_tokens"] = int(rs[0].work)
        result[f"{name}_seconds"] = median_of(rs, lambda r: r.seconds)
        result[f"{name}_tokens_per_s"] = median_of(rs, lambda r: r.rate)
    result["identical_share"] = round(1 - len(differing) / len(prompts), 4)
    result["differing"] = differing
    result["deterministic"] = all(t == ts[0] for ts in texts.values() for t in ts)
    # what bench.record requires: both fp32 arms greedy-decode the same texts, every round
    result["checks"] = {"identical_texts": not differing, "deterministic": result["deterministic"]}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (each: both arms over all prompts)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default, as the service)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    args = parser.parse_args(argv)

    import torch

    from teacher_svc.backend import ChatPrompt, TransformersBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    log(f"loading {args.model} (torch threads {torch.get_num_threads()})")
    backend = TransformersBackend.load(args.model)
    prompts = [ChatPrompt(p) for p in build_prompts(args.prompts)]
    if (distinct := len({p.user for p in prompts})) < args.prompts:
        parser.error(f"only {distinct} distinct prompts available")
    log(f"{len(prompts)} prompts x {args.max_new_tokens} new tokens, batch size {args.batch_size}, {args.repeats} rounds")
    measured = measure(backend, prompts, args.max_new_tokens, args.batch_size, args.repeats)
    peak = measure_peak(backend.model_obj.config)
    per_token = forward_flops_per_token(backend.model_obj.config)
    result = {
        "model": args.model,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        **measured,
        # the decode steps' FLOPs (generated tokens x one forward; the prefill is left out: a lower bound)
        "peak": peak,
        "achieved": {arm: achieved(measured[f"{arm}_tokens"] * per_token, measured[f"{arm}_seconds"], peak, "fp32")
                     for arm in ("batched", "sequential")},
    }
    if not args.json:
        log(f"speedup {result['speedup']}x (range {result['ratios']['speedup']['min']}-{result['ratios']['speedup']['max']}), "
            f"identical {result['identical_share']:.0%}")
        for d in result["differing"]:
            log(f"  differs #{d['index']}: {d['prompt'][:60]!r}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
