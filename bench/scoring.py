"""Benchmark: the student scorer against per-sample fp32 reference loops, interleaved, in one process.

    .venv/bin/python -m bench.scoring --json            # 144 samples in 3 rounds, bundled SmolLM2-135M
    .venv/bin/python -m bench.scoring --n 48 --threads 1   # smaller, quicker; another thread count

The set: deterministic samples of 32-256 tokens built from the bundled Banking77 texts (no download):
a customer message as the instruction and an answer of varied length made of other messages; every
second answer starts by quoting the message, so the instruction makes part of it trivially
predictable and IFD values spread on both sides of 1.

Five arms on the same samples, taking turns (`bench.interleave`): the samples are cut into
`--repeats` chunks, and each round runs every arm on one chunk, in the order 3 1 2 4 5 and then
reversed, so that the two arms of every ratio run one right after the other.
1. `reference`: IFD one sample per forward, fp32, full logits, as the Cherry_LLM reference code does
   (conditional PPL of the answer after the templated instruction, unconditional PPL of the raw
   answer; IFD = their ratio);
2. `scorer`: `student_svc.scoring.score_records(..., [IFD])` with its default settings (bf16 autocast
   where the CPU has AMX/AVX512-BF16, token-budget length bucketing, shared-prefix KV cache, logits
   only at target positions);
3. `scorer_fp32`: the same with `dtype="float32"` (the exact mode);
4. `reference_mix`: the metric mix of the loop's score step (`MIX`: LoBaSS loss_base, loss_ref and
   learnability = (loss_base - loss_ref) / loss_base, with IFD on the current student in the same
   request, as `orchestrator.activities.student.score_samples` asks when a task scores both), one
   sample per forward, fp32, full logits: the response loss under the bare base and under the
   reference adapter, and IFD's two passes under the base;
5. `scorer_mix`: `score_records(peft model, ..., MIX, ScoreOptions(ifd_on_base=True))` with its
   default settings, base passes with the adapter disabled, IFD's conditional pass shared with L0's,
   as the student service scores a round.
The reference adapter is a stand-in: LoRA r=8 on q/k/v/o with seeded random A and B (`--ref-std`),
so that reference and base losses differ by a few per cent either way (learnability within about
+-0.1); the cost of a pass does not depend on the adapter's values, and `spearman_mix` says how well
the default (bf16) scorer keeps that ranking.

Threads: torch's default, as the student service runs (it sets none; `--threads N` sets N).
Human progress goes to stderr; the last stdout line is JSON with, per arm, the median and spread of
samples/s (`arms`), the per-round ratios (`ratios`) and their medians `speedup` (scorer over
reference), `speedup_fp32` (scorer_fp32 over reference) and `speedup_mix` (scorer_mix over
reference_mix); `spearman` (rank correlation of the IFD rankings of scorer and reference),
`max_abs_diff_fp32` (largest |IFD_scorer_fp32 - IFD_reference|), `spearman_mix` and
`max_abs_diff_mix` (the same for learnability, scorer_mix against reference_mix) and `peak_rss_mb`.
`peak` is the machine's matmul peak measured in the same run (`bench.peak`); `achieved` gives the IFD
arms' GFLOP/s counted as model FLOPs (the reference's two passes over every position, so an arm that
skips work is credited with it) and their fraction of the peak of the dtype they ran in.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
from collections.abc import Mapping
from pathlib import Path

from bench.interleave import Arm, Run, interleave, log, median_of, report, timed
from bench.peak import achieved, forward_flops_per_token, measure_peak

DATA = Path(os.environ.get("SYLLABUS_BANKING77", Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77")) / "train.csv"
FALLBACK_DATA = Path("/work/shared/data/banking77/train.csv")  # a checkout outside /work (a worktree of an older commit)
#: The metrics of the loop's LoBaSS score request when its task also scores IFD (student_svc.scoring names).
MIX = ("loss_base", "loss_ref", "learnability", "ifd")
#: The largest |IFD_scorer_fp32 - IFD_reference| that counts as the same figure (recorded: ~2e-6).
FP32_TOLERANCE = 1e-4


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


def ifd_tokens(tokenizer, samples: list[dict]) -> int:
    """Tokens the reference's two IFD passes run over `samples`: templated prompt + answer, then
    start token + answer."""
    from syllabus.prompts import render_prompt

    total = 0
    for s in samples:
        p = len(tokenizer(render_prompt(tokenizer, s["prompt"]), add_special_tokens=False)["input_ids"])
        a = len(tokenizer(s["response"], add_special_tokens=False)["input_ids"])
        total += p + a + 1 + a
    return total


def reference_ifd(model, tokenizer, samples: list[dict]) -> list[float]:
    """Per-sample fp32 IFD, one sequence per forward with full logits (the reference code's loop)."""
    import math

    import torch
    import torch.nn.functional as F

    from syllabus.prompts import render_prompt

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for s in samples:
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




def reference_losses(model, tokenizer, samples: list[dict]) -> list[float]:
    """Per-sample fp32 response loss (mean NLL of the response tokens, tokenized as the trainer does),
    one sequence per forward with full logits."""
    import torch
    import torch.nn.functional as F

    from syllabus.prompts import IGNORE_INDEX, encode_example

    out = []
    for s in samples:
        ids, labels = encode_example(tokenizer, s["prompt"], s["response"], max_len=512)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            out.append(F.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX).item())
    return out


def reference_mix(base, ref_model, tokenizer, samples: list[dict]) -> list[float]:
    """The loop's mix from the reference loops: L0 under `base`, Lref under `ref_model`, IFD under
    `base`; returns each sample's learnability (L0 - Lref) / L0 (IFD is `reference_ifd`'s)."""
    l0 = reference_losses(base, tokenizer, samples)
    lr = reference_losses(ref_model, tokenizer, samples)
    reference_ifd(base, tokenizer, samples)
    return [(a - b) / a if a > 0 else 0.0 for a, b in zip(l0, lr, strict=True)]


def reference_adapter(model, std: float, seed: int = 0):
    """A copy of `model` wrapped with a LoRA adapter (r=8, alpha 16, q/k/v/o) whose A and B are
    seeded random (B ~ N(0, std)): a stand-in for the loop's reference adapter."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    wrapped = get_peft_model(copy.deepcopy(model), lora)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)
    wrapped.eval()
    return wrapped


def measure(model, ref_model, tokenizer, samples: list[dict], repeats: int, slow: Mapping[str, float] | None = None) -> dict:
    """Interleave the five arms over `samples` cut into `repeats` chunks; `ref_model` is
    `reference_adapter(model, ...)`. `slow`: arm name -> slowdown factor (tests)."""
    from student_svc.scoring import IFD, LEARNABILITY, ScoreOptions, score_records

    on_base = ScoreOptions(ifd_on_base=True)

    slow = slow or {}
    chunks = [samples[i * len(samples) // repeats : (i + 1) * len(samples) // repeats] for i in range(repeats)]
    if not all(chunks):
        raise ValueError(f"{len(samples)} samples do not make {repeats} chunks")
    fp32 = ScoreOptions(dtype="float32")
    work = {  # the two arms of each ratio side by side (bench.interleave keeps neighbours together)
        "scorer_fp32": lambda c: [r["ifd_ppl"] for r in score_records(model, tokenizer, c, [IFD], options=fp32)],
        "reference": lambda c: reference_ifd(model, tokenizer, c),
        "scorer": lambda c: [r["ifd_ppl"] for r in score_records(model, tokenizer, c, [IFD])],
        "reference_mix": lambda c: reference_mix(model, ref_model, tokenizer, c),
        "scorer_mix": lambda c: [r[LEARNABILITY] for r in score_records(ref_model, tokenizer, c, MIX, options=on_base)],
    }

    def arm(name: str) -> Arm:
        def run(i: int) -> Run:
            values, seconds = timed(lambda: work[name](chunks[i]), slow.get(name, 1))
            return Run(len(chunks[i]), seconds, values)

        return Arm(name, run)

    for fn in work.values():  # warm-up: first-call allocations of every code path
        fn(samples[:2])
    runs = interleave([arm(name) for name in work], repeats)
    values = {name: [v for r in rs for v in r.detail] for name, rs in runs.items()}
    result = report(runs, "samples", {
        "speedup": ("scorer", "reference"),
        "speedup_fp32": ("scorer_fp32", "reference"),
        "speedup_mix": ("scorer_mix", "reference_mix"),
    })
    for name, rs in runs.items():
        result[f"{name}_samples_per_s"] = median_of(rs, lambda r: r.rate)
    ref, ref_mix = values["reference"], values["reference_mix"]
    result.update(
        spearman=spearman(values["scorer"], ref),
        max_abs_diff_fp32=max(abs(a - b) for a, b in zip(values["scorer_fp32"], ref, strict=True)),
        max_abs_diff_default=max(abs(a - b) for a, b in zip(values["scorer"], ref, strict=True)),
        metric_mix=list(MIX),
        spearman_mix=spearman(values["scorer_mix"], ref_mix),
        max_abs_diff_mix=max(abs(a - b) for a, b in zip(values["scorer_mix"], ref_mix, strict=True)),
        learnability_range=[min(ref_mix), max(ref_mix)],
    )
    # what bench.record requires: the exact (fp32) scorer computes the reference's IFD
    result["checks"] = {"fp32_matches_reference": result["max_abs_diff_fp32"] <= FP32_TOLERANCE}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=144, help="samples (default 144), cut into --repeats chunks")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (each: every arm on one chunk)")
    parser.add_argument("--ref-std", type=float, default=0.1, help="std of the stand-in reference adapter's LoRA B")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as the student service)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (last stdout line)")
    args = parser.parse_args(argv)

    import torch

    from student_svc.scoring import resolve_dtype
    from syllabus.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    ref_model = reference_adapter(model, args.ref_std)
    samples = build_samples(tok, n=args.n)
    lengths = [len(tok(s["response"], add_special_tokens=False)["input_ids"]) for s in samples]
    log(f"{len(samples)} samples, answers {min(lengths)}-{max(lengths)} tokens, {args.repeats} rounds; "
        f"torch threads {torch.get_num_threads()}; default dtype here: {resolve_dtype('auto', next(model.parameters()).device)}")
    measured = measure(model, ref_model, tok, samples, args.repeats)
    peak = measure_peak(model.config)
    # the reference computation's FLOPs per sample (both IFD passes, every position), for all three IFD arms
    flops = ifd_tokens(tok, samples) * forward_flops_per_token(model.config) / len(samples)
    dtypes = {"reference": "fp32", "scorer_fp32": "fp32",
              "scorer": "bf16" if resolve_dtype("auto", next(model.parameters()).device) == "bfloat16" else "fp32"}  # fmt: skip
    result = {
        "samples": len(samples),
        "threads": torch.get_num_threads(),
        **measured,
        "peak": peak,
        "achieved": {arm: achieved(flops, 1 / measured[f"{arm}_samples_per_s"], peak, dt) for arm, dt in dtypes.items()},
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
