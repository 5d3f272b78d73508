"""Benchmark: the student scorer (IFD) against a per-sample fp32 reference loop, in one process.

    .venv/bin/python -m bench.scoring --json            # 256 samples, bundled SmolLM2-135M
    .venv/bin/python -m bench.scoring --n 64 --threads 2   # smaller, quicker; other thread count

The set: 256 deterministic samples of 32-256 tokens built from the bundled Banking77 texts (no
download): a customer message as the instruction and an answer of varied length made of other
messages; every second answer starts by quoting the message, so the instruction makes part of it
trivially predictable and IFD values spread on both sides of 1.

Three runs on the same samples, side by side (so machine load affects all of them alike):
1. reference: one sample per forward, fp32, full logits, as the Cherry_LLM reference code does
   (conditional PPL of the answer after the templated instruction, unconditional PPL of the raw
   answer; IFD = their ratio);
2. `student_svc.scoring.score_records(..., [IFD])` with its default settings (bf16 autocast where
   the CPU has AMX/AVX512-BF16, token-budget length bucketing, shared-prefix KV cache, logits only
   at target positions);
3. the same scorer with `dtype="float32"` (the exact mode).

Human progress goes to stderr; the last stdout line is JSON with `speedup` (samples/s of 2 over 1),
`spearman` (rank correlation of the IFD rankings of 2 and 1), `max_abs_diff_fp32` (largest
|IFD_3 - IFD_1|) and `peak_rss_mb`.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"
FALLBACK_DATA = Path("/work/shared/data/banking77/train.csv")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_samples(tokenizer, n: int = 256, min_tokens: int = 32, max_tokens: int = 256, seed: int = 0) -> list[dict]:
    """n {"id", "prompt", "response"} samples whose templated length is spread over [min, max] tokens."""
    from syllabus.prompts import encode_example

    path = DATA if DATA.is_file() else FALLBACK_DATA
    with open(path, newline="") as f:
        texts = [row["text"].strip() for row in csv.DictReader(f)]
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        target = min_tokens + (max_tokens - min_tokens) * i // max(1, n - 1)
        question = rng.choice(texts)
        prompt = f"Answer the bank customer's message.\nMessage: {question}"
        parts = [f'You wrote: "{question}"'] if i % 2 else []
        response = ""
        while True:
            candidate = " ".join(parts) if parts else ""
            ids, _ = encode_example(tokenizer, prompt, candidate, max_len=10_000)
            if len(ids) >= target or len(parts) > 200:
                break
            response = candidate
            parts.append(rng.choice(texts))
        if not response:  # the prompt alone is already long: a one-message answer
            response = parts[0] if parts else rng.choice(texts)
        samples.append({"id": f"b{i:03d}", "prompt": prompt, "response": response})
    rng.shuffle(samples)
    return samples


def reference_ifd(model, tokenizer, samples: list[dict]) -> list[float]:
    """Per-sample fp32 IFD, one sequence per forward with full logits (the reference code's loop)."""
    import math

    import torch
    import torch.nn.functional as F

    from syllabus.prompts import render_prompt

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for k, s in enumerate(samples):
        p_ids = tokenizer(render_prompt(tokenizer, s["prompt"]), add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(s["response"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            whole = torch.tensor([p_ids + a_ids])
            logits = model(input_ids=whole).logits[0].float()
            cond = F.cross_entropy(logits[len(p_ids) - 1 : -1], whole[0, len(p_ids) :]).item()
            raw = torch.tensor([[start] + a_ids])
            logits = model(input_ids=raw).logits[0].float()
            uncond = F.cross_entropy(logits[:-1], raw[0, 1:]).item()
        out.append(math.exp(cond - uncond))
        if (k + 1) % 32 == 0:
            log(f"  reference {k + 1}/{len(samples)}")
    return out


def rankdata(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = rankdata(a), rankdata(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=256, help="samples (default 256)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads for all three runs (default 1: measured faster than 2 on a shared 2-core machine; 0: torch's default)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON (last stdout line)")
    args = parser.parse_args(argv)

    import torch

    from student_svc.scoring import IFD, ScoreOptions, resolve_dtype, score_records
    from syllabus.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    samples = build_samples(tok, n=args.n)
    lengths = [len(tok(s["response"], add_special_tokens=False)["input_ids"]) for s in samples]
    log(f"{len(samples)} samples, answers {min(lengths)}-{max(lengths)} tokens; torch threads {torch.get_num_threads()}; "
        f"default dtype here: {resolve_dtype('auto', next(model.parameters()).device)}")

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        log(f"{name}: {dt:.1f} s, {len(samples) / dt:.2f} samples/s")
        return result, dt

    ref, t_ref = timed("reference (per sample, fp32, full logits)", lambda: reference_ifd(model, tok, samples))
    fast, t_fast = timed("scorer, default settings", lambda: score_records(model, tok, samples, [IFD]))
    exact, t_exact = timed(
        "scorer, float32", lambda: score_records(model, tok, samples, [IFD], options=ScoreOptions(dtype="float32"))
    )
    result = {
        "samples": len(samples),
        "threads": torch.get_num_threads(),
        "reference_samples_per_s": len(samples) / t_ref,
        "scorer_samples_per_s": len(samples) / t_fast,
        "scorer_fp32_samples_per_s": len(samples) / t_exact,
        "speedup": t_ref / t_fast,
        "speedup_fp32": t_ref / t_exact,
        "spearman": spearman([r["ifd_ppl"] for r in fast], ref),
        "max_abs_diff_fp32": max(abs(r["ifd_ppl"] - x) for r, x in zip(exact, ref, strict=True)),
        "max_abs_diff_default": max(abs(r["ifd_ppl"] - x) for r, x in zip(fast, ref, strict=True)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
