"""The judge scorer: the teacher judges the student's open-ended answers over gRPC.

Uses TeacherService.Critique in CFT mode (Critique Fine-Tuning, TIGER-AI-Lab): the teacher reads
"Question: ... Solution: <student answer>" and writes a critique ending "Conclusion: right/wrong".
An answer is correct when the teacher's conclusion is "right"; a reply that never parses (after the
teacher's per-record retries) counts as wrong with the raw reply as the reason, and an empty answer
is wrong without asking the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

JUDGE_MAX_NEW_TOKENS = 192  # room for a short critique and its conclusion line
JUDGE_RETRIES = 1


def judge_answers(
    address: str, store, judge_model: str, records: Sequence[Mapping[str, str]], answers: Sequence[str], prefix: str,
    token: str = "",
) -> list[tuple[bool, str]]:
    """(correct, reason) per answer, from the teacher at `address` (blocking; call from a worker thread).
    `token`: the service-role bearer token the teacher accepts."""
    import grpc

    from syllabus import auth, pb
    from syllabus.records import dumps_jsonl, loads_jsonl
    from syllabus_sdk.common.v1 import common_pb2
    from syllabus_sdk.teacher.v1 import teacher_pb2, teacher_pb2_grpc

    asked = [(r, a) for r, a in zip(records, answers, strict=True) if a.strip()]
    verdicts: dict[str, tuple[bool, str]] = {}
    if asked:
        examples = store.put_bytes(
            f"{prefix}-answers.jsonl",
            dumps_jsonl({"id": r["id"], "question": r["prompt"], "solution": a} for r, a in asked),
        )
        with grpc.insecure_channel(address) as channel:
            resp = teacher_pb2_grpc.TeacherServiceStub(channel).Critique(
                teacher_pb2.CritiqueRequest(
                    model=common_pb2.ModelRef(base=judge_model),
                    mode=teacher_pb2.CRITIQUE_MODE_CFT,
                    kind=common_pb2.TASK_KIND_OPEN_ENDED,
                    examples=pb.ref_to_pb(examples),
                    sampling=common_pb2.SamplingParams(temperature=0.0, max_new_tokens=JUDGE_MAX_NEW_TOKENS),
                    retries=JUDGE_RETRIES,
                    output_key=f"{prefix}-critique",
                ),
                timeout=600,
                metadata=auth.metadata(token),
            )
        for rec in loads_jsonl(store.get_bytes(pb.ref_from_pb(resp.critiques))):
            if rec.get("status") == "ok":
                verdicts[rec["id"]] = (rec.get("verdict") == "right", rec.get("critique", ""))
            else:
                verdicts[rec["id"]] = (False, f"judge reply did not parse ({rec.get('error', '')}): {rec.get('raw', '')[:200]}")
    return [verdicts.get(r["id"], (False, "empty answer")) for r in records]
