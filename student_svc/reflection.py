"""Selective Reflection-Tuning's student-side selection rule (Li et al. 2024, tianyi-lab/Reflection_Tuning).

Each sample comes in four versions, as record fields:

- ori: `prompt`, `response`                     (the original pair)
- Q*:  `prompt_q`, `response_q`                 (teacher-reflected instruction, with its answer)
- A*:  `prompt`, `response_a`                   (teacher-reflected answer to the original instruction)
- QA*: `prompt_q`, `response_qa`                (reflected answer to the reflected instruction)

The student computes IFD and r-IFD of every version (`student_svc.scoring`) and applies the rule
of the reference code:

    if IFD(Q*) > IFD(ori):            # the reflected instruction is harder -> accept it
        keep QA* if rIFD(QA*) < rIFD(Q*) and rIFD(QA*) < 1 and IFD(QA*) < 1, else Q*
    else:
        keep A*  if rIFD(A*) < rIFD(ori) and rIFD(A*) < 1 and IFD(A*) < 1,  else ori

(The fallbacks Q* / ori are our reading of "accept the reflected instruction" when its reflected
answer is rejected.) `ratio` picks the PPL or the loss form of IFD/r-IFD; the threshold 1 is the
same for both.
"""

from __future__ import annotations

from collections.abc import Mapping

VARIANTS = {
    "ori": ("prompt", "response"),
    "q": ("prompt_q", "response_q"),
    "a": ("prompt", "response_a"),
    "qa": ("prompt_q", "response_qa"),
}
FIELDS = ("prompt", "response", "prompt_q", "response_q", "response_a", "response_qa")
RATIOS = ("ppl", "loss")


def variant_records(record: Mapping[str, str]) -> dict[str, dict]:
    """The four {"id", "prompt", "response"} versions of a reflection record."""
    missing = [f for f in FIELDS if not isinstance(record.get(f), str)]
    if missing:
        raise ValueError(f"record {record.get('id')!r} lacks string fields {missing} (reflection needs {', '.join(FIELDS)})")
    return {v: {"id": record["id"], "prompt": record[p], "response": record[r]} for v, (p, r) in VARIANTS.items()}


def choose(ifd: Mapping[str, float], rifd: Mapping[str, float]) -> str:
    """The version to keep: "qa", "q", "a" or "ori" (the rule above)."""
    if ifd["q"] > ifd["ori"]:
        if rifd["qa"] < rifd["q"] and rifd["qa"] < 1 and ifd["qa"] < 1:
            return "qa"
        return "q"
    if rifd["a"] < rifd["ori"] and rifd["a"] < 1 and ifd["a"] < 1:
        return "a"
    return "ori"


def reflection_row(record: Mapping[str, str], scored: Mapping[str, Mapping[str, float]], ratio: str = "ppl") -> dict:
    """Columns for one record: `ifd_<v>`, `rifd_<v>` per version, `reflection_choice`, and the kept
    `selected_prompt` / `selected_response`. `scored[v]` holds that version's ifd_*/rifd_* columns."""
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    ifd = {v: scored[v][f"ifd_{ratio}"] for v in VARIANTS}
    rifd = {v: scored[v][f"rifd_{ratio}"] for v in VARIANTS}
    choice = choose(ifd, rifd)
    p, r = VARIANTS[choice]
    row: dict = {}
    for v in VARIANTS:
        row[f"ifd_{v}"], row[f"rifd_{v}"] = ifd[v], rifd[v]
    row.update(reflection_choice=choice, selected_prompt=record[p], selected_response=record[r])
    return row
