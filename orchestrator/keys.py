"""Deterministic artifact keys: the same step on the same inputs and parameters always writes to the
same key, so a retried activity finds its earlier output instead of recomputing it; and the ids of
a job's child workflows, which no job id may take."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from syllabus.artifacts import ArtifactRef
from syllabus.records import stable_hash

# A job's child workflows run under ids derived from its own; a job id shaped like one is refused at
# submission, so no tenant can submit `<victim>-tailor-1` and see, cancel or pre-empt a victim's child.
CHILD_ID_SUFFIX = re.compile(r"-(?:tailor-\d+|baseline-[a-z_]+-\d+)$")


def tailor_workflow_id(job_id: str, round: int) -> str:
    return f"{job_id}-tailor-{round}"


def baseline_workflow_id(job_id: str, arm: str, round: int) -> str:
    return f"{job_id}-baseline-{arm}-{round}"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def output_key(
    job_id: str,
    round: int,
    step: str,
    inputs: Sequence[ArtifactRef | None],
    params: Mapping[str, object],
    ext: str = "",
) -> str:
    """`jobs/<job_id>/round-<r>/<step>-<hash of the inputs' sha256 and params>[.<ext>]`."""
    digest = stable_hash(
        {"inputs": [r.sha256 if r is not None else None for r in inputs], "params": dict(params)}
    )
    return f"{job_prefix(job_id)}/round-{round}/{step}-{digest}" + (f".{ext}" if ext else "")
