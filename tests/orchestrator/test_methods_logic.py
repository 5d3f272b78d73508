"""The loop's reading of teacher replies and score tables (pure logic, no services): what each
critique mode keeps, relabels or drops, which rationales train, and the score columns selection and
recipes read. The replies are the teacher's record formats (teacher_svc.critics / reasoning)."""

from __future__ import annotations

import math

import pytest

from orchestrator import critique_modes, reasoning
from orchestrator.scores import add_percentiles, difficulty_columns, reflection_versions, scoring_records, weighted_mix
from syllabus.tasks import TaskSpec
from syllabus_sdk.teacher.v1 import teacher_pb2

pytestmark = pytest.mark.unit

LABELS = ["card_arrival", "lost_or_stolen_card"]


@pytest.fixture
def task() -> TaskSpec:
    return TaskSpec(
        name="t", kind="classification", instructions="Classify.", labels=LABELS,
        seeds=[{"input": "Where is my card?", "label": "card_arrival"}, {"input": "My card was stolen", "label": "lost_or_stolen_card"}],
        eval=[{"input": "card not here", "label": "card_arrival"}],
    )  # fmt: skip


def ex(i: str, text: str, label: str) -> dict:
    return {"id": i, "input": text, "label": label, "prompt": f"p:{text}", "response": label, "provenance": {"method": "seed_expansion"}}


EXAMPLES = [ex("a", "When will my new card arrive?", "card_arrival"), ex("b", "Someone took my wallet and card", "card_arrival"),
            ex("c", "I lost it", "lost_or_stolen_card")]  # fmt: skip
FAILED = {"status": "failed", "error": 'no "Conclusion: right/wrong" line', "raw": "blah blah", "attempts": 2}


def test_judge_keeps_right_drops_wrong_and_unparsable_with_the_raw_reply(task: TaskSpec) -> None:
    replies = [
        {"id": "a", "status": "ok", "critique": "The card is on its way.\nConclusion: right", "verdict": "right"},
        {"id": "b", "status": "ok", "critique": "It was stolen, not late.\nConclusion: wrong", "verdict": "wrong"},
        {"id": "c", **FAILED},
    ]
    out = critique_modes.interpret(task, "judge", EXAMPLES, replies)
    assert [r["id"] for r in out.kept] == ["a"] and out.extra == []
    reasons = {v["id"]: (v["keep"], v["reason"]) for v in out.verdicts}
    assert reasons["a"][0] and reasons["a"][1].startswith("judge_right: The card is on its way.")
    assert reasons["b"] == (False, "judge_wrong: It was stolen, not late. Conclusion: wrong")
    assert not reasons["c"][0] and reasons["c"][1].startswith("unparsable:") and "raw: blah blah" in reasons["c"][1]
    assert {critique_modes.reason_code(v["reason"]) for v in out.verdicts} == {"judge_right", "judge_wrong", "unparsable"}


def test_cft_also_trains_on_every_parsed_critique(task: TaskSpec) -> None:
    replies = [
        {"id": "a", "status": "ok", "critique": "c1 Conclusion: right", "verdict": "right", "prompt": "Question: q\n\nSolution: s", "response": "c1 Conclusion: right"},
        {"id": "b", "status": "ok", "critique": "c2 Conclusion: wrong", "verdict": "wrong", "prompt": "Question: q2\n\nSolution: s2", "response": "c2 Conclusion: wrong"},
    ]  # fmt: skip
    out = critique_modes.interpret(task, "cft", EXAMPLES[:2], replies)
    assert [r["id"] for r in out.kept] == ["a"]
    assert [(r["parent_id"], r["category"], r["response"]) for r in out.extra] == [("a", "cft", "c1 Conclusion: right"), ("b", "cft", "c2 Conclusion: wrong")]
    assert all(r["provenance"]["method"] == critique_modes.CFT for r in out.extra)


def test_citing_asks_the_teacher_to_revise_the_students_answers_not_the_labels(task: TaskSpec) -> None:
    answers = {"a": "It is lost.", "b": "", "c": "card_arrival"}  # what the student wrote, "" included
    mode, examples = critique_modes.request_examples(task, "rubric", EXAMPLES, answers)
    assert mode == teacher_pb2.CRITIQUE_MODE_RUBRIC_REVISION
    assert [(e["id"], e["question"], e["answer"], e["type"]) for e in examples] == [
        ("a", task.prompt_for("When will my new card arrive?"), "It is lost.", "card_arrival"),
        ("b", task.prompt_for("Someone took my wallet and card"), "", "card_arrival"),
        ("c", task.prompt_for("I lost it"), "card_arrival", "lost_or_stolen_card"),
    ]
    with pytest.raises(ValueError, match=r"CITING revises the student's answers: none for \['c'\]"):
        critique_modes.request_examples(task, "rubric", EXAMPLES, {"a": "x", "b": "y"})
    with pytest.raises(ValueError, match="CITING revises the student's answers"):
        critique_modes.request_examples(task, "rubric", EXAMPLES)


def revision_reply(i: str, student_answer: str, revision: str) -> dict:
    """The teacher's revision record (teacher_svc.critics.rubric_revise) of the student's answer."""
    prompt = f"Instruction: q{i}\n\nRubric:\n1. names the intent\n\nAnswer: {student_answer}"
    return {"id": i, "status": "ok", "revision": revision, "rubric": "1. names the intent", "answer": student_answer,
            "prompt": prompt, "response": revision}  # fmt: skip


def test_rubric_revision_confirms_relabels_or_drops(task: TaskSpec) -> None:
    replies = [
        revision_reply("a", "It is lost.", "The intent is card_arrival."),
        revision_reply("b", "", "This is Lost or stolen card"),
        revision_reply("c", "card_arrival", "I cannot tell."),
    ]
    out = critique_modes.interpret(task, "rubric", EXAMPLES, replies)
    # CITING trains the student on (instruction, rubric, its own answer) -> revision, for every
    # revision the loop accepts (a and b), not for the one it drops (c).
    assert [(r["parent_id"], r["category"], r["prompt"], r["response"], r["label"], r["student_answer"]) for r in out.extra] == [
        ("a", "citing", replies[0]["prompt"], "The intent is card_arrival.", "card_arrival", "It is lost."),
        ("b", "citing", replies[1]["prompt"], "This is Lost or stolen card", "lost_or_stolen_card", ""),
    ]
    assert all(r["provenance"]["method"] == critique_modes.CITING for r in out.extra)
    assert len({r["id"] for r in out.extra}) == 2
    kept = {r["parent_id"] if r.get("parent_id") else r["id"]: r for r in out.kept}
    assert kept["a"] is EXAMPLES[0]  # confirmed: the same record
    assert kept["b"]["label"] == "lost_or_stolen_card" and kept["b"]["input"] == EXAMPLES[1]["input"]
    assert kept["b"]["provenance"]["method"] == critique_modes.RELABEL and kept["b"]["id"] != "b"
    assert "c" not in kept
    reasons = {v["id"]: v["reason"] for v in out.verdicts}
    assert reasons["b"] == "rubric_relabelled: card_arrival -> lost_or_stolen_card"
    assert reasons["c"].startswith("revision_names_no_label")


def test_reflection_rewrites_the_example_and_keeps_the_original_for_the_selection_rule(task: TaskSpec) -> None:
    replies = [
        {"id": "a", "status": "ok", "new_instruction": "My replacement card has not arrived after two weeks, where is it?",
         "better_answer": "card_arrival"},
        {"id": "b", "status": "ok", "new_instruction": "ok", "better_answer": "card_arrival"},
        {"id": "c", "status": "ok", "new_instruction": "I lost my card on the bus yesterday", "better_answer": "both intents apply"},
    ]  # fmt: skip
    out = critique_modes.interpret(task, "reflection", EXAMPLES, replies)
    (kept,) = out.kept
    assert kept["input"].startswith("My replacement card") and kept["label"] == "card_arrival"
    assert kept["reflection"] == {"input": EXAMPLES[0]["input"], "label": "card_arrival"}
    assert kept["prompt"] == task.prompt_for(kept["input"])
    codes = {v["id"]: critique_modes.reason_code(v["reason"]) for v in out.verdicts}
    assert codes == {"a": "reflected", "b": "reflection_bad_instruction", "c": "reflection_names_no_label"}
    four = reflection_versions(task, kept)
    assert (four["prompt"], four["response"]) == (task.prompt_for(EXAMPLES[0]["input"]), "card_arrival")
    assert (four["prompt_q"], four["response_qa"]) == (kept["prompt"], "card_arrival")


def test_named_label_needs_exactly_one_label() -> None:
    assert critique_modes.named_label("it's Card Arrival.", LABELS) == "card_arrival"
    assert critique_modes.named_label("card_arrival or lost_or_stolen_card", LABELS) is None
    assert critique_modes.named_label("no idea", LABELS) is None


def test_only_rationales_that_reach_the_label_train(task: TaskSpec) -> None:
    qs = reasoning.questions([ex("s1", "Where is my card?", "card_arrival")], EXAMPLES + [{"id": "r", "category": "rationales"}], 3)
    assert [q["id"] for q in qs] == ["s1", "a", "b"]
    written = [
        {"id": "w1", "question_id": "a", "status": "ok", "rationale": "It is late.\nAnswer: card arrival", "answer": "card arrival"},
        {"id": "w2", "question_id": "a", "status": "ok", "rationale": "Stolen.\nAnswer: lost_or_stolen_card", "answer": "lost_or_stolen_card"},
        {"id": "w3", "question_id": "b", "status": "failed", "error": "no answer", "raw": "..."},
    ]  # fmt: skip
    out = reasoning.training_records(task, "rationales", qs, written, {})
    assert [r["id"] for r in out.records] == ["w1"]
    (rec,) = out.records
    assert rec["label"] == "card_arrival" and rec["parent_id"] == "a" and rec["category"] == "rationales"
    assert rec["prompt"].endswith('"Answer: <intent>".') and rec["response"].endswith("Answer: card arrival")
    assert out.counts == {"written": 3, "wrong": 1, "failed": 1, "duplicate_paths": 0, "no_consensus": 0, "kept": 1}


def test_rft_counts_come_from_the_teacher(task: TaskSpec) -> None:
    qs = [{"id": "a", "input": "x y z", "label": "card_arrival"}]
    kept = [{"id": "k", "question_id": "a", "response": "r\nAnswer: card_arrival", "answer": "card_arrival", "provenance": {}}]
    stats = {"sampled": 4, "incorrect": 2, "unparsable": 1}  # proto JSON omits zero counts
    out = reasoning.training_records(task, "rft", qs, kept, stats)
    assert [r["id"] for r in out.records] == ["k"] and out.records[0]["category"] == "rft"
    assert out.counts == {"written": 4, "wrong": 2, "failed": 1, "duplicate_paths": 0, "no_consensus": 0, "kept": 1}


def test_score_table_columns() -> None:
    rows = add_percentiles([{"id": "a", "x": 3.0}, {"id": "b", "x": 1.0}, {"id": "c", "x": math.nan}, {"id": "d", "x": 2.0}])
    assert {r["id"]: r["x_pct"] for r in rows} == {"a": 0.5, "b": 0.0, "c": 0.0, "d": 0.25}
    assert difficulty_columns({"id": "a", "irt_difficulty": 0.7, "crowd_correct": 1}, 4) == {
        "id": "a", "irt_difficulty": 0.7, "irt_b": 0.7, "crowd_correct": 1, "success_rate": 0.25, "difficulty100": 75.0,
    }  # fmt: skip
    mix = weighted_mix([{"id": "a", "u": 1.0, "v": 0.0}, {"id": "b", "u": 3.0, "v": 2.0}], {"m": 1.0, "n": 2.0}, {"m": "u", "n": "v"})
    assert mix == pytest.approx({"a": -3.0, "b": 3.0})
    records = scoring_records([ex("a", "t", "card_arrival"), {**ex("r", "t", "card_arrival"), "category": "rft"}], [ex("a", "t", "card_arrival"), ex("s", "u", "card_arrival")])
    assert [(r["id"], r["category"]) for r in records] == [("a", "expand"), ("r", "rft"), ("s", "seed")]


@pytest.fixture
def numeric_task() -> TaskSpec:
    return TaskSpec(
        name="n", kind="numeric", instructions="Solve.",
        seeds=[{"input": "Dan had 4 dollars and spent 3. How many are left?", "answer": "1"}],
        eval=[{"input": "Ann has 2 apples and gets 2 more. How many?", "answer": "4"}],
        generate={"modes": [{"mode": "expand"}, {"mode": "rationales"}]},
    )  # fmt: skip


def test_a_numeric_rationale_with_a_wrong_final_answer_never_trains(numeric_task: TaskSpec) -> None:
    """Seeds are checked against their gold number; a generated question's rationales vote, and only
    those reaching the majority answer (given by at least two) train."""
    qs = [{"id": "seed", "input": "Dan had 4 dollars and spent 3. How many are left?", "label": "1"},
          {"id": "gen", "input": "Tom has 5 pens and loses 2. How many?", "label": ""},
          {"id": "split", "input": "Sue has 6 cats and 1 dog. How many pets?", "label": ""}]  # fmt: skip
    def rat(i: str, q: str, answer: str) -> dict:
        return {"id": i, "question_id": q, "status": "ok", "rationale": f"4 - 3 = {answer}\nAnswer: {answer}", "answer": answer}
    written = [
        rat("s-right", "seed", "1.0"), rat("s-wrong", "seed", "7"),  # 1.0 is the gold 1; 7 is wrong
        rat("g1", "gen", "3"), rat("g2", "gen", "3 pens"), rat("g3", "gen", "4"),  # majority 3 (2 votes)
        rat("p1", "split", "7"), rat("p2", "split", "6"),  # one vote each: no consensus
    ]
    out = reasoning.training_records(numeric_task, "rationales", qs, written, {})
    kept = {r["id"]: r for r in out.records}
    assert set(kept) == {"s-right", "g1", "g2"}
    assert kept["s-right"]["label"] == "1" and kept["g1"]["label"] == "3"  # the gold, and the majority answer
    assert kept["g1"]["prompt"] == numeric_task.prompt_for(qs[1]["input"])  # the student's own prompt
    assert out.counts == {"written": 7, "wrong": 2, "failed": 0, "duplicate_paths": 0, "no_consensus": 2, "kept": 3}
    assert all(numeric_task.kind_spec.check(r["response"].rsplit("Answer:", 1)[1], r["label"]) for r in out.records)


def test_answer_kinds_have_their_own_prompts_and_rules(numeric_task: TaskSpec) -> None:
    assert "final number" in numeric_task.prompt_for("x") and numeric_task.response_for("21") == "Answer: 21"
    assert numeric_task.response_for("21", "9 + 12 = 21") == "9 + 12 = 21\nAnswer: 21"
    assert numeric_task.kind_spec.eval_match == "numeric"
    exact = TaskSpec(name="e", kind="exact_answer", instructions="Answer.", seeds=[{"input": "Capital of France?", "answer": "Paris"}],
                     eval=[{"input": "Capital of Italy?", "answer": "Rome"}])  # fmt: skip
    assert exact.prompt_for("q").endswith("Answer with the answer only.") and exact.response_for("Paris") == "Paris"
    assert not exact.kind_spec.check("paris, france", "Paris") and exact.kind_spec.check("paris.", "Paris")


def solution(i: str, rationale: str, label: str = "1", category: str = "rationales") -> dict:
    return {"id": i, "input": "Dan had 4 dollars and spent 3. How many are left?", "label": label, "prompt": "p", "response": rationale,
            "category": category, "parent_id": "seed", "provenance": {"method": "rationale"}}  # fmt: skip


def test_an_answer_kind_critiques_its_rationales_not_its_label(numeric_task: TaskSpec) -> None:
    """judge/cft read (question, rationale); a wrong verdict drops the rationale, cft trains on every
    parsed critique with the rationale as the solution."""
    sols = [solution("a", "4 - 3 = 1\nAnswer: 1"), solution("b", "4 + 3 = 7, so 1\nAnswer: 1", category="rft")]
    _, examples = critique_modes.request_examples(numeric_task, "cft", sols)
    assert [(e["question"], e["solution"]) for e in examples] == [(s["input"], s["response"]) for s in sols]
    replies = [
        {"id": "a", "status": "ok", "critique": "4 - 3 is 1.\nConclusion: right", "verdict": "right", "prompt": "Q", "response": "c1"},
        {"id": "b", "status": "ok", "critique": "4 + 3 is 7, not 1.\nConclusion: wrong", "verdict": "wrong", "prompt": "Q2", "response": "c2"},
    ]  # fmt: skip
    out = critique_modes.interpret(numeric_task, "cft", sols, replies)
    assert [r["id"] for r in out.kept] == ["a"]
    assert [(v["id"], v["keep"]) for v in out.verdicts] == [("a", True), ("b", False)]
    assert [(r["solution"], r["question"], r["category"]) for r in out.extra] == [
        (sols[0]["response"], sols[0]["input"], "cft"), (sols[1]["response"], sols[1]["input"], "cft")
    ]  # fmt: skip


def test_a_rubric_revision_replaces_a_rationale_only_when_it_reaches_the_verified_answer(numeric_task: TaskSpec) -> None:
    sols = [solution("a", "4 - 3 = 1\nAnswer: 1"), solution("b", "4 - 3 = 1\nAnswer: 1"), solution("c", "4 - 3 = 1\nAnswer: 1"),
            solution("d", "x\nAnswer: 1")]  # fmt: skip
    student = {"a": "4 + 3 = 7\nAnswer: 7", "b": "I think 1", "c": "", "d": "Answer: 2"}
    _, examples = critique_modes.request_examples(numeric_task, "rubric", sols, student)
    assert {e["type"] for e in examples} == {numeric_task.instructions}
    assert [(e["question"], e["answer"]) for e in examples] == [(s["input"], student[s["id"]]) for s in sols]
    replies = [
        revision_reply("a", student["a"], "Dan spends 3 of 4: 4 - 3 = 1.\nAnswer: 1.0"),
        revision_reply("b", student["b"], "4 + 3 = 7\nAnswer: 7"),  # a wrong revised answer
        revision_reply("c", student["c"], "Dan has 1 left."),  # no final answer line
        {"id": "d", **FAILED},
    ]
    out = critique_modes.interpret(numeric_task, "rubric", sols, replies)
    # Only the verified revision trains as CITING's (question, rubric, student's answer) -> revision.
    assert [(r["parent_id"], r["prompt"], r["response"], r["label"]) for r in out.extra] == [
        ("a", replies[0]["prompt"], "Dan spends 3 of 4: 4 - 3 = 1.\nAnswer: 1.0", "1")
    ]
    kept = {r.get("parent_id") if r["id"] not in {s["id"] for s in sols} else r["id"]: r for r in out.kept}
    assert set(kept) == {"a", "b", "c"}
    revised = next(r for r in out.kept if r["provenance"]["method"] == critique_modes.RELABEL)
    assert revised["parent_id"] == "a" and revised["response"].startswith("Dan spends") and revised["label"] == "1"
    assert revised["category"] == "rationales" and revised["id"] != "a"
    assert kept["b"] is sols[1] and kept["c"] is sols[2]  # the verified originals stay
    reasons = {v["id"]: v["reason"] for v in out.verdicts}
    assert reasons["a"] == "rubric_revised"
    assert reasons["b"].startswith("rubric_unverified:") and reasons["c"].startswith("rubric_unverified:")
    assert reasons["d"].startswith("unparsable:")


def test_reflection_and_model_critique_without_solutions_are_refused_for_answer_kinds(numeric_task: TaskSpec) -> None:
    base = numeric_task.model_dump()
    with pytest.raises(ValueError, match="reflection rewrites the question"):
        TaskSpec(**{**base, "critique": {"mode": "reflection"}})
    with pytest.raises(ValueError, match="add a rationales or rft mode"):
        TaskSpec(**{**base, "critique": {"mode": "judge"}, "generate": {"modes": [{"mode": "targeted"}]}})
    assert TaskSpec(**{**base, "critique": {"mode": "cft"}}).critique.mode == "cft"


def test_parse_counts_per_model_step() -> None:
    prov = {"cft": {"method": "cft_critique"}, "rev": {"method": "rubric_revision"}}
    replies = [
        {"id": "a", "status": "ok", "attempts": 1, "provenance": prov["cft"]},
        {"id": "b", "status": "ok", "attempts": 2, "provenance": prov["cft"]},
        {"id": "c", "status": "failed", "attempts": 2, "provenance": prov["cft"]},
        {"id": "d", "status": "ok", "attempts": 1, "provenance": prov["rev"]},
        {"id": "e", "status": "failed", "attempts": 0, "error": "no rubric for type 'x'", "provenance": prov["rev"]},
        {"id": "r", "status": "failed", "attempts": 2, "provenance": {"method": "rubric"}},
    ]
    assert critique_modes.parse_counts(replies) == {
        "cft_critique": {"replies": 3, "parsed": 2, "retried": 1, "unparsable": 1},
        "rubric": {"replies": 1, "parsed": 0, "retried": 0, "unparsable": 1},
        "rubric_revision": {"replies": 1, "parsed": 1, "retried": 0, "unparsable": 0},
    }


def _tailored(task: TaskSpec) -> TaskSpec:
    data = task.model_dump() | {"validation": [{"input": "card still not here", "label": "card_arrival"}], "tailor": {"every": 1}}
    data["generate"] |= {"temperature": 0.9, "modes": [{"mode": "expand"}, {"mode": "rationales", "temperature": 0.7},
                                                       {"mode": "rft", "temperature": 0.8}]}  # fmt: skip
    return TaskSpec.model_validate(data)


def test_the_aligned_teacher_regenerates_greedily(task: TaskSpec) -> None:
    """ARTE: once tailored (a teacher adapter), expand, targeted and rationales requests are greedy
    (temperature 0) whatever the task's temperature; the base teacher keeps the task's 0.9 / 0.7, and
    RFT keeps its 0.8 (k greedy samples would be one reasoning path)."""
    from orchestrator.activities.teacher import _generate_request, expand_sampling, reasoning_sampling
    from orchestrator.activity_io import GenerateInput
    from syllabus.artifacts import ArtifactRef

    tailored = _tailored(task)
    adapter = ArtifactRef("file:///a/teacher-dpo.tar", "ab" * 32, 1)
    seeds = ArtifactRef("file:///a/seeds.jsonl", "cd" * 32, 1)

    def request(adapter_: ArtifactRef | None):
        sampling = expand_sampling(tailored, 2, adapter_)
        return _generate_request(tailored, GenerateInput("j", seeds, 2, seeds, teacher_adapter=adapter_), "k", sampling)

    assert request(adapter).sampling.temperature == 0.0 and request(adapter).model.adapter.uri == adapter.uri
    assert request(None).sampling.temperature == pytest.approx(0.9)
    assert reasoning_sampling(tailored, "rationales", 2, adapter)["temperature"] == 0.0
    assert reasoning_sampling(tailored, "rationales", 2, None)["temperature"] == 0.7
    assert reasoning_sampling(tailored, "rft", 2, adapter)["temperature"] == 0.8
    # An option with the paper's default: tailor.regenerate_temperature.
    warm = TaskSpec.model_validate(tailored.model_dump() | {"tailor": {"every": 1, "regenerate_temperature": 0.3}})
    assert expand_sampling(warm, 2, adapter)["temperature"] == 0.3


def test_tailor_drafts_are_the_generated_questions_first_with_their_generation_and_label_group() -> None:
    from orchestrator.activities.data import tailor_questions

    seeds = [{"id": "s1", "input": "seed one", "label": "card_arrival"}]
    gen = {"prompt": "Write one more message", "completion": 'New message: "where is it"'}
    candidates = [{"id": "c1", "input": "where is it", "label": "card_arrival", "generation": gen},
                  {"id": "c2", "input": "no generation kept", "label": "lost_or_stolen_card"}]  # fmt: skip
    qs = tailor_questions(seeds, candidates, 2)
    assert [q["id"] for q in qs] == ["c1", "s1"]
    assert (qs[0]["prompt"], qs[0]["completion"], qs[0]["group"]) == (gen["prompt"], gen["completion"], "label:card_arrival")
    assert "prompt" not in qs[1]  # a seed has no generation: rationale-level pairs only


def test_crowd_rows_are_each_members_right_and_wrong_per_validation_item() -> None:
    from orchestrator.scores import crowd_rows

    base = [{"id": "v1", "correct": False}, {"id": "v2", "correct": True}]
    round1 = [{"id": "v1", "correct": True}, {"id": "v2", "correct": True}]
    assert crowd_rows([base, round1]) == [
        {"item_id": "v1", "subject": "m0", "correct": False}, {"item_id": "v2", "subject": "m0", "correct": True},
        {"item_id": "v1", "subject": "m1", "correct": True}, {"item_id": "v2", "subject": "m1", "correct": True},
    ]  # fmt: skip


def test_car_per_generation_method_and_the_budget_it_splits() -> None:
    """CAR = r / (1 + beta * L) per method, worked by hand (beta 0.5). expand produced 10, kept 5 with
    base-student losses 1, 1, 2, 2, 4: r = 0.5, L = 2, CAR = 0.5 / 2 = 0.25. targeted produced 4, kept 3
    with losses 0.5, 1, 1.5: r = 0.75, L = 1, CAR = 0.75 / 1.5 = 0.5. Seeds are no method. The next
    round's factors are 2 * CAR / 0.75: targeted 4/3, expand 2/3 (per_label 6 -> 4, per_skill 3 -> 4)."""
    from orchestrator.budget import budget_scales, car_by_method, method_rewards, scaled

    rows = [{"category": "expand", "loss_base": x} for x in (1.0, 1.0, 2.0, 2.0, 4.0)]
    rows += [{"category": "targeted", "loss_base": x} for x in (0.5, 1.0, 1.5)] + [{"category": "seed", "loss_base": 9.0}]
    cars = car_by_method(rows, {"expand": 10, "targeted": 4, "rft": 0}, beta=0.5)
    assert [(c.method, c.produced, c.kept) for c in cars] == [("targeted", 4, 3), ("expand", 10, 5)]  # best first; rft made none
    assert [(c.reward, c.loss, c.car) for c in cars] == [(0.75, 1.0, 0.5), (0.5, 2.0, 0.25)]
    assert method_rewards(rows, {"expand": 10, "targeted": 4}) == {"expand": 0.5, "targeted": 0.75}
    scales = budget_scales(cars, ["expand", "targeted", "rationales"])
    assert scales == {"targeted": pytest.approx(4 / 3), "expand": pytest.approx(2 / 3)}  # rationales: no CAR, kept at 1
    assert (scaled(6, scales["expand"]), scaled(3, scales["targeted"])) == (4, 4)
    assert scaled(6, 0.0) == 1  # a method with CAR 0 is still measured next round
    # Equal CAR: every mode keeps its budget; no CAR at all: nothing to split.
    assert budget_scales(car_by_method(rows[:5], {"expand": 10}, 0.5), ["expand"]) == {"expand": 1.0}
    assert budget_scales([], ["expand", "targeted"]) == {}


def test_compatibility_is_the_per_record_score_and_car_is_a_rename_error() -> None:
    from orchestrator.scores import compatibility
    from syllabus.tasks import TaskSpecError, parse_task

    assert compatibility(1.0, 0.5) == pytest.approx(1 / 1.5) and compatibility(float("nan"), 0.5) is None
    base = ("name: t\nkind: classification\ninstructions: C.\nlabels: [a, b]\nseeds: [{input: x, label: a}, {input: y, label: b}]\n"
            "eval: [{input: z, label: a}]\n")  # fmt: skip
    for extra in ("score: {metrics: [car]}\n", "score: {metrics: [compatibility]}\nselect: {metric: car}\n"):
        with pytest.raises(TaskSpecError, match="car was renamed compatibility"):
            parse_task(base + extra)
    budget = "generate: {budget: car, modes: [{mode: expand}, {mode: targeted}]}\nvalidation: [{input: w, label: b}]\n"
    with pytest.raises(TaskSpecError, match="add compatibility to score.metrics"):
        parse_task(base + budget)
    assert parse_task(base + budget + "score: {metrics: [learnability, compatibility]}\n").generate.budget == "car"
