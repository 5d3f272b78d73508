"""The machine's own matmul peak, measured in the same run as a benchmark, and what an arm achieved of it.

    .venv/bin/python -m bench.peak --json          # fp32 and bf16 GFLOP/s at the bundled model's shapes

A ratio between two of our own arms says nothing about how close either is to what the CPU can do.
Every timed benchmark therefore runs this short GEMM probe beside its arms and reports the probe
(`peak`: fp32 and bf16 GFLOP/s, the CPU model and its matmul flags) and, per arm, the GFLOP/s its
model arithmetic came to and that as a fraction of the peak of the dtype it ran in.

The probe multiplies (M x K) by (K x N) at the shapes of a transformer layer of the model
(hidden -> hidden, hidden -> intermediate, intermediate -> hidden, hidden -> vocab) with M the
tokens of a batch (128: the rows of a scoring or training step); the peak of a dtype is the best
GFLOP/s over the shapes and 3 timed calls after a warm-up, with the thread count the benchmark
runs at. Seconds on a CPU with native bf16; on one without, bf16 products are slow and their warm-up is the figure.

An arm's FLOPs are counted from the model's config (`forward_flops_per_token`): 2 x the weights a
token meets in the linear layers (attention projections, MLP, lm_head). Attention scores,
norms and activations are left out, so the achieved figure is a lower bound; the same count serves
both arms of a ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

#: The CPU flags that decide which matmul kernels run (bf16 natively, AMX tiles, AVX-512, AVX2).
MATMUL_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma")


def cpu() -> dict:
    """The CPU model and which of `MATMUL_FLAGS` it has (from /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in MATMUL_FLAGS if f in flags]}


def layer_shapes(config, tokens: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of the linear layers a token meets in a decoder of `config` (a transformers config)."""
    d, ff, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    return [(tokens, d, d), (tokens, d, ff), (tokens, ff, d), (tokens, d, vocab)]


def forward_flops_per_token(config) -> float:
    """Matmul FLOPs of one token's forward pass: 2 x the linear weights it meets (q, k, v, o with
    grouped KV heads, gate/up/down, lm_head). A lower bound of the real work (no attention scores)."""
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attention = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q and o full, k and v per KV head
    mlp = 3 * d * ff  # gate, up, down
    return 2.0 * (layers * (attention + mlp) + d * config.vocab_size)


#: A product whose warm-up took longer than this is not timed again: a CPU without native bf16
#: runs bf16 at a few GFLOP/s, and the probe is there to say so, not to take minutes doing it.
SLOW_PRODUCT_S = 0.5


def gemm_gflops(m: int, k: int, n: int, dtype, reps: int = 3) -> float:
    """Best GFLOP/s of `reps` timed (m x k) @ (k x n) products in `dtype`, after one warm-up."""
    import torch

    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    t0 = time.perf_counter()
    torch.matmul(a, b)
    best = time.perf_counter() - t0
    if best > SLOW_PRODUCT_S:  # slow enough that warm-up costs are noise: the warm-up is the figure
        return 2.0 * m * k * n / best / 1e9
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


def measure_peak(config, tokens: int = 128, reps: int = 3) -> dict:
    """`{"fp32_gflops", "bf16_gflops", "shapes", "threads", "cpu"}`: the best GFLOP/s per dtype over
    the model's layer shapes."""
    import torch

    shapes = layer_shapes(config, tokens)
    out: dict = {"shapes": [list(s) for s in shapes], "threads": torch.get_num_threads(), "cpu": cpu()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out[f"{name}_gflops"] = round(max(gemm_gflops(*s, dtype, reps) for s in shapes), 1)
    return out


def achieved(flops: float, seconds: float, peak: dict, dtype: str) -> dict:
    """`{"gflops", "dtype", "peak_fraction"}` of an arm that did `flops` in `seconds` in `dtype`
    ("fp32" or "bf16"), against the probe `peak`."""
    gflops = flops / seconds / 1e9 if seconds > 0 else 0.0
    return {"gflops": round(gflops, 2), "dtype": dtype, "peak_fraction": round(gflops / peak[f"{dtype}_gflops"], 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.peak", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=128, help="M of the probe's products (tokens of a batch)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)
    import torch
    from transformers import AutoConfig

    from syllabus.models import resolve_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure_peak(AutoConfig.from_pretrained(resolve_model_dir(args.model)), args.tokens)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
