"""Two-stage Chain-of-LoRA curriculum on the Banking77 example: eval accuracy before and after.

    python -m trainer_svc.curriculum_demo                       # recipes/chain_of_lora_2stage.yaml
    python -m trainer_svc.curriculum_demo --recipe recipes/shuffled_baseline.yaml --epochs 3

Trains the bundled model on the example's seeds (train split, examples/banking77/data/seeds.jsonl),
never on its eval split. The "difficulty" score of a seed is its response loss under the base
model, rank-normalised to [0, 1): stage "easy" gets the lower half, stage "hard" the upper half
(plus replay). Evaluation is label likelihood on data/eval.jsonl (student_svc.evaluation).
Prints each stage's loss curve, then accuracy before/after; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "banking77"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "chain_of_lora_2stage.yaml")
    ap.add_argument("--epochs", type=float, default=4.0, help="epochs per stage (overrides the recipe)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak LR per stage (overrides the recipe)")
    args = ap.parse_args()

    from student_svc.evaluation import evaluate_classification
    from syllabus.models import load_model
    from syllabus.prompts import classification_prompt
    from trainer_svc.packing import CompletionLM, build_batch, per_sample_sums, token_logprobs
    from trainer_svc.recipe import Recipe
    from trainer_svc.staged import encode_records, train_recipe

    task = yaml.safe_load((EXAMPLE / "task.yaml").read_text())
    labels = task["labels"]

    def read(name: str) -> list[dict]:
        rows = [json.loads(x) for x in (EXAMPLE / "data" / name).read_text().splitlines() if x.strip()]
        return [
            {"id": str(i), "prompt": classification_prompt(task["instructions"], labels, r["input"]), "response": r["label"],
             "label": r["label"], "category": r["label"]}
            for i, r in enumerate(rows)
        ]  # fmt: skip

    seeds, evals = read("seeds.jsonl"), read("eval.jsonl")
    lm, tok = load_model("bundled:smollm2-135m-instruct")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    _, before = evaluate_classification(lm, tok, evals, labels)
    print(f"base model: eval accuracy {before.correct}/{before.total}", file=sys.stderr)

    # difficulty = base-model response loss, rank-normalised
    enc = encode_records(tok, seeds, "sft", 512, range(len(seeds)), {})
    seqs = [enc[i][0] for i in range(len(seeds))]
    with torch.no_grad():
        lp, of, _ = token_logprobs(CompletionLM(lm), build_batch([[j] for j in range(len(seqs))], seqs, tok.pad_token_id))
        sums, counts = per_sample_sums(-lp, of, len(seqs))
    losses = (sums / counts).tolist()
    order = sorted(range(len(seeds)), key=lambda i: losses[i])
    for rank, i in enumerate(order):
        seeds[i]["difficulty"] = rank / len(seeds)

    raw = yaml.safe_load(args.recipe.read_text())
    for st in raw["stages"]:
        st["epochs"], st["lr"] = args.epochs, args.lr
        st.pop("steps", None)
    raw["checkpoint_every"] = 0
    recipe = Recipe.model_validate(raw)
    model, snaps, result = train_recipe(
        lm, tok, seeds, recipe, on_step=lambda p: print(f"{p.stage_name} {p.step}/{p.total_steps} loss {p.loss:.4f}", file=sys.stderr)
    )
    _, after = evaluate_classification(model, tok, evals, labels)
    for i, curve in enumerate(result.stage_losses):
        print(f"stage {recipe.stage_name(i)} loss curve: " + " ".join(f"{x:.3f}" for x in curve))
    print(f"eval accuracy: base {before.correct}/{before.total} -> after {after.correct}/{after.total}")
    print(json.dumps({
        "recipe": recipe.name, "accuracy_base": before.correct / before.total, "accuracy_after": after.correct / after.total,
        "stage_losses": {recipe.stage_name(i): c for i, c in enumerate(result.stage_losses)}, "merged_stages": len(snaps),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
