"""ARTE tailoring end to end on the bundled model, small sizes (a few minutes on a CPU).

    .venv/bin/python -m teacher_svc.arte_demo                 # prints progress, then a JSON report
    .venv/bin/python -m teacher_svc.arte_demo --labels 3 --questions-per-label 2 --dpref 4

Steps: the teacher drafts Banking77 messages (seed expansion) and rationales in two styles; the student
scores each rationale by one-shot ICL accuracy on a preference set (Dpref, drawn from the seeds not
held back from the teacher; the eval split is never used); `teacher_svc.tailor.build_pairs` makes question- and
rationale-level pairs; DPO trains a LoRA on the teacher; the aligned teacher regenerates the rationales
greedily; the student scores them again. The report has the pair counts and the mean preference score
of the unaligned and the aligned teacher's greedy rationales for the same questions.

Stand-ins, clearly labelled: until the student service exposes ICL preference scoring and the trainer
service exposes the DPO objective over gRPC, the scores come from `LocalICLScorer` below and DPO runs
through the trainer's Python entry point `trainer_svc.staged.run_recipe` (the same code the service
will run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from syllabus.models import DEFAULT_MODEL, load_model, unpack_adapter
from syllabus.prompts import classification_prompt
from syllabus.records import loads_jsonl
from teacher_svc.backend import Sampling, TransformersBackend
from teacher_svc.generation import ExpansionRequest, build_prompts, expand_seeds, parse_seeds
from teacher_svc.reasoning import Question, parse_rationale, write_rationales
from teacher_svc.retry import generate_parsed
from teacher_svc.tailor import NEUTRAL_STOP, Draft, build_pairs, neutral_rationale_prompt

DATA = Path(__file__).resolve().parents[1] / "examples" / "banking77" / "data"
INSTRUCTIONS = "Classify the bank customer's message into one of the intents. Answer with the intent only."


def log(msg: str) -> None:
    print(f"[arte {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class LocalICLScorer:
    """STAND-IN for the student service's ARTE ICL preference scoring: one-shot accuracy on Dpref.

    The student sees the demo (question -> rationale, answer) as an earlier chat turn, then a Dpref
    question; its prediction is the label whose first token is most likely (labels here have distinct
    first tokens, checked), one forward pass per (demo, Dpref item), batched with left padding."""

    def __init__(self, base: str, instructions: str, labels: Sequence[str], dpref: Sequence[dict]) -> None:
        import torch

        self.torch = torch
        self.model, self.tok = load_model(base)
        self.instructions, self.labels, self.dpref = instructions, list(labels), list(dpref)
        firsts = [self.tok(lab, add_special_tokens=False)["input_ids"][0] for lab in self.labels]
        if len(set(firsts)) != len(firsts):
            raise ValueError("labels share a first token; the first-token scorer cannot separate them")
        self.first_ids = torch.tensor(firsts)

    def _text(self, demo: tuple[str, str, str], item: dict) -> str:
        q, rationale, answer = demo
        messages = [
            {"role": "user", "content": classification_prompt(self.instructions, self.labels, q)},
            {"role": "assistant", "content": f"{rationale.strip()}\nAnswer: {answer}"},
            {"role": "user", "content": classification_prompt(self.instructions, self.labels, item["input"])},
        ]
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def scores(self, demos: Sequence[tuple[str, str, str]], batch_size: int = 8) -> list[float]:
        torch = self.torch
        texts = [(i, self._text(d, item), item["label"]) for i, d in enumerate(demos) for item in self.dpref]
        correct = [0] * len(demos)
        self.tok.padding_side = "left"
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            enc = self.tok([t for _, t, _ in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                logits = self.model(**enc).logits[:, -1, :]
            picks = logits[:, self.first_ids].argmax(-1).tolist()
            for (i, _, gold), p in zip(chunk, picks, strict=True):
                correct[i] += self.labels[p] == gold
        return [c / len(self.dpref) for c in correct]


def aligned_backend(base: str, adapter_tar: bytes, workdir: Path) -> TransformersBackend:
    """The teacher with the DPO LoRA applied."""
    import hashlib

    from peft import PeftModel

    model, tok = load_model(base)
    adapter_dir = unpack_adapter(adapter_tar, workdir / "adapter")
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    plain = TransformersBackend.load(base)
    revision = plain.revision + "+" + hashlib.sha256(adapter_tar).hexdigest()[:8]
    return TransformersBackend(base, model, tok, revision)


def greedy_rationales(backend, questions: Sequence[Question], max_new_tokens: int) -> list[str]:
    prompts = [neutral_rationale_prompt(INSTRUCTIONS, q.text) for q in questions]
    outs = generate_parsed(backend, prompts, parse_rationale, Sampling(temperature=0.0, max_new_tokens=max_new_tokens),
                           batch_size=16, stop=NEUTRAL_STOP, retries=0)
    return [o.value.text if o.ok else o.raw.strip() for o in outs]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m teacher_svc.arte_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="teacher and student base")
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--questions-per-label", type=int, default=3)
    parser.add_argument("--dpref", type=int, default=4, help="preference-set size (from seeds not used as drafts)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--dpo-epochs", type=float, default=3.0)
    parser.add_argument("--dpo-lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from syllabus.artifacts import LocalArtifactStore
    from trainer_svc.recipe import LoraConfig, Recipe, Stage
    from trainer_svc.staged import run_recipe

    torch.set_num_threads(args.threads)
    seeds_all = parse_seeds(loads_jsonl((DATA / "seeds.jsonl").read_bytes()))
    labels = list(dict.fromkeys(s.label for s in seeds_all))[: args.labels]
    seeds = [s for s in seeds_all if s.label in labels]
    # Dpref: one seed per label in turn, never shown to the teacher.
    per_label = [[x for x in seeds if x.label == lab] for lab in labels]
    dpref_seeds = [own[-1 - i] for i in range(4) for own in per_label if len(own) > i + 1][: args.dpref]
    shown = [s for s in seeds if s not in dpref_seeds]
    dpref = [{"input": s.input, "label": s.label} for s in dpref_seeds]

    log(f"loading teacher {args.model}; labels {labels}; Dpref {len(dpref)}")
    teacher = TransformersBackend.load(args.model)
    sampling = Sampling(temperature=0.9, top_p=0.95, max_new_tokens=32, n=1, seed=0)
    req = ExpansionRequest(INSTRUCTIONS, labels, shown, args.questions_per_label, sampling, batch_size=16)
    expansion = expand_seeds(teacher, req)
    gen_prompts = {p.chat.user: p for p in build_prompts(INSTRUCTIONS, labels, shown, args.questions_per_label)}
    questions = [Question(r["id"], r["input"], r["label"]) for r in expansion.records]
    log(f"drafted {len(questions)} questions")

    styles = ["step_by_step", "eli5"]
    rationales = write_rationales(
        teacher, INSTRUCTIONS, questions, styles,
        replace(sampling, temperature=0.7, max_new_tokens=args.max_new_tokens), batch_size=16, retries=0,
    )  # fmt: skip
    by_q: dict[str, list[str]] = {}
    for rec in rationales.records:
        by_q.setdefault(rec["question_id"], []).append(rec.get("rationale") or rec.get("raw", "").strip())
    log(f"wrote {len(rationales.records)} rationales ({rationales.failed} without an Answer line, kept as drafts)")

    scorer = LocalICLScorer(args.model, INSTRUCTIONS, labels, dpref)
    demos = [(q.text, r, q.answer) for q in questions for r in by_q[q.id]]
    flat = scorer.scores(demos)
    log(f"scored {len(demos)} drafts on Dpref")
    # The question's generation prompt and the teacher's reply that produced it (prefill + message + quote).
    prompt_of = {}
    for rec in expansion.records:
        parent = next(p for p in gen_prompts.values() if p.label == rec["label"] and p.parent_id == rec["parent_id"])
        prompt_of[rec["id"]] = parent.chat
    drafts, k = [], 0
    for q in questions:
        n = len(by_q[q.id])
        chat = prompt_of[q.id]
        drafts.append(Draft(q, chat.user, f'{chat.prefill}{q.text}"', by_q[q.id], flat[k : k + n]))
        k += n
    pairs = build_pairs(drafts, INSTRUCTIONS)
    log(f"pairs: {pairs.question_level} question-level, {pairs.rationale_level} rationale-level")

    before_texts = greedy_rationales(teacher, questions, args.max_new_tokens)
    before = scorer.scores([(q.text, r, q.answer) for q, r in zip(questions, before_texts, strict=True)])
    report = {
        "model": args.model,
        "labels": labels,
        "questions": len(questions),
        "rationales": len(demos),
        "dpref": len(dpref),
        "pairs_question_level": pairs.question_level,
        "pairs_rationale_level": pairs.rationale_level,
        "draft_preference_mean": round(sum(flat) / len(flat), 4) if flat else None,
        "preference_before": round(sum(before) / len(before), 4) if before else None,
    }
    if not pairs.records:
        report["note"] = "no pairs: every draft scored the same, nothing to align"
        print(json.dumps(report))
        return report

    # STAND-IN for TrainerService.StartTraining with the DPO objective: the trainer's own entry point.
    log(f"DPO on the teacher: {len(pairs.records)} pairs, {args.dpo_epochs} epochs, lr {args.dpo_lr}")
    recipe = Recipe(
        name="arte-dpo", packing=False, batch_size=4, bf16=False, max_seq_len=384, row_tokens=384,
        stages=(Stage(objective="dpo", epochs=args.dpo_epochs, lr=args.dpo_lr, lora=LoraConfig(rank=8, alpha=16)),),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalArtifactStore(Path(tmp) / "artifacts")
        ref, result = run_recipe(args.model, pairs.records, recipe, store, "arte/teacher-dpo.tar")
        aligned = aligned_backend(args.model, store.get_bytes(ref), Path(tmp))
    after_texts = greedy_rationales(aligned, questions, args.max_new_tokens)
    after = scorer.scores([(q.text, r, q.answer) for q, r in zip(questions, after_texts, strict=True)])
    losses = result.losses
    report |= {
        "dpo_steps": len(losses),
        "dpo_loss_first": round(losses[0], 4) if losses else None,
        "dpo_loss_last": round(losses[-1], 4) if losses else None,
        "preference_after": round(sum(after) / len(after), 4),
        "rationales_changed": sum(a != b for a, b in zip(before_texts, after_texts, strict=True)),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
