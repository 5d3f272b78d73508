"""Batched vs one-prompt-at-a-time greedy generation with the bundled teacher, in one run.

    .venv/bin/python -m bench.generation --json            # 64 prompts x 48 new tokens, bundled model
    .venv/bin/python -m bench.generation --prompts 16 --max-new-tokens 16 --threads 2

Both arms use `teacher_svc.backend.TransformersBackend` with greedy decoding (temperature 0): the
batched arm sends all prompts in batches of `--batch-size` (left padding, position ids from the
attention mask), the sequential arm one prompt per call. Progress goes to stderr; the last line of
stdout is JSON with `speedup` (batched tokens/s over sequential tokens/s), `identical_share` (share of
prompts whose decoded greedy text is identical in both arms) and the prompts that differ. Both arms run
in the same process on the same model, so the ratio is meaningful on a shared machine.

Efficiency of the batched arm: KV cache (transformers' default dynamic cache), static left padding with
position ids from the attention mask, greedy batches sorted by prompt length (less padding in the
prefill), fp32 in both arms, and an explicit torch thread count (`--threads`, default 2 = this
machine's cores) set before loading. bf16 autocast is not used: on this CPU (AMX) it makes the batched
arm much faster, but batched and one-at-a-time bf16 greedy texts then diverge on about half the
prompts, so the comparison would no longer be like for like.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both arms")
    parser.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    args = parser.parse_args(argv)

    import torch

    from teacher_svc.backend import ChatPrompt, Sampling, TransformersBackend

    torch.set_num_threads(args.threads)
    log(f"loading {args.model} (torch threads {args.threads})")
    backend = TransformersBackend.load(args.model)
    prompts = [ChatPrompt(p) for p in build_prompts(args.prompts)]
    if len(prompts) < args.prompts:
        parser.error(f"only {len(prompts)} distinct prompts available")
    greedy = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens, n=1)
    backend.generate(prompts[:2], greedy, batch_size=2)  # warm-up: first-call allocations

    log(f"batched: {len(prompts)} prompts, batch size {args.batch_size}")
    t0 = time.perf_counter()
    batched = [c[0] for c in backend.generate(prompts, greedy, batch_size=args.batch_size)]
    batched_s = time.perf_counter() - t0
    batched_tokens = sum(c.tokens for c in batched)
    log(f"batched: {batched_tokens} tokens in {batched_s:.1f} s")

    sequential = []
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        sequential.append(backend.generate([p], greedy, batch_size=1)[0][0])
        if (i + 1) % 8 == 0:
            log(f"sequential: {i + 1}/{len(prompts)} prompts, {time.perf_counter() - t0:.1f} s")
    sequential_s = time.perf_counter() - t0
    sequential_tokens = sum(c.tokens for c in sequential)

    differing = [
        {"index": i, "prompt": p.user, "batched": b.text, "sequential": s.text}
        for i, (p, b, s) in enumerate(zip(prompts, batched, sequential, strict=True))
        if b.text != s.text
    ]
    batched_tps = batched_tokens / batched_s
    sequential_tps = sequential_tokens / sequential_s
    result = {
        "model": args.model,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "batched_tokens": batched_tokens,
        "batched_seconds": round(batched_s, 2),
        "batched_tokens_per_s": round(batched_tps, 1),
        "sequential_tokens": sequential_tokens,
        "sequential_seconds": round(sequential_s, 2),
        "sequential_tokens_per_s": round(sequential_tps, 1),
        "speedup": round(batched_tps / sequential_tps, 2),
        "identical_share": round(1 - len(differing) / len(prompts), 4),
        "differing": differing,
    }
    if not args.json:
        log(f"speedup {result['speedup']}x, identical {result['identical_share']:.0%}")
        for d in differing:
            log(f"  differs #{d['index']}: {d['prompt'][:60]!r}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
