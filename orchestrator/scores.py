"""The round's score table (pure logic; the step is `StudentActivities.score_samples`).

Every candidate carries a `category` — its generation method: seed, expand, targeted, rationales,
rft, cft (critique records), rubric_revision, reflection — which CAR uses as its "teacher", SEC as
its arm, and a recipe stage's `data.categories` filters on. Each score column gets its percentile
rank "<column>_pct" in [0, 1) within the round (so a recipe's score band reads "the easier half"
whatever the metric's scale), and `difficulty` adds the curriculum columns the trainer reads:
`irt_b` (PUDF), `success_rate` and `difficulty100` = 100 * (1 - success rate) (AdaRFT).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from syllabus.artifacts import ArtifactRef
from syllabus.tasks import TaskSpec
from syllabus_sdk.student.v1 import student_pb2

STUDENT_METRICS = {
    "ifd": student_pb2.METRIC_IFD,
    "rifd": student_pb2.METRIC_RIFD,
    "preference": student_pb2.METRIC_ARTE_PREFERENCE,
    "compatibility": student_pb2.METRIC_CAR,  # the base student's loss (and the service's CAR by "teacher")
}
# Teacher provenance methods -> candidate categories.
CATEGORY_OF_METHOD = {"seed_expansion": "expand", "targeted": "targeted", "rationales": "rationales",
                      "rejection_sampling": "rft"}  # fmt: skip
HELDOUT_PREFIX = "heldout:"  # ids of held-out validation records (PUDF's ability probe)
# Columns that are not scores (no percentile rank).
NOT_SCORES = frozenset({"id", "question_id", "crowd_correct"})


def category(record: dict) -> str:
    if "category" in record:
        return record["category"]
    method = (record.get("provenance") or {}).get("method", "")
    return CATEGORY_OF_METHOD.get(method, method or "expand")


def scoring_records(candidates: Sequence[dict], seeds: Sequence[dict]) -> list[dict]:
    """The records the round scores: every candidate, then the seeds it does not hold, each with its
    category."""
    out = [{**r, "category": category(r)} for r in candidates]
    have = {r["id"] for r in out}
    out += [{**s, "category": "seed"} for s in seeds if s["id"] not in have]
    return out


def heldout_records(task: TaskSpec, validation: Sequence[dict]) -> list[dict]:
    """The validation items as held-out training records (`"heldout": true`: never trained on; PUDF
    estimates the student's ability on them), ids prefixed so they never collide with a seed's."""
    return [
        {"id": HELDOUT_PREFIX + r["id"], "input": r["input"], "label": r["label"], "prompt": task.prompt_for(r["input"]),
         "response": r["label"], "category": "heldout", "heldout": True}
        for r in validation
    ]  # fmt: skip


def crowd_rows(predictions: Sequence[Sequence[dict]]) -> list[dict]:
    """`{"item_id", "subject", "correct"}` per crowd member (subject "m<i>", in the order given)
    and graded prediction ("id", "correct"): the right/wrong matrix ARTE's 2PL probe selection reads
    (StudentService ArteSettings.probe_responses)."""
    return [
        {"item_id": str(p["id"]), "subject": f"m{i}", "correct": bool(p.get("correct"))}
        for i, member in enumerate(predictions)
        for p in member
    ]


AGREEMENT_STAGE = "agreement"
"""The evaluations row stage of agreement's judge answering the round's records."""


def agreement_margin(prediction: dict) -> float | None:
    """Label agreement of one record under the judge: log p(intended label | input) minus the largest
    log p(other label | input), from Evaluate's `label_logprobs`. Positive: the judge predicts the
    intended label; very negative: it confidently reads another label (a likely mislabelled
    generation). None when the judge scored no other label or not the intended one.

    The label-likelihood filter of generated data (SuperGen, Meng et al. 2022, arXiv 2202.04538: keep
    the generations whose label the model finds most likely; Confident Learning, Northcutt et al.
    2021, arXiv 1911.00068: drop examples a model trained on clean data assigns to another class),
    with the judge trained on the seeds: docs/methods.md, "Label agreement"."""
    lps = prediction.get("label_logprobs") or {}
    own = lps.get(prediction.get("label"))
    others = [v for k, v in lps.items() if k != prediction.get("label")]
    if own is None or not others:
        return None
    return float(own) - max(float(v) for v in others)


def crowd_stage(adapter: ArtifactRef | None) -> str:
    """The evaluations row stage of one crowd member's answers on the validation split: one per
    member (a job's evaluations are unique by round and stage), the base student's "arte-crowd"."""
    return "arte-crowd" if adapter is None else f"arte-crowd-{adapter.sha256[:12]}"


def compatibility(loss: object, beta: float) -> float | None:
    """A record's compatibility with the base student, 1 / (1 + beta * L): CAR's denominator
    (arXiv 2411.07133) without a reward - CAR itself is per generation method (orchestrator.budget)."""
    if not isinstance(loss, int | float) or not math.isfinite(loss):
        return None
    return 1.0 / (1.0 + beta * loss)


def difficulty_columns(row: dict, members: int) -> dict:
    """IRT difficulty b (PUDF's `irt_b`) and the crowd's success rate as AdaRFT's difficulty 0..100."""
    rate = row["crowd_correct"] / members if members else 0.0
    return {"id": row["id"], "irt_difficulty": row["irt_difficulty"], "irt_b": row["irt_difficulty"],
            "crowd_correct": row["crowd_correct"], "success_rate": rate, "difficulty100": 100.0 * (1.0 - rate)}  # fmt: skip


def reward_gap(row: dict, measure: str) -> float | None:
    """Diversify and Conquer's per-record reward gap (gold answer's reward minus the student's), as
    `select.reweight` measures it: success_gap = 1 - success_rate (exact-match reward: the gold scores
    1, the student's checkpoints their share of right answers), loss_base = the current student's loss
    on the gold answer. None where the row lacks the score."""
    if measure == "success_gap":
        v = row.get("success_rate")
        return 1.0 - v if _finite(v) else None
    if measure == "loss_base":
        v = row.get("loss_base")
        return float(v) if _finite(v) else None
    raise ValueError(f"unknown reward gap {measure!r}")


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def add_percentiles(rows: list[dict]) -> list[dict]:
    """Each numeric column c gets "c_pct": the share of rows with a smaller value (ties share the
    lowest rank; a missing or non-finite value ranks lowest). In [0, 1)."""
    columns = sorted({c for r in rows for c, v in r.items() if c not in NOT_SCORES and _finite(v) and not c.endswith("_pct")})
    for c in columns:
        values = sorted(r[c] for r in rows if _finite(r.get(c)))
        n = len(rows)
        for r in rows:
            v = r.get(c)
            r[c + "_pct"] = (bisect.bisect_left(values, v) / n) if _finite(v) else 0.0
    return rows



def weighted_mix(rows: Sequence[dict], weights: dict[str, float], columns: dict[str, str]) -> dict[str, float]:
    """sum over metrics of w * z-score(metric column) per row id (a missing value counts as the mean)."""
    mix = {r["id"]: 0.0 for r in rows}
    for metric, w in weights.items():
        col = columns[metric]
        xs = [r[col] for r in rows if _finite(r.get(col))]
        if len(xs) < 2:
            continue
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) or 1.0
        for r in rows:
            if _finite(r.get(col)):
                mix[r["id"]] += w * (r[col] - mean) / sd
    return mix


def reflection_versions(task: TaskSpec, record: dict) -> dict:
    """The four versions of a reflected classification example, as the reflection rule reads them:
    ori (original input, original label), Q* (reflected input, original label), A* (original input,
    reflected label), QA* (reflected input and label)."""
    ori = record["reflection"]
    return {
        "id": record["id"],
        "prompt": task.prompt_for(ori["input"]),
        "response": ori["label"],
        "prompt_q": task.prompt_for(record["input"]),
        "response_q": ori["label"],
        "response_a": record["label"],
        "response_qa": record["label"],
    }
