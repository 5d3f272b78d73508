"""Targeted generation for named skills, and the "exactly N accepted examples" loop.

Targeted generation (error-driven distillation, arXiv 2412.15652): `teacher_svc.errors.analyze_errors`
names what the student gets wrong — for classification, a confused label pair with the messages it
missed. For each such skill the teacher is shown those messages and asked for new messages of the
gold label that could not be mistaken for the confused one. Replies are parsed and deduplicated like
seed expansion (`teacher_svc.generation`).

`generate_accepted` repeats a generation pass (with a new seed each time) and runs every new example
through the critique until exactly `target` examples are accepted or the token budget is spent; the
report says how many tokens were spent and why examples were dropped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from teacher_svc.backend import Backend, ChatPrompt, Sampling
from teacher_svc.critique import judge
from teacher_svc.dedupe import DuplicateIndex
from teacher_svc.generation import (
    PREFILL,
    QUESTION_PREFILL,
    STOP,
    ExpansionRequest,
    Seed,
    collect_examples,
    expand_seeds,
    provenance,
    template_hash,
)
from teacher_svc.leakage import LeakageGuard

TARGETED_METHOD = "targeted"
EXAMPLES_SHOWN = 3

TARGETED_TEMPLATE = """Task: {instructions}

A student mixes up messages labelled "{label}" with the label "{confused_with}". It got these "{label}" messages wrong:
{examples}

Write one new message that is clearly "{label}" and could not be mistaken for "{confused_with}". Reply with only the new message."""
TARGETED_TEMPLATE_HASH = template_hash(TARGETED_TEMPLATE, PREFILL, STOP)
# The answer kinds: a skill the teacher named from wrong answers, and the questions missed.
TARGETED_QUESTION_TEMPLATE = """Task: {instructions}

A student lacks this skill: {skill}. It got these questions wrong:
{examples}

Write one new question that practises this skill, complete in itself. Reply with only the new question."""
TARGETED_QUESTION_TEMPLATE_HASH = template_hash(TARGETED_QUESTION_TEMPLATE, QUESTION_PREFILL, STOP)


@dataclass(frozen=True)
class Skill:
    """A named weakness: for classification, gold `label` confused with `confused_with`."""

    name: str
    label: str
    confused_with: str
    examples: Sequence[str]
    count: int = 1

    @classmethod
    def from_record(cls, rec: dict) -> Skill:
        """A classification skill (label, confused_with) or an answer kind's (neither: label "")."""
        return cls(rec["skill"], rec.get("label", ""), rec.get("confused_with", ""), list(rec.get("examples", [])), rec.get("count", 1))


@dataclass(frozen=True)
class TargetedResult:
    records: list[dict]
    duplicates_removed: int
    unparsable: int
    tokens_generated: int


def targeted_prompts(instructions: str, skills: Sequence[Skill], per_skill: int) -> list[tuple[Skill, ChatPrompt]]:
    prompts = []
    for skill in skills:
        if not skill.examples:
            raise ValueError(f"skill {skill.name!r} has no example to show")
        k = min(EXAMPLES_SHOWN, len(skill.examples))
        for j in range(per_skill):
            shown = [skill.examples[(j * k + i) % len(skill.examples)] for i in range(k)]
            examples = "\n".join(f"- {s.strip()}" for s in shown)
            if not skill.label:  # an answer kind: a new question for the skill
                user = TARGETED_QUESTION_TEMPLATE.format(instructions=instructions.strip(), skill=skill.name, examples=examples)
                prompts.append((skill, ChatPrompt(user, QUESTION_PREFILL)))
                continue
            user = TARGETED_TEMPLATE.format(
                instructions=instructions.strip(), label=skill.label, confused_with=skill.confused_with, examples=examples
            )
            prompts.append((skill, ChatPrompt(user, PREFILL)))
    return prompts


def generate_targeted(
    backend: Backend,
    instructions: str,
    labels: Sequence[str],
    skills: Sequence[Skill],
    per_skill: int,
    sampling: Sampling,
    seeds: Sequence[Seed] = (),
    batch_size: int = 16,
    round_: int = 0,
) -> TargetedResult:
    """`per_skill` prompts per skill (n completions each) -> deduplicated records with a "skill" field."""
    pairs = targeted_prompts(instructions, skills, per_skill)
    outs = backend.generate([p for _, p in pairs], sampling, batch_size, stop=STOP)
    seen = DuplicateIndex()
    for s in seeds:
        seen.add(s.input, s.id)
    for skill in skills:  # the student's own failures are not new examples
        for i, text in enumerate(skill.examples):
            seen.add(text, f"{skill.name}[{i}]")
    prov = provenance(backend, sampling, round_, TARGETED_METHOD, TARGETED_TEMPLATE_HASH if labels else TARGETED_QUESTION_TEMPLATE_HASH)
    records, dupes, unparsable, tokens = collect_examples(
        ((skill.label, {"parent_id": None, "skill": skill.name}, completions) for (skill, _), completions in zip(pairs, outs, strict=True)),
        seen, instructions, list(labels), prov, chats=[p for _, p in pairs],
    )
    return TargetedResult(records, dupes, unparsable, tokens)


# -- exactly N accepted ----------------------------------------------------------------------------


@dataclass
class AcceptedReport:
    """What `generate_accepted` produced and spent."""

    records: list[dict]
    target: int
    tokens_spent: int
    passes: int
    budget_exhausted: bool
    generated: int = 0
    dropped: Counter = field(default_factory=Counter)  # by reason code (critique rule, "leak_*", ...)


Produce = Callable[[int, int], tuple[list[dict], int, Counter]]  # (pass, still needed) -> records, tokens, drops
Accept = Callable[[list[dict], list[dict]], tuple[list[dict], Counter]]  # (accepted so far, new) -> kept, drops


def generate_accepted(produce: Produce, accept: Accept, target: int, token_budget: int, max_passes: int = 50) -> AcceptedReport:
    """Run passes until `target` examples are accepted (the list is cut to exactly `target`) or
    `token_budget` tokens are spent (then fewer come back and `budget_exhausted` is set)."""
    if target <= 0 or token_budget <= 0:
        raise ValueError(f"target and token_budget must be > 0, got {target} and {token_budget}")
    report = AcceptedReport([], target, 0, 0, False)
    while len(report.records) < target:
        if report.tokens_spent >= token_budget or report.passes >= max_passes:
            report.budget_exhausted = True
            break
        new, tokens, drops = produce(report.passes, target - len(report.records))
        report.passes += 1
        report.tokens_spent += tokens
        report.generated += len(new)
        report.dropped += drops
        kept, rejected = accept(report.records, new)
        report.dropped += rejected
        report.records.extend(kept)
    del report.records[target:]
    return report


def expand_until_accepted(
    backend: Backend,
    req: ExpansionRequest,
    target: int,
    token_budget: int,
    leakage: LeakageGuard | None = None,
) -> AcceptedReport:
    """Seed expansion + judge critique (+ the leakage guard) until exactly `target` examples pass."""
    per_prompt = req.sampling.n * len(req.labels)

    def produce(pass_: int, needed: int) -> tuple[list[dict], int, Counter]:
        # Ask for what is still needed, plus a margin for what the critique will drop.
        per_label = max(1, math.ceil(1.5 * needed / per_prompt))
        sampling = replace(req.sampling, seed=req.sampling.seed + 1000 * pass_)
        result = expand_seeds(backend, replace(req, per_label=per_label, sampling=sampling))
        drops = Counter(duplicate=result.duplicates_removed, unparsable=result.unparsable)
        return result.records, result.tokens_generated, +drops

    def accept(accepted: list[dict], new: list[dict]) -> tuple[list[dict], Counter]:
        drops: Counter = Counter()
        if leakage is not None:
            before = Counter(leakage.dropped)
            new = leakage.filter(new)
            drops += Counter({f"leak_{k}": v for k, v in (leakage.dropped - before).items()})
        # Judge earlier acceptances and the new batch together: new ones must not duplicate accepted ones.
        verdicts = judge(accepted + new, req.labels, req.seeds)[len(accepted) :]
        kept = []
        for rec, v in zip(new, verdicts, strict=True):
            if v.keep:
                kept.append(rec)
            else:
                drops[v.reason.split(":")[0]] += 1
        return kept, drops

    return generate_accepted(produce, accept, target, token_budget)
