"""Distillation benchmark: our `kd` stage vs TRL's GKDTrainer, off-policy forward KL, interleaved.

    python -m bench.distill --json                  # 96 samples in 3 rounds of 32 (minutes on 2 CPU cores)
    python -m bench.distill --samples 24 --json     # quick look

Both distil the bundled SmolLM2-135M into a LoRA (r=8, alpha 16, on q,k,v,o) of itself for 1 epoch
over the same Banking77-derived samples as bench.trainer, batches of `--batch-size` samples, no
packing (GKD does not pack), no gradient checkpointing, the same dtype (bf16 autocast where the CPU
has it natively, else fp32, for both), AdamW, warm-up 10% + cosine to 0, gradient clip 1.0, and the
pure divergence (no cross-entropy mixed in):

- ours: `objective: kd`, `distill: {alpha: 1, temperature: 1, divergence: forward_kl, top_k: K}`,
  on the teacher's top-K log-probs captured once beforehand (`teacher_svc.logprobs.transformers_topk`,
  what TeacherService.TopLogprobs runs); the capture is timed apart (`capture_seconds_ours`) and not
  in tokens/s, since a loop pays it once per training set, not per epoch;
- sft: our plain SFT on the same records and batches (no teacher): the memory bound (kd <= SFT + 25%);
- TRL: `trl.experimental.gkd.GKDTrainer` with `lmbda=0` (off-policy: the dataset's responses),
  `beta=0` (forward KL), `temperature=1`: the teacher runs forward at every step over the whole
  vocabulary (GKD has no top-k).

Interleaved (`bench.interleave`) as bench.trainer: each trainer in its own child process, the model
loaded once (the teacher is the same loaded model, so both processes hold one base and one student
copy), `--repeats` chunks, the order reversing. tokens/s = tokens of the chunk's samples / wall time
of the training loop. Peak memory is the process's peak RSS (CPU). The last stdout line is JSON with
`tokens_per_s_ratio` (median over rounds of ours / TRL), `peak_rss_mb_ours`, `peak_rss_mb_trl`,
`peak_rss_mb_sft`, `peak_rss_ratio` (ours / TRL), `peak_rss_ratio_vs_sft`, `capture_seconds_ours` and
the per-arm medians.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable

from bench.interleave import log, median_of, timed
from bench.trainer import LORA_TARGETS, bf16, chunks, common_parser, emit, interleave_workers, running_workers

__all__ = ["TRAINERS", "chunks", "main"]


def _recipe(args: argparse.Namespace, objective: str):
    from syllabus.recipe import Recipe

    stage = {"objective": objective, "lr": args.lr, "epochs": 1, "schedule": {"kind": "cosine", "warmup_ratio": 0.1},
             "lora": {"rank": 8, "alpha": 16, "targets": LORA_TARGETS}}  # fmt: skip
    if objective == "kd":
        stage["distill"] = {"alpha": 1.0, "temperature": 1.0, "divergence": "forward_kl", "top_k": args.top_k}
    return Recipe.model_validate({"seed": args.seed, "max_seq_len": 512, "packing": False, "batch_size": args.batch_size,
                                  "bf16": bf16(), "max_grad_norm": 1.0, "stages": [stage]})  # fmt: skip


def train_sft(lm, tok, args: argparse.Namespace, data: list[dict], slowdown: float) -> dict:
    """Plain SFT on the same records, batches and LoRA: the peak memory the kd stage is held to (+25%)."""
    from trainer_svc.staged import train_recipe

    model = copy.deepcopy(lm).train()
    (_, _, result), seconds = timed(lambda: train_recipe(model, tok, data, _recipe(args, "sft")), slowdown)
    return {"loss": result.mean_loss, "steps": len(result.losses), "processed_tokens": result.tokens, "seconds": seconds}


def train_ours(lm, tok, args: argparse.Namespace, data: list[dict], slowdown: float) -> dict:
    from syllabus import topk
    from teacher_svc.logprobs import transformers_topk
    from trainer_svc.staged import train_recipe

    pairs = [(s["prompt"], s["response"]) for s in data]
    rows, capture = timed(lambda: transformers_topk(lm.eval(), tok, pairs, args.top_k, 512), 1.0)
    tset = topk.loads(topk.dumps({topk.record_digest(p, r): row for (p, r), row in zip(pairs, rows, strict=True)},
                                 args.top_k, {"id": "bench"}))  # fmt: skip
    recipe = _recipe(args, "kd")
    model = copy.deepcopy(lm).train()
    (_, _, result), seconds = timed(lambda: train_recipe(model, tok, data, recipe, teacher_topk=tset), slowdown)
    return {"loss": result.mean_loss, "steps": len(result.losses), "processed_tokens": result.tokens, "seconds": seconds,
            "capture_seconds": capture}  # fmt: skip


def train_trl(lm, tok, args: argparse.Namespace, data: list[dict], slowdown: float) -> dict:
    import warnings

    from datasets import Dataset
    from peft import LoraConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDConfig, GKDTrainer

    dataset = Dataset.from_list([{"messages": [{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": s["response"]}]}
                                 for s in data])  # fmt: skip
    out = tempfile.TemporaryDirectory(prefix="bench-gkd-")
    cfg = GKDConfig(
        output_dir=out.name, lmbda=0.0, beta=0.0, temperature=1.0, max_length=512,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, num_train_epochs=1,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.0, max_grad_norm=1.0,
        bf16=bf16(), use_cpu=True, gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[],
        seed=args.seed, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = GKDTrainer(model=copy.deepcopy(lm), teacher_model=lm, args=cfg, train_dataset=dataset, processing_class=tok,
                         peft_config=lora)  # fmt: skip
    with out:
        _, seconds = timed(trainer.train, slowdown)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"loss": sum(losses) / len(losses), "steps": len(losses), "processed_tokens": 0, "seconds": seconds}


TRAINERS: dict[str, Callable] = {"ours": train_ours, "trl": train_trl, "sft": train_sft}


def parser() -> argparse.ArgumentParser:
    ap = common_parser("python -m bench.distill", __doc__, 96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=20)
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    log(f"{args.samples} samples in {args.repeats} chunks, top-{args.top_k}; starting the trainers")
    with running_workers(args, module="bench.distill", names=tuple(TRAINERS)) as workers:
        runs, result = interleave_workers(workers, args.repeats)
    for name, rs in runs.items():
        result[f"tokens_per_s_{name}"] = median_of(rs, lambda r: r.rate)
        result[f"peak_rss_mb_{name}"] = round(max(r.detail["rss"] for r in rs), 1)
        result[f"steps_{name}"] = sum(r.detail["steps"] for r in rs)
        result[f"loss_{name}"] = median_of(rs, lambda r: r.detail["loss"])
    result["capture_seconds_ours"] = round(sum(r.detail["capture_seconds"] for r in runs["ours"]), 2)
    # what bench.record requires: every trainer took the same optimiser steps (equal work; KL values
    # over top-k and over the whole vocabulary differ by construction, so no loss check)
    result["checks"] = {"equal_steps": len({result[f"steps_{name}"] for name in runs}) == 1}
    threads = {w.threads for w in workers.values()}
    summary = {"samples": args.samples, "top_k": args.top_k, "bf16": bf16(), "threads": threads.pop() if len(threads) == 1 else sorted(threads),
               "peak_rss_ratio": round(result["peak_rss_mb_ours"] / result["peak_rss_mb_trl"], 3),
               "peak_rss_ratio_vs_sft": round(result["peak_rss_mb_ours"] / result["peak_rss_mb_sft"], 3), **result}  # fmt: skip
    return emit(summary, args.json)


if __name__ == "__main__":
    main()
