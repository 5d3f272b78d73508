"""Trainer benchmark: this trainer vs TRL's SFTTrainer on the same data, interleaved.

"Ours" is the staged recipe runner (`trainer_svc.staged.train_recipe`, one LoRA SFT stage), the path
every TrainerService job takes.

    python -m bench.trainer --json                 # 384 samples in 3 rounds of 128 (minutes on 2 CPU cores)
    python -m bench.trainer --samples 64 --json    # quick look

Three arms train the bundled SmolLM2-135M with LoRA r=8 (alpha 16) on q,k,v,o for 1 epoch over the
same Banking77-derived samples (prompt: `syllabus.kinds.CLASSIFICATION.prompt` over five intents,
response: the intent), with packing into rows of `--row-tokens` (best-fit decreasing), the same
packed rows per step, bf16 autocast where the CPU has it natively (else fp32, as the trainer
service decides), AdamW, warm-up 10% + cosine to 0, gradient clip 1.0, completion-only loss and no gradient checkpointing (TRL turns it on by default; off, as a
practitioner runs a model this size):
- `ours`: as every job trains (a packed row's shared prompt prefix laid out once);
- `ours_unshared`: ours with every sample laid out in full, the tokens TRL processes;
- `trl`: TRL's SFTTrainer, padding-free packing.

Interleaved (`bench.interleave`): the samples are cut into `--repeats` chunks; each round trains a
fresh adapter on one chunk with every trainer in turn (the order reversing), so a round's trainers
see the same data and the same machine. Each trainer lives in its own child process for the whole
run (its model loaded once, warmed up on a few samples, its peak RSS its own and including the
loaded base that every chunk starts from a copy of). Threads: torch's default, as the trainer
service runs (`--threads N` sets N).

tokens/s = tokens of the chunk's samples (prompt + response, as both tokenize them) / wall time
from the samples to the trained adapter (tokenizing, packing, the LoRA wrap and the steps, in every
arm; loading the model and copying it, not). The same count for every trainer, so a ratio is a ratio
of times on the same data: `tokens_per_s_ratio` (ours / TRL) is the headline, `equal_tokens_ratio`
(ours_unshared / TRL) the one at equal processed tokens (`processed_tokens_*`,
`processed_tokens_rel_diff`). loss = mean of the per-step training losses of a chunk (what `Trainer`
reports as train_loss); `loss_ours` / `loss_trl` are the medians over the chunks. Correctness
(`checks`, which bench.record requires): equal steps and losses within 5%.
Progress goes to stderr; the last stdout line is JSON with the ratios' medians, per-arm medians and
spreads under `arms`, the per-round ratios under `ratios`, losses, peak RSS and details.
`peak` is the machine's matmul peak measured after the trainers ran (`bench.peak`) and `achieved`
each trainer's GFLOP/s over the tokens it processed (2 x a forward's matmul FLOPs per token) against
the peak of the dtype they train in.
Needs `trl` (pip install trl==1.16.0).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import multiprocessing as mp
import os
import queue
import resource
import tempfile
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.interleave import Arm, Run, interleave, log, median_of, report, timed
from bench.peak import achieved

DATA = Path(os.environ.get("SYLLABUS_BANKING77", Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"))
FALLBACK_DATA = Path("/work/shared/data/banking77")  # a checkout outside /work (a worktree of an older commit)
INTENTS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "passcode_forgotten"]
INSTRUCTIONS = "Classify the bank customer's message into one of the intents. Answer with the intent only."
BASE = "bundled:smollm2-135m-instruct"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
#: The largest relative difference of the two trainers' mean losses that counts as the same training.
LOSS_TOLERANCE = 0.05


def samples(n: int) -> list[dict]:
    """The first n training rows of the five intents, interleaved by intent (deterministic)."""
    from syllabus.kinds import CLASSIFICATION

    by_intent: dict[str, list[str]] = {c: [] for c in INTENTS}
    with open((DATA if DATA.is_dir() else FALLBACK_DATA) / "train.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] in by_intent:
                by_intent[row["category"]].append(row["text"])
    out = []
    for i in range(max(len(v) for v in by_intent.values())):
        for c in INTENTS:
            if i < len(by_intent[c]) and len(out) < n:
                out.append({"prompt": CLASSIFICATION.prompt(INSTRUCTIONS, INTENTS, by_intent[c][i]), "response": c})
    return out


def chunks(args: argparse.Namespace) -> list[list[dict]]:
    """The samples cut into `args.repeats` contiguous chunks (each balanced over the intents)."""
    data = samples(args.samples)
    n, k = len(data), args.repeats
    out = [data[i * n // k : (i + 1) * n // k] for i in range(k)]
    if not all(out):
        raise ValueError(f"{n} samples do not make {k} chunks")
    return out


def data_tokens(tok, data: list[dict]) -> int:
    """Tokens of the samples, prompt and response, as the trainer tokenizes them (TRL: the same)."""
    from syllabus.prompts import encode_example

    return sum(len(encode_example(tok, s["prompt"], s["response"], max_len=512)[0]) for s in data)


def bf16() -> bool:
    """bf16 autocast in every arm where the hardware runs it natively, as the trainer service decides
    (`trainer_svc.jobs.bf16_supported`; emulated bf16 is several times slower than fp32)."""
    from trainer_svc.jobs import bf16_supported

    return bf16_supported()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_ours(lm, tok, args: argparse.Namespace, data: list[dict], slowdown: float, share_prefix: bool = True) -> dict:
    """Our staged recipe runner on `data`; timed: everything from the samples to the trained adapter
    (tokenizing, packing, the LoRA wrap, the steps), the model copy not."""
    from syllabus.recipe import Recipe
    from trainer_svc.staged import train_recipe

    recipe = Recipe.model_validate(
        {
            "seed": args.seed,
            "max_seq_len": 512,
            "packing": True,
            "row_tokens": args.row_tokens,
            "rows_per_step": args.rows_per_step,
            "bf16": bf16(),
            "max_grad_norm": 1.0,
            "share_prefix": share_prefix,
            "stages": [
                {
                    "lr": args.lr,
                    "epochs": 1,
                    "schedule": {"kind": "cosine", "warmup_ratio": 0.1, "final_lr_ratio": 0.0},
                    "lora": {"rank": 8, "alpha": 16, "targets": LORA_TARGETS},
                }
            ],
        }
    )

    def on_step(p) -> None:
        log(f"ours  step {p.step}/{p.total_steps} loss {p.loss:.4f} lr {p.lr:.2e} {p.tokens_per_s:.0f} tok/s")

    model = copy.deepcopy(lm)  # train_recipe wraps the model with LoRA in place
    (_, _, result), seconds = timed(lambda: train_recipe(model, tok, data, recipe, on_step=on_step), slowdown)
    return {"loss": result.mean_loss, "steps": len(result.losses), "processed_tokens": result.tokens, "seconds": seconds}


def train_ours_unshared(lm, tok, args: argparse.Namespace, data: list[dict], slowdown: float) -> dict:
    """Ours with each packed row's shared prompt prefix laid out per sample, as TRL does: equal tokens."""
    return train_ours(lm, tok, args, data, slowdown, share_prefix=False)


def train_trl(lm, tok, args: argparse.Namespace, data: list[dict], slowdown: float) -> dict:
    """TRL's SFTTrainer as a practitioner configures it on this model: LoRA, bf16, padding-free
    best-fit packing, completion-only loss and gradient checkpointing off (TRL turns it on by
    default, recomputing every layer in the backward pass). Timed as ours: from the samples
    (dataset, tokenizing, packing, the LoRA wrap: `SFTTrainer(...)`) to the trained adapter."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from syllabus.prompts import render_prompt

    out = tempfile.TemporaryDirectory(prefix="bench-trl-")
    cfg = SFTConfig(
        output_dir=out.name,
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
        bf16=bf16(),
        use_cpu=True,
        gradient_checkpointing=False,
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")

    class Progress(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                log(f"trl   step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}")

    model = copy.deepcopy(lm)

    def setup_and_train():
        dataset = Dataset.from_list([{"prompt": render_prompt(tok, s["prompt"]), "completion": s["response"]} for s in data])
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tok, peft_config=lora,
                             callbacks=[Progress()])  # fmt: skip
        trainer.train()
        return trainer

    with out:
        trainer, seconds = timed(setup_and_train, slowdown)
    processed = sum(len(x) for x in trainer.train_dataset["input_ids"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"loss": sum(losses) / len(losses), "steps": len(losses), "processed_tokens": processed, "seconds": seconds}


TRAINERS: dict[str, Callable] = {"ours": train_ours, "ours_unshared": train_ours_unshared, "trl": train_trl}


def serve(name: str, args: argparse.Namespace, inbox: mp.Queue, outbox: mp.Queue, module: str = "bench.trainer") -> None:
    """Child process: load the model once (and warm up), then train one chunk per `(chunk, slowdown)` message
    until None; every answer is a dict ({"error": traceback} if the chunk failed). `module` is the
    benchmark whose `TRAINERS` and `chunks` run (this one, or bench.distill)."""
    try:
        import importlib

        import torch

        from syllabus.models import load_model

        bench = importlib.import_module(module)
        if args.threads:
            torch.set_num_threads(args.threads)
        lm, tok = load_model(args.model)
        data = bench.chunks(args)
        bench.TRAINERS[name](lm, tok, args, data[0][:4], 1.0)  # warm-up: first-call allocations, lazy imports
        outbox.put({"threads": torch.get_num_threads()})
        while (msg := inbox.get()) is not None:
            chunk, slowdown = msg
            res = bench.TRAINERS[name](lm, tok, args, data[chunk], slowdown)
            outbox.put({**res, "tokens": data_tokens(tok, data[chunk]), "rss": peak_rss_mb()})
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        outbox.put({"error": traceback.format_exc()})


class Worker:
    """One trainer in its own child process (spawned: a fresh interpreter, its own peak RSS)."""

    def __init__(self, name: str, args: argparse.Namespace, module: str = "bench.trainer") -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.threads = 0  # torch threads in the child, once it has loaded
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=serve, args=(name, args, self.inbox, self.outbox, module), daemon=True)
        self.proc.start()

    def answer(self) -> dict:
        while True:
            try:
                msg = self.outbox.get(timeout=5)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise RuntimeError(f"the {self.name} trainer process died (exit code {self.proc.exitcode})") from None
                continue
            if "error" in msg:
                raise RuntimeError(f"the {self.name} trainer failed:\n{msg['error']}")
            return msg

    def train(self, chunk: int, slowdown: float) -> dict:
        self.inbox.put((chunk, slowdown))
        return self.answer()

    def close(self) -> None:
        self.inbox.put(None)
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


def start_workers(args: argparse.Namespace, module: str = "bench.trainer", names: tuple[str, ...] = ("ours", "trl", "ours_unshared")) -> dict[str, Worker]:
    """Both trainers started together; returns once both have loaded the model."""
    workers = {name: Worker(name, args, module) for name in names}
    try:
        for w in workers.values():
            w.threads = w.answer()["threads"]
    except BaseException:
        for w in workers.values():
            w.close()
        raise
    return workers


@contextlib.contextmanager
def running_workers(args: argparse.Namespace, module: str = "bench.trainer", names: tuple[str, ...] = ("ours", "trl", "ours_unshared")):
    """`start_workers` offline (as the services run), closed however the measurement ends."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    workers = start_workers(args, module, names)
    try:
        yield workers
    finally:
        for w in workers.values():
            w.close()


def emit(summary: dict, as_json: bool) -> dict:
    """Print a benchmark's summary: one JSON line (`--json`, what bench.record reads) or key: value lines."""
    if as_json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    return summary


#: bench.trainer's ratios: the headline (the same samples; ours lays shared prefixes out once) and
#: the equal-token one (ours laying every sample out in full, as TRL does).
RATIOS = {"tokens_per_s_ratio": ("ours", "trl"), "equal_tokens_ratio": ("ours_unshared", "trl")}


def interleave_workers(
    workers: Mapping[str, Worker], repeats: int, slow: Mapping[str, float] | None = None,
    ratios: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[dict[str, list[Run]], dict]:
    """(runs per trainer, the `report` of `ratios`, default `tokens_per_s_ratio` of ours / trl): the
    trainers interleaved over `repeats` chunks. `slow`: trainer name -> slowdown factor (tests)."""
    slow = slow or {}

    def arm(name: str) -> Arm:
        def run(chunk: int) -> Run:
            res = workers[name].train(chunk, slow.get(name, 1))
            return Run(res["tokens"], res["seconds"], res)

        return Arm(name, run)

    runs = interleave([arm(name) for name in workers], repeats)
    return runs, report(runs, "tokens", ratios or {"tokens_per_s_ratio": ("ours", "trl")})


def measure(workers: Mapping[str, Worker], repeats: int, slow: Mapping[str, float] | None = None) -> dict:
    """Interleave the two trainers over `repeats` chunks (the workers' `args.repeats` chunks).
    `slow`: trainer name -> slowdown factor (tests)."""
    runs, result = interleave_workers(workers, repeats, slow, {k: v for k, v in RATIOS.items() if set(v) <= set(workers)})
    for name, rs in runs.items():
        result[f"steps_{name}"] = sum(r.detail["steps"] for r in rs)
        result[f"tokens_{name}"] = sum(r.detail["tokens"] for r in rs)
        result[f"processed_tokens_{name}"] = sum(r.detail["processed_tokens"] for r in rs)
        result[f"tokens_per_s_{name}"] = median_of(rs, lambda r: r.rate)
        result[f"loss_{name}"] = median_of(rs, lambda r: r.detail["loss"])
        result[f"losses_{name}"] = [round(r.detail["loss"], 4) for r in rs]
        result[f"peak_rss_mb_{name}"] = round(max(r.detail["rss"] for r in rs), 1)
    result["loss_rel_diff"] = round(abs(result["loss_ours"] - result["loss_trl"]) / result["loss_trl"], 4)
    if "ours_unshared" in runs:  # equal tokens: the two lay out the same sequences (within TRL's truncation)
        result["processed_tokens_rel_diff"] = round(
            abs(result["processed_tokens_ours_unshared"] - result["processed_tokens_trl"]) / result["processed_tokens_trl"], 4)
    # what bench.record requires: the same optimisation (steps) reaching the same loss (within 5%)
    result["checks"] = {"equal_steps": len({result[f"steps_{name}"] for name in runs}) == 1,
                        "loss_within_5pct": result["loss_rel_diff"] <= LOSS_TOLERANCE}  # fmt: skip
    return result


def common_parser(prog: str, doc: str, samples: int) -> argparse.ArgumentParser:
    """The options every interleaved trainer benchmark takes (bench.trainer, bench.distill)."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    ap.add_argument("--model", default=BASE)
    ap.add_argument("--samples", type=int, default=samples)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (each: every trainer on one chunk)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as the trainer service)")
    ap.add_argument("--json", action="store_true", help="print the JSON summary as the last line")
    return ap


def parser() -> argparse.ArgumentParser:
    ap = common_parser("python -m bench.trainer", __doc__, 384)
    ap.add_argument("--row-tokens", type=int, default=1024)
    ap.add_argument("--rows-per-step", type=int, default=2)
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    log(f"{args.samples} samples in {args.repeats} chunks; starting the trainers")
    with running_workers(args) as workers:
        measured = measure(workers, args.repeats)
    threads = {w.threads for w in workers.values()}
    peak, flops = train_peak(args.model)
    efficiency = {"peak": peak, "achieved": {
        name: achieved(measured[f"processed_tokens_{name}"] * flops, measured[f"tokens_{name}"] / measured[f"tokens_per_s_{name}"], peak,
                       "bf16" if bf16() else "fp32")
        for name in workers}}  # fmt: skip
    return emit({"samples": args.samples, "threads": threads.pop() if len(threads) == 1 else sorted(threads), **measured, **efficiency}, args.json)


def train_peak(model: str) -> tuple[dict, float]:
    """(the machine's matmul peak, measured here after the trainers ran; a LoRA training step's
    matmul FLOPs per processed token: the forward and the input gradients through the frozen
    weights, 2 x a forward, the adapters' own small products left out)."""
    from transformers import AutoConfig

    from bench.peak import forward_flops_per_token, measure_peak
    from syllabus.models import resolve_model_dir

    config = AutoConfig.from_pretrained(resolve_model_dir(model))
    return measure_peak(config), 2 * forward_flops_per_token(config)


if __name__ == "__main__":
    main()
