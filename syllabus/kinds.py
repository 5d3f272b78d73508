"""A task kind as one object, after nanochat's `tasks/common.py`: how a question of the kind is put to
the student, what a seed trains on, how an answer is read and checked, how the student is evaluated,
which generation a task gets by default and what the report shows. Everything that differs between
kinds lives here; the rest of the code asks the kind (`TaskSpec.kind_spec`, or `of_proto` in a
service) and never compares kind names.

The four kinds:
- classification: a label out of a fixed set; answered by the label's likelihood, checked as a label.
- exact_answer: a short answer, generated, checked by normalised text.
- numeric: a worked solution ending "Answer: <number>", checked by its final number.
- open_ended: free text, graded by the teacher's judge against the task's rubric (no checker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from syllabus import answers

# Student evaluation: how a prediction is made and graded (the student service's scorer names).
LABEL_LIKELIHOOD, EXACT_MATCH, NUMERIC_MATCH = "label_likelihood", "exact_match", "numeric"


@dataclass(frozen=True)
class TaskKind:
    """One task kind's rules. `question` is the student's prompt template for one input
    ({instructions}, {text}, and {labels} for classification)."""

    name: str
    question: str
    match: str | None
    """How an answer is checked (syllabus.answers: label, exact, numeric); None: judged, not matched."""
    evaluator: str
    """How the student service evaluates: label likelihood, or a greedy answer then its match."""
    solution_seeds: bool = False
    """Whether seeds may carry a worked solution their training response shows before the answer."""

    @property
    def has_labels(self) -> bool:
        """A fixed label set: label scoring, the confusion matrix, per-label expansion."""
        return self.match == answers.LABEL

    @property
    def reasons(self) -> bool:
        """The answer kinds: answers are written (rationales carry them; critique reads solutions;
        evaluation generates), where classification picks a label."""
        return not self.has_labels

    @property
    def judged(self) -> bool:
        """Answers are graded by the teacher's judge: no gold answer to verify against."""
        return self.match is None

    @property
    def verifier(self) -> str:
        """The teacher's RFT verifier name (GenerateRequest.verifier): the kind's match, with exact
        standing in for the judged kind, whose RFT the task spec refuses."""
        return {answers.LABEL: "classification", answers.NUMERIC: "numeric"}.get(self.match, "exact")

    @property
    def eval_match(self) -> str:
        """The match a student's answer is graded by (ARTE probes, evaluation); exact for the judged kind."""
        return self.match or answers.EXACT

    def prompt(self, instructions: str, labels: Sequence[str], text: str) -> str:
        """The student's user message for one input."""
        return self.question.format(instructions=instructions.strip(), labels=", ".join(labels), text=text.strip())

    def rationale_prompt(self, instructions: str, labels: Sequence[str], text: str) -> str:
        """The prompt a rationale trains on: classification's second task (Distilling step-by-step:
        explain, then answer); the answer kinds' own prompt, which already asks for the reasoning."""
        if not self.has_labels:
            return self.prompt(instructions, labels, text)
        return RATIONALE_QUESTION.format(instructions=instructions.strip(), labels=", ".join(labels), text=text.strip())

    def teacher_instructions(self, instructions: str, labels: Sequence[str]) -> str:
        """What the teacher is told a question is about (rationales, RFT, tailoring): a labelled
        kind also names the labels to answer with."""
        if not self.has_labels:
            return instructions
        return f"{instructions.strip()}\nAnswer with one of these intents: {', '.join(labels)}."

    def seed_response(self, answer: str, solution: str | None = None) -> str:
        """A seed's training response: the label or answer; a kind with worked solutions shows the
        solution (when the seed has one), then its "Answer:" line."""
        if not self.solution_seeds:
            return answer
        return f"{solution.strip()}\nAnswer: {answer}" if solution else f"Answer: {answer}"

    def gold_error(self, gold: str) -> str | None:
        """Why `gold` cannot be this kind's answer, or None."""
        if self.match == answers.NUMERIC and answers.extract_number(gold) is None:
            return f"{gold[:40]!r} is not a number ({self.name} task)"
        return None

    def check(self, prediction: str, gold: str) -> bool:
        """The kind's one answer checker; a judged kind's answers all pass here (the judge grades them)."""
        return self.judged or answers.answers_match(prediction, gold, self.match)

    def answer_key(self, answer: str) -> object:
        """What two answers must share to be one answer (majority votes)."""
        return answers.answer_key(self.eval_match, answer)


RATIONALE_QUESTION = (
    "{instructions}\nIntents: {labels}\nMessage: {text}\n"
    'Explain your reasoning, then give the intent on a last line "Answer: <intent>".'
)

CLASSIFICATION = TaskKind(
    "classification", "{instructions}\nIntents: {labels}\nMessage: {text}\nIntent:", answers.LABEL, LABEL_LIKELIHOOD
)
EXACT_ANSWER = TaskKind(
    "exact_answer", "{instructions}\nQuestion: {text}\nAnswer with the answer only.", answers.EXACT, EXACT_MATCH
)
NUMERIC = TaskKind(
    "numeric",
    '{instructions}\nProblem: {text}\nSolve it step by step, then give the final number on a last line "Answer: <number>".',
    answers.NUMERIC,
    NUMERIC_MATCH,
    solution_seeds=True,
)
# Open-ended answers are written by a greedy generation and graded by the teacher's judge in an
# orchestrator step (orchestrator.judging), since services never call each other.
OPEN_ENDED = TaskKind("open_ended", "{instructions}\n\n{text}", None, EXACT_MATCH)

KINDS = {k.name: k for k in (CLASSIFICATION, EXACT_ANSWER, NUMERIC, OPEN_ENDED)}
NAMES = tuple(KINDS)
_BY_VERIFIER = {k.verifier: k for k in (CLASSIFICATION, EXACT_ANSWER, NUMERIC)}


def get(name: str) -> TaskKind:
    """The kind of a task spec's `kind`; ValueError for an unknown name."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown task kind {name!r}; known: {', '.join(NAMES)}") from None


def by_verifier(verifier: str) -> TaskKind:
    """The kind whose answers an RFT verifier name (classification, exact, numeric) checks."""
    try:
        return _BY_VERIFIER[verifier]
    except KeyError:
        raise ValueError(f"verifier must be one of {', '.join(_BY_VERIFIER)}, got {verifier!r}") from None
