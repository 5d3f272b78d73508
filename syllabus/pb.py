"""Conversions between the library's plain types and the generated protobuf messages."""

from __future__ import annotations

import math

from syllabus import kinds
from syllabus.artifacts import ArtifactRef
from syllabus_sdk.common.v1 import common_pb2


def ref_to_pb(ref: ArtifactRef | None) -> common_pb2.ArtifactRef | None:
    return None if ref is None else common_pb2.ArtifactRef(uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size_bytes)


def ref_from_pb(msg: common_pb2.ArtifactRef) -> ArtifactRef | None:
    """None for an unset/empty message, so optional refs round-trip."""
    if not msg.uri:
        return None
    return ArtifactRef(uri=msg.uri, sha256=msg.sha256, size_bytes=msg.size_bytes)


def first_nonfinite(msg, prefix: str = "") -> str | None:
    """The path ("training.learning_rate", "weights[2]") of the first float/double field of `msg`
    holding inf or NaN, or None. No Syllabus RPC accepts a non-finite number anywhere."""
    from google.protobuf.descriptor import FieldDescriptor

    floats = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
    for field, value in msg.ListFields():
        name = f"{prefix}{field.name}"
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED
        if field.type in floats:
            values = list(value) if repeated else [value]
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    return f"{name}[{i}]" if repeated else name
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                items = [(f"{name}[{k!r}]", v) for k, v in value.items()]
                vfield = field.message_type.fields_by_name["value"]
                if vfield.type in floats:
                    bad = next((p for p, v in items if not math.isfinite(v)), None)
                    if bad:
                        return bad
                    continue
                if vfield.type != FieldDescriptor.TYPE_MESSAGE:
                    continue
                subs = items
            elif repeated:
                subs = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
            else:
                subs = [(name, value)]
            for path, sub in subs:
                if bad := first_nonfinite(sub, path + "."):
                    return bad
    return None


def task_kind(kind: str) -> int:
    """A task spec's `kind` as the TaskKind every request carries."""
    return common_pb2.TaskKind.Value(f"TASK_KIND_{kinds.get(kind).name.upper()}")


def kind_from_pb(value: int) -> kinds.TaskKind | None:
    """The task kind a request carries; None for TASK_KIND_UNSPECIFIED or a value no kind has."""
    name = common_pb2.TaskKind.Name(value).removeprefix("TASK_KIND_").lower() if value in common_pb2.TaskKind.values() else ""
    return kinds.KINDS.get(name)


def answer_match(match: str) -> int:
    """A kind's `eval_match` (label, exact, numeric) as the student's AnswerMatch."""
    from syllabus_sdk.student.v1 import student_pb2

    return {"label": student_pb2.ANSWER_MATCH_LABEL, "numeric": student_pb2.ANSWER_MATCH_NUMERIC}.get(match, student_pb2.ANSWER_MATCH_EXACT)
