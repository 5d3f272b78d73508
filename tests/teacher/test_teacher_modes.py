"""Generate and critique modes on the tiny random-init model: counts, dedupe, verifier filter,
per-record parse-failure handling, provenance.

The tiny model writes gibberish, so where a mode needs well-formed replies the real completions pass
through `Rewrite`, which keeps the model's text and changes only the part under test (an appended
answer line, a malformed first attempt) — the contract is checked on real backend output."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from teacher_svc.backend import ChatPrompt, Completion, Sampling
from teacher_svc.critics import cft_critique, reflect, rubric_revise
from teacher_svc.errors import analyze_confusions
from teacher_svc.generation import ExpansionRequest, parse_seeds
from teacher_svc.leakage import LeakageGuard
from teacher_svc.reasoning import Question, reasoning_path, rejection_sample, verify, write_rationales
from teacher_svc.tailor import Draft, build_pairs
from teacher_svc.targeted import Skill, expand_until_accepted, generate_targeted

pytestmark = pytest.mark.unit

PROVENANCE = {"method", "backend", "model", "revision", "prompt_template_hash", "sampling", "round"}
SAMPLING = Sampling(temperature=1.0, top_p=0.95, max_new_tokens=8, n=1, seed=3)
BUDGET = replace(SAMPLING, max_new_tokens=64)  # what a critique step's JSON schema is fitted to, for whole replies


def cut(t: str) -> str:
    """A constrained reply cut short, as a too small max_new_tokens cuts it."""
    return t[: len(t) // 2]


class Rewrite:
    """The tiny backend, with each completion passed through `fn(call, prompt index, text)`."""

    def __init__(self, inner, fn: Callable[[int, int, str], str]) -> None:
        self.inner, self.fn, self.calls = inner, fn, 0
        self.name, self.model, self.revision = inner.name, inner.model, inner.revision

    def generate(self, prompts: Sequence[ChatPrompt], sampling: Sampling, batch_size: int, stop: Sequence[str] = ()):
        outs = self.inner.generate(prompts, sampling, batch_size, stop)
        call, self.calls = self.calls, self.calls + 1
        return [[Completion(self.fn(call, i, c.text), c.tokens) for c in cs] for i, cs in enumerate(outs)]


def test_rationales_per_question_and_style_with_failed_records_kept(tiny_backend) -> None:
    questions = [Question("q1", "What is 2 + 3?", "5"), Question("q2", "What is 4 * 2?", "8")]
    # Prompt 1 of the first attempt ends in a proper answer line; the others are the model's gibberish.
    backend = Rewrite(tiny_backend, lambda call, i, t: t + "\nAnswer: 5" if (call, i) == (0, 1) else t)
    result = write_rationales(backend, "Solve it.", questions, ["step_by_step", "eli5"], SAMPLING, per_style=2)
    assert len(result.records) == 2 * 2 * 2  # questions x styles x draws
    ok = [r for r in result.records if r["status"] == "ok"]
    failed = [r for r in result.records if r["status"] == "failed"]
    assert len(ok) >= 1 and len(failed) == result.failed == len(result.records) - len(ok)
    assert ok[0]["answer"] == "5" and ok[0]["style"] == "eli5" and ok[0]["question_id"] == "q1"
    for r in failed:  # failed after one retry, with the raw text of the last attempt
        assert r["attempts"] == 2 and isinstance(r["raw"], str) and "Answer" in r["error"]
    for r in result.records:
        assert set(r["provenance"]) == PROVENANCE and r["provenance"]["method"] == "rationales"
    assert {(r["question_id"], r["style"], r["draw"]) for r in result.records} == {
        (q, s, d) for q in ("q1", "q2") for s in ("step_by_step", "eli5") for d in (0, 1)
    }


def test_rejection_sampling_keeps_correct_and_dedupes_reasoning_paths(tiny_backend) -> None:
    questions = [Question("q1", "Tom has 3 apples and buys 4. How many?", "7"), Question("q2", "What is 10 / 2?", "5")]

    # Sample j of prompt i: 0 correct (equation path), 1 correct on the same path (duplicate),
    # 2 correct on another path, 3 wrong, 4 no answer line.
    k = 5
    seen: dict[int, int] = {}

    def fn(call: int, i: int, text: str) -> str:
        j = seen.get(i, 0)
        seen[i] = j + 1
        gold = questions[i].answer
        return {
            0: f"{text}\n3 + 4 = 7\nAnswer: {gold}",
            1: f"{text} again\n3 + 4 = 7\nAnswer: {gold}",
            2: f"{text}\nAnswer: {gold}",
            3: f"{text}\nAnswer: 1234",
            4: text.replace("Answer", ""),
        }[j]

    backend = Rewrite(tiny_backend, fn)
    result = rejection_sample(backend, "Solve it.", questions, "numeric", k, SAMPLING, batch_size=2)
    assert result.sampled == 10
    assert (len(result.records), result.duplicate_paths, result.incorrect, result.unparsable) == (4, 2, 2, 2)
    for r in result.records:
        assert verify("numeric", r["answer"], next(q.answer for q in questions if q.id == r["question_id"]))
        assert r["response"].endswith(f"Answer: {r['answer']}") and set(r["provenance"]) == PROVENANCE
        assert r["provenance"]["method"] == "rejection_sampling" and r["provenance"]["sampling"]["n"] == k
    assert reasoning_path("so 3+4=7 then") == reasoning_path("we get 3 + 4 = 7.") == "3+4=7"
    assert verify("numeric", "1,000 dollars", "1000") and not verify("numeric", "none", "3")
    assert verify("classification", "Card_Arrival.", "card arrival")
    with pytest.raises(ValueError, match="gold answer"):
        rejection_sample(backend, "x", [Question("q", "?")], "numeric", 2, SAMPLING)


def test_rft_drops_a_sample_whose_first_number_is_right_and_final_number_wrong(tiny_backend) -> None:
    # RFT's verifier is the evaluator's numeric checker: an answer line is its final number. The old
    # verifier read the first number, so "Answer: 12 - 4 = 8" passed for the gold 12.
    questions = [Question("q1", "Tom has 12 apples. How many does he have?", "12")]
    answers = {0: "Answer: 12 - 4 = 8", 1: "Answer: 8 + 4 = 12", 2: "Answer: 12 apples", 3: "Answer: 1,2"}

    def fn(call: int, i: int, text: str) -> str:
        fn.j = getattr(fn, "j", -1) + 1
        return f"{text}\n{answers[fn.j]}"

    result = rejection_sample(Rewrite(tiny_backend, fn), "Solve it.", questions, "numeric", 4, SAMPLING)
    kept = sorted(r["answer"] for r in result.records)
    assert kept == ["12 apples", "8 + 4 = 12"], kept
    assert (result.incorrect, result.unparsable) == (2, 0)


def test_targeted_generation_for_confused_labels(tiny_backend, banking77) -> None:
    skills = [
        Skill("distinguish card_arrival from lost_or_stolen_card", "card_arrival", "lost_or_stolen_card",
              ["Where is my new card?", "My card has not come yet."], 2),
    ]  # fmt: skip
    backend = Rewrite(tiny_backend, lambda call, i, t: f'Is my card still on its way {i}? "' if i < 2 else t)
    result = generate_targeted(backend, banking77.instructions, banking77.labels, skills, per_skill=3,
                               sampling=SAMPLING, seeds=parse_seeds(banking77.seeds))  # fmt: skip
    assert len(result.records) + result.duplicates_removed + result.unparsable == 3
    assert len(result.records) >= 1
    rec = result.records[0]
    assert rec["label"] == "card_arrival" and rec["skill"] == skills[0].name
    assert rec["provenance"]["method"] == "targeted" and set(rec["provenance"]) == PROVENANCE


def test_exactly_n_accepted_until_budget(tiny_backend, banking77) -> None:
    seeds = parse_seeds(banking77.seeds)
    labels = banking77.labels[:2]
    counter = iter(range(10_000))
    # Every other completion is a fresh, valid message; the rest are the tiny model's gibberish.
    words = ["refund", "statement", "branch", "holiday", "salary", "mortgage", "pension", "invoice", "loan", "fees"]

    def fn(call: int, i: int, t: str) -> str:
        n = next(counter)
        return f'Question {n} about my {words[n % 10]} and {words[(n // 10) % 10]} please"' if n % 2 == 0 else t

    req = ExpansionRequest(banking77.instructions, labels, seeds, per_label=1, sampling=SAMPLING, batch_size=8)
    report = expand_until_accepted(Rewrite(tiny_backend, fn), req, target=5, token_budget=10_000)
    assert len(report.records) == 5 and not report.budget_exhausted
    # One pass asks for 1.5x the 5 needed: ceil(7.5 / 2 labels) = 4 a label, 8 completions of 8 tokens; every
    # one is accepted (none dropped), and the list is cut to the target.
    assert report.passes == 1 and report.generated == 8 and report.tokens_spent == 8 * SAMPLING.max_new_tokens
    assert sum(report.dropped.values()) == 0 and report.generated - len(report.records) == 3
    # Nothing parses: the loop stops when the budget is spent, reporting what it spent.
    starved = expand_until_accepted(Rewrite(tiny_backend, lambda c, i, t: "\n"), req, target=3, token_budget=20)
    assert starved.budget_exhausted and starved.records == [] and starved.tokens_spent >= 20
    assert starved.dropped["unparsable"] == starved.generated + starved.dropped["unparsable"] > 0


def test_leakage_guard_drops_eval_overlap() -> None:
    guard = LeakageGuard(["I still have not received my new card, can you check where it is?", "Card stolen!"])
    records = [
        {"input": "i still have NOT received my new card, can you check where it is"},  # exact
        {"input": "Hello. I still have not received my new card, can you check the status?"},  # 8-gram
        {"input": "Help, my card stolen! what now"},  # short eval text contained
        {"input": "What exchange rate do you use for euros?"},  # clean
    ]
    kept = guard.filter(records)
    assert kept == [records[3]]
    assert guard.dropped == {"exact": 1, "ngram": 2} and guard.total_dropped == 3


def test_model_critiques_never_fail_the_batch(tiny_backend) -> None:
    examples = [{"id": f"e{i}", "question": f"What is {i} + 1?", "solution": f"It is {i + 1}.", "type": "arithmetic",
                 "instruction": f"Add {i} and 1.", "answer": f"{i + 1}"} for i in range(3)]  # fmt: skip
    sampling = BUDGET

    # CFT: e0 is well formed at once, e1 only on the retry, e2 never.
    def cft(call: int, i: int, t: str) -> str:
        return '{"critique": "The sum is right.", "verdict": "right"}' if (call, i) in {(0, 0), (1, 0)} else cut(t)

    records = cft_critique(Rewrite(tiny_backend, cft), examples, sampling)
    assert [r["status"] for r in records] == ["ok", "ok", "failed"]
    assert [r["attempts"] for r in records] == [1, 2, 2]
    assert records[0]["verdict"] == "right" and records[0]["prompt"].startswith("Question: What is 0 + 1?")
    assert records[0]["response"] == "The sum is right.\nConclusion: right"
    assert records[2]["raw"].startswith("{") and "not JSON" in records[2]["error"]

    rubrics, revisions = rubric_revise(
        Rewrite(tiny_backend, lambda call, i, t: '{"criteria": ["States the sum", "Shows the work"]}' if call == 0
                else json.dumps({"revised_answer": f"{i} + 1 = {i + 1}"})),
        examples, sampling,
    )  # fmt: skip
    assert len(rubrics) == 1 and rubrics[0]["status"] == "ok" and rubrics[0]["type"] == "arithmetic"
    assert len(revisions) == 3 and all(r["status"] == "ok" and r["rubric"] == rubrics[0]["rubric"] for r in revisions)
    assert revisions[0]["prompt"].startswith("Instruction: What is 0 + 1?") and "Rubric:" in revisions[0]["prompt"]
    assert rubrics[0]["rubric"] == "1. States the sum\n2. Shows the work" and revisions[2]["revision"] == "2 + 1 = 3"

    reflections = reflect(
        Rewrite(tiny_backend, lambda call, i, t: cut(t) if (call, i) != (0, 0) else json.dumps(
            {"weaknesses": "Too terse to teach.", "new_instruction": "Add 0 and 1, show work", "better_answer": "0 + 1 = 1"})),
        examples, sampling,
    )  # fmt: skip
    assert [r["status"] for r in reflections] == ["ok", "failed", "failed"]
    assert reflections[0]["new_instruction"] == "Add 0 and 1, show work" and reflections[0]["better_answer"] == "0 + 1 = 1"
    for r in records + revisions + reflections:
        assert set(r["provenance"]) == PROVENANCE


def test_citing_revises_the_students_answer_even_an_empty_one(tiny_backend) -> None:
    """The revision prompt and the record carry the student's answer (CITING trains on it); a student
    that wrote nothing is revised too, and an answer that is not a string is refused."""
    examples = [{"id": "a", "question": "What is 2 + 3?", "answer": "2 + 3 = 6"}, {"id": "b", "question": "What is 1 + 1?", "answer": ""}]
    seen: list[str] = []

    class Recording(Rewrite):
        def generate(self, prompts, sampling, batch_size, stop=()):
            seen.extend(p.user for p in prompts)
            return super().generate(prompts, sampling, batch_size, stop)

    reply = lambda call, i, t: '{"criteria": ["Shows the sum"]}' if call == 0 else '{"revised_answer": "The sum is right."}'
    _, revisions = rubric_revise(Recording(tiny_backend, reply), examples, BUDGET)
    assert [(r["status"], r["answer"]) for r in revisions] == [("ok", "2 + 3 = 6"), ("ok", "")]
    assert seen[1].startswith("Instruction: What is 2 + 3?\n\nRubric:\n1. Shows the sum\n\nAnswer: 2 + 3 = 6\n")
    assert revisions[0]["prompt"] == "Instruction: What is 2 + 3?\n\nRubric:\n1. Shows the sum\n\nAnswer: 2 + 3 = 6"
    assert revisions[1]["prompt"].endswith("\n\nAnswer: ")
    with pytest.raises(ValueError, match=r'examples\[0\] needs a string "answer"'):
        rubric_revise(Recording(tiny_backend, reply), [{"id": "a", "question": "q", "answer": 5}], BUDGET)


def test_analyze_errors_names_confused_label_pairs() -> None:
    eval_items = [{"id": f"e{i}", "input": f"message {i}"} for i in range(6)]
    predictions = [
        {"id": "e0", "label": "card_arrival", "prediction": "lost_or_stolen_card", "correct": False},
        {"id": "e1", "label": "card_arrival", "prediction": "lost_or_stolen_card", "correct": False},
        {"id": "e2", "label": "exchange_rate", "prediction": "top_up_failed", "correct": False},
        {"id": "e3", "label": "card_arrival", "prediction": "card_arrival", "correct": True},
    ]
    analysis = analyze_confusions(predictions, eval_items, examples_per_skill=1)
    assert (analysis.evaluated, analysis.wrong) == (4, 3)
    top = analysis.skills[0]
    assert top["skill"] == "distinguish card_arrival from lost_or_stolen_card" and top["count"] == 2
    assert top["examples"] == ["message 0"] and top["example_ids"] == ["e0"]
    assert Skill.from_record(top).confused_with == "lost_or_stolen_card"
    with pytest.raises(ValueError, match="not in the eval items"):
        analyze_confusions([{"id": "zz", "label": "a", "prediction": "b"}], eval_items)


def test_arte_pairs_question_and_rationale_level() -> None:
    def draft(i: int, scores: list[float], prompt: str = "P") -> Draft:
        return Draft(Question(f"q{i}", f"question {i}", "a"), prompt, f"completion {i}", [f"r{i}a", f"r{i}b"], scores)

    drafts = [draft(0, [1.0, 0.5]), draft(1, [0.5, 0.5]), draft(2, [0.0, 0.25]), draft(3, [0.75, 0.75])]
    pairs = build_pairs(drafts, "Classify.")
    assert pairs.question_level == 1 and pairs.rationale_level == 2  # q1 and q3 tie inside
    q = next(r for r in pairs.records if r["level"] == "question")
    assert (q["chosen"], q["rejected"], q["prompt"]) == ("completion 0", "completion 2", "P")
    rat = {r["question_id"]: r for r in pairs.records if r["level"] == "rationale"}
    assert (rat["q0"]["chosen"], rat["q0"]["rejected"]) == ("r0a", "r0b")
    assert (rat["q2"]["chosen"], rat["q2"]["rejected"]) == ("r2b", "r2a")
    assert all(set(r) >= {"prompt", "chosen", "rejected"} for r in pairs.records)


def test_arte_question_pairs_are_quartiles_by_s_q_within_a_group_of_different_prompts() -> None:
    """The loop's drafts: each generated question has its own expansion prompt and a group (its
    label). Eight questions of label a with s_q 0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.2, 0.4: the quartile
    is 2, so the top two (q0 0.9, q3 0.7) are paired with the bottom two (q1 0.1, q6 0.2), each
    pair posed under the chosen question's prompt; label b's lone question pairs with nothing. Tied
    rationales (s_r equal) make no rationale pair; q8's 1.0 vs 0.0 makes one."""
    s_q = [0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.2, 0.4]
    drafts = [Draft(Question(f"q{i}", f"question {i}", "a"), f"prompt {i}", f"completion {i}", ["r1", "r2"], [s, s], "label:a")
              for i, s in enumerate(s_q)]  # fmt: skip
    drafts.append(Draft(Question("q8", "question 8", "b"), "prompt 8", "completion 8", ["good", "bad"], [1.0, 0.0], "label:b"))
    pairs = build_pairs(drafts, "Classify.")
    questions = [(r["prompt"], r["chosen"], r["rejected"], r["margin"]) for r in pairs.records if r["level"] == "question"]
    assert questions == [("prompt 0", "completion 0", "completion 1", 0.8), ("prompt 3", "completion 3", "completion 6", 0.5)]
    assert (pairs.question_level, pairs.rationale_level) == (2, 1)
    (rationale,) = [r for r in pairs.records if r["level"] == "rationale"]
    assert (rationale["question_id"], rationale["chosen"], rationale["rejected"]) == ("q8", "good", "bad")
