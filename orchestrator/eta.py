"""Progress ETAs: the job's remaining plan, priced by the steps it already timed.

Pure logic. The workflow writes the plan (`planned_steps`) into its progress once it knows the
task; the gateway prices it on every GetJob/WatchJob (`estimate`), where it also knows the clock and
the running activity's heartbeat (a training step's "step 12/40").

- The current step's ETA: from its heartbeat's step/total when it has one (elapsed * remaining /
  done), else the mean duration of the same step in earlier rounds, less the time it has run.
- The job's ETA: the current step's, plus each remaining planned step priced at the mean duration
  of that step in the rounds that ran it; a step that has not run yet (round 1) is priced at the
  mean of the steps timed so far in rounds, so the estimate exists from the first timed step and
  settles once a round has completed. A recipe's per-stage times ("train-stage-N") count as one
  "train" step. Unknown (None) until some step of a round has been timed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from orchestrator.types import LoopPlan, PlannedStep, StepTime

_STAGE = re.compile(r"^train-stage-\d+$")


def planned_steps(plan: LoopPlan, rounds: int) -> list[PlannedStep]:
    """The steps a job of `plan` runs, in order (a round without candidates skips some at run time)."""
    out = [PlannedStep("prepare", 0), *([PlannedStep("distill-check", 0)] if plan.distill_top_k else []),
           PlannedStep("baseline-eval", 0)]  # fmt: skip
    if plan.judge_eval:
        out.append(PlannedStep("baseline-judge", 0))
    for r in range(1, rounds + 1):
        names: list[str] = []
        if plan.expand or (plan.targeted and r > 1):
            names += ["generate", "critique"]
        names += plan.reasoning
        if plan.critiques_solutions and plan.reasoning:
            names.append("critique-solutions")
        if plan.learnability or ("difficulty" in plan.metrics and r == 1):
            names.append("reference-train")
        if "agreement" in plan.metrics and r == 1:
            names.append("agreement-train")
        if plan.opd_chunks:  # on-policy: sample -> teacher log-probs -> train, chunk by chunk
            names += ["score", "select", *(["sample", "teacher-logprobs", "train"] * plan.opd_chunks), "evaluate"]
        else:
            names += ["score", "select", *(["teacher-logprobs"] if plan.distill_top_k else []), "train", "evaluate"]
        if plan.judge_eval:
            names.append("judge")
        if plan.baselines:
            names.append("baselines")
        if plan.targeted and r < rounds:
            names += ["validation-eval", "analyze"]
        if plan.tailor_every and r % plan.tailor_every == 0 and r < rounds:
            names.append("tailor")
        out += [PlannedStep(n, r) for n in names]
    return out


def _name(step: str) -> str:
    return "train" if _STAGE.match(step) else step


def estimate(
    planned: Sequence[PlannedStep],
    done: Sequence[StepTime],
    current_round: int,
    current_step: str,
    elapsed_s: float,
    progress: tuple[int, int] | None = None,
) -> tuple[float | None, float | None]:
    """(seconds left in the current step, seconds left in the job); None where there is nothing to go on.

    `elapsed_s`: how long the current step has run; `progress`: its (done, total) units from a
    heartbeat, if any."""
    per_round: dict[tuple[int, str], float] = defaultdict(float)
    for s in done:
        per_round[(s.round, _name(s.name))] += s.seconds
    by_name: dict[str, list[float]] = defaultdict(list)
    for (_, name), seconds in per_round.items():
        by_name[name].append(seconds)
    in_rounds = [seconds for (r, _), seconds in per_round.items() if r > 0]
    fallback = sum(in_rounds) / len(in_rounds) if in_rounds else None

    def price(name: str) -> float | None:
        seconds = by_name.get(_name(name))
        return sum(seconds) / len(seconds) if seconds else fallback

    step_eta: float | None = None
    if current_step:
        if progress is not None and progress[0] > 0 and progress[1] >= progress[0] and elapsed_s > 0:
            step_eta = elapsed_s * (progress[1] - progress[0]) / progress[0]
        elif (typical := price(current_step)) is not None:
            step_eta = max(0.0, typical - elapsed_s)
    key = PlannedStep(_name(current_step), current_round)
    if key in planned:
        remaining = list(planned[planned.index(key) + 1 :])
    else:  # not a planned step (or between steps): the rounds still to come
        remaining = [p for p in planned if p.round > current_round]
    prices = [price(p.name) for p in remaining]
    if any(p is None for p in prices) or (current_step and step_eta is None):
        return step_eta, None
    return step_eta, (step_eta or 0.0) + sum(p for p in prices if p is not None)
