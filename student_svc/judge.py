"""The judge scorer: the teacher judges the student's open-ended answers over gRPC.

TeacherService.Critique (judge mode) is the judge that exists today; it keeps or drops examples
with a reason. The minimal contract used here: each answer is sent as an example
`{"id", "input": answer, "label": "answer"}` with the label set `["answer", "no_answer"]`, and the
eval items' questions as seeds, so an empty/degenerate answer, or one that merely copies its
question, is dropped. Kept = correct. When the teacher grows a rubric judge for open-ended tasks,
only this module changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

JUDGE_LABELS = ("answer", "no_answer")


def judge_answers(
    address: str, store, judge_model: str, records: Sequence[Mapping[str, str]], answers: Sequence[str], prefix: str
) -> list[tuple[bool, str]]:
    """(keep, reason) per answer, from the teacher at `address` (blocking; call from a worker thread)."""
    import grpc

    from syllabus import pb
    from syllabus.records import dumps_jsonl, loads_jsonl
    from syllabus_sdk.common.v1 import common_pb2
    from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc

    examples = store.put_bytes(
        f"{prefix}-answers.jsonl",
        dumps_jsonl({"id": r["id"], "input": a, "label": JUDGE_LABELS[0]} for r, a in zip(records, answers, strict=True)),
    )
    seeds = store.put_bytes(
        f"{prefix}-questions.jsonl", dumps_jsonl({"id": r["id"], "input": r["prompt"], "label": JUDGE_LABELS[0]} for r in records)
    )
    with grpc.insecure_channel(address) as channel:
        resp = teacher_pb2_grpc.TeacherServiceStub(channel).Critique(
            teacher_pb2.CritiqueRequest(
                model=common_pb2.ModelRef(base=judge_model),
                mode=teacher_pb2.CRITIQUE_MODE_JUDGE,
                kind=common_pb2.TASK_KIND_CLASSIFICATION,
                labels=list(JUDGE_LABELS),
                examples=pb.ref_to_pb(examples),
                seeds=pb.ref_to_pb(seeds),
                output_key=f"{prefix}-critique",
            ),
            timeout=600,
        )
    verdicts = {v["id"]: (bool(v["keep"]), str(v["reason"])) for v in loads_jsonl(store.get_bytes(pb.ref_from_pb(resp.critiques)))}
    return [verdicts.get(r["id"], (False, "no verdict")) for r in records]
