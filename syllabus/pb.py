"""Conversions between the library's plain types and the generated protobuf messages."""

from __future__ import annotations

from syllabus.artifacts import ArtifactRef
from syllabus_sdk.common.v1 import common_pb2


def ref_to_pb(ref: ArtifactRef | None) -> common_pb2.ArtifactRef | None:
    return None if ref is None else common_pb2.ArtifactRef(uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size_bytes)


def ref_from_pb(msg: common_pb2.ArtifactRef) -> ArtifactRef | None:
    """None for an unset/empty message, so optional refs round-trip."""
    if not msg.uri:
        return None
    return ArtifactRef(uri=msg.uri, sha256=msg.sha256, size_bytes=msg.size_bytes)
