"""ARTE tailoring end to end on the bundled model, small sizes (a few minutes on a CPU).

    .venv/bin/python -m teacher_svc.arte_demo                 # prints progress, then a JSON report
    .venv/bin/python -m teacher_svc.arte_demo --labels 3 --questions-per-label 2 --dpref 4

Steps: the teacher drafts Banking77 messages (seed expansion) and rationales in two styles; the
student scores each rationale with its real ARTE preference function (`student_svc.arte.arte_preference`:
greedy one-shot answers on a preference set Dpref drawn from the seeds not shown to the teacher, checked
with the LABEL match; the eval split is never used); then the TeacherService Tailor RPC (in-process
server) builds question- and rationale-level pairs, trains a LoRA on the teacher with DPO through a
TrainerService (in-process server, OBJECTIVE_DPO over gRPC) and regenerates the rationales greedily
with the aligned teacher (ModelRef.adapter); the student scores them again. The report has the pair
counts and the mean preference score of the unaligned and the aligned teacher's greedy rationales for
the same questions.

Demonstrations are answer-first ("<label>\n<rationale>"): the student copies the demo's format, so
its free greedy answer starts with the label and the LABEL match can check it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from syllabus.models import DEFAULT_MODEL, load_model
from syllabus.prompts import classification_prompt
from syllabus.records import loads_jsonl
from teacher_svc.backend import Sampling, TransformersBackend
from teacher_svc.generation import ExpansionRequest, build_prompts, expand_seeds, parse_seeds
from teacher_svc.reasoning import Question, parse_rationale, write_rationales
from teacher_svc.retry import generate_parsed
from teacher_svc.tailor import NEUTRAL_STOP, build_pairs, drafts_from_records, neutral_rationale_prompt

DATA = Path(__file__).resolve().parents[1] / "examples" / "banking77" / "data"
INSTRUCTIONS = "Classify the bank customer's message into one of the intents. Answer with the intent only."


def log(msg: str) -> None:
    print(f"[arte {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class StudentArteScorer:
    """The student's ARTE preference (`student_svc.arte.arte_preference`, what StudentService.Score
    runs for METRIC_ARTE_PREFERENCE): s_r per demo = greedy one-shot accuracy on Dpref."""

    def __init__(
        self, base: str, instructions: str, labels: Sequence[str], dpref: Sequence[dict], dtype: str = "auto"
    ) -> None:
        self.model, self.tok = load_model(base)
        self.dtype = dtype
        self.instructions, self.labels = instructions, list(labels)
        self.probes = [
            {
                "id": f"p{i}",
                "prompt": classification_prompt(instructions, self.labels, d["input"]),
                "answer": d["label"],
            }
            for i, d in enumerate(dpref)
        ]

    def scores(self, demos: Sequence[tuple[str, str, str]]) -> list[float]:
        from student_svc.arte import arte_preference
        from student_svc.evaluation import LABEL

        records = [
            {"id": str(i), "question_id": str(i),
             "prompt": classification_prompt(self.instructions, self.labels, q),
             "response": f"{answer}\n{rationale.strip()}"}
            for i, (q, rationale, answer) in enumerate(demos)
        ]  # fmt: skip
        rows = arte_preference(
            self.model, self.tok, records, self.probes, match=LABEL, max_new_tokens=8, dtype=self.dtype
        )
        return [row["arte_s_r"] for row in rows]


async def tailor_over_grpc(
    model: str, instructions: str, drafts: list[dict], scores: list[dict], args: argparse.Namespace, home: Path
):
    """TeacherService.Tailor on in-process teacher and trainer servers sharing one artifact store."""
    from syllabus import auth
    from syllabus.artifacts import LocalArtifactStore
    from syllabus.config import Config
    from syllabus.pb import ref_to_pb
    from syllabus.records import dumps_jsonl
    from syllabus_sdk.common.v1 import common_pb2
    from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc
    from syllabus_sdk.trainer.v1 import trainer_pb2
    from teacher_svc.server import create_server as create_teacher
    from teacher_svc.service import TeacherServicer
    from teacher_svc.tailor import GrpcDpoTrainer
    from trainer_svc.server import create_server as create_trainer
    from trainer_svc.server import jobs_for

    token = secrets.token_urlsafe(32)  # the demo's own service-role token (teacher -> trainer, demo -> teacher)
    config = Config(home=home, artifact_url=(home / "artifacts").as_uri(), service_token=token)
    store = LocalArtifactStore(home / "artifacts")
    jobs = jobs_for(config)
    trainer = await create_trainer(config, jobs=jobs)
    await trainer.set_serving(True)
    servicer = TeacherServicer(
        store, adapter_cache=home / "adapters", trainer=GrpcDpoTrainer(f"127.0.0.1:{trainer.port}", token)
    )
    teacher = await create_teacher(config, servicer=servicer)
    await teacher.set_serving(True)
    try:
        async with auth.channel(f"127.0.0.1:{teacher.port}", token) as channel:
            resp = await teacher_pb2_grpc.TeacherServiceStub(channel).Tailor(
                teacher_pb2.TailorRequest(
                    model=common_pb2.ModelRef(base=model), instructions=instructions,
                    drafts=ref_to_pb(store.put_bytes("arte/drafts.jsonl", dumps_jsonl(drafts))),
                    scores=ref_to_pb(store.put_bytes("arte/scores.jsonl", dumps_jsonl(scores))),
                    lora=trainer_pb2.LoraSpec(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]),
                    training=trainer_pb2.TrainingSpec(epochs=args.dpo_epochs, learning_rate=args.dpo_lr, batch_size=4,
                                                      seed=0, max_seq_len=384),
                    dpo_beta=0.1, sampling=common_pb2.SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens),
                    output_key="arte/tailor",
                ),
                timeout=1800,
            )  # fmt: skip
        from syllabus.pb import ref_from_pb
        from syllabus.records import loads_jsonl as _loads

        regenerated = _loads(store.get_bytes(ref_from_pb(resp.regenerated)))
        return resp, regenerated
    finally:
        await teacher.stop(0)
        await trainer.stop(0)
        await jobs.close()


def greedy_rationales(backend, questions: Sequence[Question], max_new_tokens: int) -> list[str]:
    prompts = [neutral_rationale_prompt(INSTRUCTIONS, q.text) for q in questions]
    outs = generate_parsed(
        backend,
        prompts,
        parse_rationale,
        Sampling(temperature=0.0, max_new_tokens=max_new_tokens),
        batch_size=16,
        stop=NEUTRAL_STOP,
        retries=0,
    )
    return [o.value.text if o.ok else o.raw.strip() for o in outs]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m teacher_svc.arte_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="teacher and student base")
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--questions-per-label", type=int, default=3)
    parser.add_argument("--dpref", type=int, default=4, help="preference-set size (from seeds not used as drafts)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--dpo-epochs", type=int, default=3)
    parser.add_argument("--dpo-lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--student-dtype", default="auto", choices=("auto", "float32", "bfloat16"),
        help="the student's scoring precision (its Score default 'auto': bf16 where the CPU/GPU runs it natively)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    import torch

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

    scorer = StudentArteScorer(args.model, INSTRUCTIONS, labels, dpref, args.student_dtype)
    demos = [(q.text, r, q.answer) for q in questions for r in by_q[q.id]]
    flat = scorer.scores(demos)
    log(f"student scored {len(demos)} draft rationales on Dpref (student_svc.arte.arte_preference)")
    # The question's generation prompt and the teacher's reply that produced it (prefill + message + quote).
    prompt_of = {}
    for rec in expansion.records:
        parent = next(p for p in gen_prompts.values() if p.label == rec["label"] and p.parent_id == rec["parent_id"])
        prompt_of[rec["id"]] = parent.chat
    drafts, scores, k = [], [], 0
    for q in questions:
        chat = prompt_of[q.id]
        for j, r in enumerate(by_q[q.id]):
            rid = f"{q.id}-{j}"
            drafts.append({"id": rid, "question_id": q.id, "question": q.text, "rationale": r, "answer": q.answer,
                           "prompt": chat.user, "completion": f'{chat.prefill}{q.text}"'})  # fmt: skip
            scores.append({"id": rid, "question_id": q.id, "arte_s_r": flat[k]})
            k += 1
    pairs = build_pairs(drafts_from_records(drafts, scores), INSTRUCTIONS)
    log(f"pairs: {pairs.question_level} question-level, {pairs.rationale_level} rationale-level")

    before_texts = greedy_rationales(teacher, questions, args.max_new_tokens)
    before = scorer.scores([(q.text, r, q.answer) for q, r in zip(questions, before_texts, strict=True)])
    report = {
        "model": args.model,
        "labels": labels,
        "questions": len(questions),
        "rationales": len(demos),
        "dpref": len(dpref),
        "scorer": "student_svc.arte.arte_preference (match=label)",
        "pairs_question_level": pairs.question_level,
        "pairs_rationale_level": pairs.rationale_level,
        "draft_preference_mean": round(sum(flat) / len(flat), 4) if flat else None,
        "preference_before": round(sum(before) / len(before), 4) if before else None,
    }
    if not pairs.records:
        report["note"] = "no pairs: every draft scored the same, nothing to align"
        print(json.dumps(report))
        return report

    log(f"Tailor RPC: DPO on the teacher via TrainerService ({len(pairs.records)} pairs, {args.dpo_epochs} epochs)")
    with tempfile.TemporaryDirectory() as tmp:
        resp, regenerated = asyncio.run(tailor_over_grpc(args.model, INSTRUCTIONS, drafts, scores, args, Path(tmp)))
    after_texts = [r["rationale"] for r in regenerated]
    after = scorer.scores([(q.text, r, q.answer) for q, r in zip(questions, after_texts, strict=True)])
    report |= {
        "tailor_question_pairs": resp.question_pairs,
        "tailor_rationale_pairs": resp.rationale_pairs,
        "dpo_steps": resp.dpo_steps,
        "dpo_mean_loss": round(resp.dpo_mean_loss, 4),
        "adapter_sha256": resp.aligned_model.adapter.sha256[:12],
        "preference_after": round(sum(after) / len(after), 4),
        "rationales_changed": sum(a != b for a, b in zip(before_texts, after_texts, strict=True)),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
