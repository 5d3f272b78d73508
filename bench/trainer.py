"""Trainer benchmark: this trainer vs TRL's SFTTrainer on the same data, side by side in one run.

"Ours" is the staged recipe runner (`trainer_svc.staged.train_recipe`, one LoRA SFT stage), the path
every TrainerService job takes.

    python -m bench.trainer --json                 # 512 samples (minutes on 2 CPU cores)
    python -m bench.trainer --samples 64 --json    # quick look

Both train the bundled SmolLM2-135M with LoRA r=8 (alpha 16) on q,k,v,o for 1 epoch over the same
Banking77-derived samples (prompt: `syllabus.prompts.classification_prompt` over five intents,
response: the intent), with packing into rows of `--row-tokens` (best-fit decreasing), the same
packed rows per step, bf16 autocast, AdamW, warm-up 10% + cosine to 0, gradient clip 1.0 and
completion-only loss. Each trainer runs in its own child process so its peak RSS is its own.

tokens/s = real tokens of the epoch / wall time of the training loop (model loading excluded).
loss = mean of the per-step training losses over the epoch (what `Trainer` reports as train_loss).
Progress goes to stderr; the last stdout line is JSON with `tokens_per_s_ratio` (ours / TRL),
`loss_ours`, `loss_trl`, `peak_rss_mb_ours`, `peak_rss_mb_trl` and details.
Needs `trl` (pip install trl==1.16.0).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("SYLLABUS_BANKING77", Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"))
INTENTS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "passcode_forgotten"]
INSTRUCTIONS = "Classify the bank customer's message into one of the intents. Answer with the intent only."
BASE = "bundled:smollm2-135m-instruct"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def samples(n: int) -> list[dict]:
    """The first n training rows of the five intents, interleaved by intent (deterministic)."""
    from syllabus.prompts import classification_prompt

    by_intent: dict[str, list[str]] = {c: [] for c in INTENTS}
    with open(DATA / "train.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] in by_intent:
                by_intent[row["category"]].append(row["text"])
    out = []
    for i in range(max(len(v) for v in by_intent.values())):
        for c in INTENTS:
            if i < len(by_intent[c]) and len(out) < n:
                out.append({"prompt": classification_prompt(INSTRUCTIONS, INTENTS, by_intent[c][i]), "response": c})
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args: argparse.Namespace, q: mp.Queue) -> None:
    import torch

    from syllabus.models import load_model
    from syllabus.recipe import Recipe
    from trainer_svc.staged import train_recipe

    torch.set_num_threads(args.threads)
    lm, tok = load_model(BASE)
    recipe = Recipe.model_validate(
        {
            "seed": args.seed,
            "max_seq_len": 512,
            "packing": True,
            "row_tokens": args.row_tokens,
            "rows_per_step": args.rows_per_step,
            "bf16": True,
            "max_grad_norm": 1.0,
            "stages": [
                {
                    "lr": args.lr,
                    "epochs": 1,
                    "schedule": {"kind": "cosine", "warmup_ratio": 0.1, "final_lr_ratio": 0.0},
                    "lora": {"rank": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                }
            ],
        }
    )

    def on_step(p) -> None:
        log(f"ours  step {p.step}/{p.total_steps} loss {p.loss:.4f} lr {p.lr:.2e} {p.tokens_per_s:.0f} tok/s")

    t0 = time.perf_counter()
    _, _, result = train_recipe(lm, tok, samples(args.samples), recipe, on_step=on_step)
    seconds = time.perf_counter() - t0
    q.put({"loss": result.mean_loss, "losses": result.losses, "tokens": result.tokens, "seconds": seconds, "rss": peak_rss_mb()})


def run_trl(args: argparse.Namespace, q: mp.Queue) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from syllabus.models import load_model
    from syllabus.prompts import render_prompt

    torch.set_num_threads(args.threads)
    lm, tok = load_model(BASE)
    data = Dataset.from_list(
        [{"prompt": render_prompt(tok, s["prompt"]), "completion": s["response"]} for s in samples(args.samples)]
    )
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-trl"
    cfg = SFTConfig(
        output_dir=str(out),
        packing=True,
        packing_strategy="bfd",
        max_length=args.row_tokens,
        per_device_train_batch_size=args.rows_per_step,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=True,
        use_cpu=True,
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")

    class Progress(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                log(f"trl   step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}")

    trainer = SFTTrainer(model=lm, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora, callbacks=[Progress()])
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    q.put({"loss": sum(losses) / len(losses), "losses": losses, "tokens": tokens, "seconds": seconds, "rss": peak_rss_mb()})


def in_child(fn, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--row-tokens", type=int, default=1024)
    ap.add_argument("--rows-per-step", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--order", choices=["ours-first", "trl-first"], default="ours-first")
    ap.add_argument("--json", action="store_true", help="print the JSON summary as the last line")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runs = [("ours", run_ours), ("trl", run_trl)]
    if args.order == "trl-first":
        runs.reverse()
    res = {}
    for name, fn in runs:
        log(f"== {name}: {args.samples} samples")
        res[name] = in_child(fn, args)
        log(f"== {name}: {res[name]['tokens']} tokens in {res[name]['seconds']:.1f} s, mean loss {res[name]['loss']:.4f}")
    ours, trl = res["ours"], res["trl"]
    tps_ours, tps_trl = ours["tokens"] / ours["seconds"], trl["tokens"] / trl["seconds"]
    summary = {
        "samples": args.samples,
        "steps_ours": len(ours["losses"]),
        "steps_trl": len(trl["losses"]),
        "tokens_ours": ours["tokens"],
        "tokens_trl": trl["tokens"],
        "tokens_per_s_ours": round(tps_ours, 1),
        "tokens_per_s_trl": round(tps_trl, 1),
        "tokens_per_s_ratio": round(tps_ours / tps_trl, 3),
        "loss_ours": round(ours["loss"], 4),
        "loss_trl": round(trl["loss"], 4),
        "loss_rel_diff": round(abs(ours["loss"] - trl["loss"]) / trl["loss"], 4),
        "peak_rss_mb_ours": round(ours["rss"], 1),
        "peak_rss_mb_trl": round(trl["rss"], 1),
        "threads": args.threads,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
