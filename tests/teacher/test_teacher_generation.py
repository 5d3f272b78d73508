"""Seed expansion on the tiny random-init model, plus record assembly on scripted completions."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from tiny_models import tiny_llama

from syllabus.kinds import CLASSIFICATION
from syllabus.records import content_id
from teacher_svc.backend import ChatPrompt, Completion, Sampling
from teacher_svc.generation import (
    EXAMPLES_PER_PROMPT,
    PROMPT_TEMPLATE_HASH,
    ExpansionRequest,
    build_prompts,
    expand_seeds,
    parse_seeds,
)

pytestmark = pytest.mark.unit

SAMPLING = Sampling(temperature=1.0, top_p=0.95, max_new_tokens=8, n=2, seed=7)


def test_backend_returns_n_completions_per_prompt(tiny_backend) -> None:
    prompts = [ChatPrompt(f"Write message {i}.", 'New message: "') for i in range(3)]
    out = tiny_backend.generate(prompts, SAMPLING, batch_size=2)
    assert [len(c) for c in out] == [2, 2, 2]
    assert all(0 < c.tokens <= SAMPLING.max_new_tokens for cs in out for c in cs)


def test_same_seed_same_output_and_batching_independent_of_padding(tiny_backend) -> None:
    prompts = [
        ChatPrompt("Short.", ""),
        ChatPrompt("A much longer prompt that needs left padding in its batch.", ""),
    ]
    first = tiny_backend.generate(prompts, SAMPLING, batch_size=2)
    again = tiny_backend.generate(prompts, SAMPLING, batch_size=2)
    other = tiny_backend.generate(prompts, Sampling(**{**SAMPLING.__dict__, "seed": 8}), batch_size=2)
    assert first == again
    assert first != other
    # Left padding changes nothing a prompt sees: the short prompt's next-token logits batched
    # (padded to the long one) are its logits alone, so greedy text is too.
    import torch

    tok, model = tiny_backend.tokenizer, tiny_backend.model_obj
    texts = [tiny_backend.render(p) for p in prompts]
    tok.padding_side = "left"
    with torch.inference_mode():
        batched = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        assert (batched["attention_mask"][0] == 0).any()  # the short prompt was padded
        padded = model(**batched).logits[0, -1]
        single = model(**tok(texts[:1], return_tensors="pt", add_special_tokens=False)).logits[0, -1]
    torch.testing.assert_close(padded, single, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def sharp_backend(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model with large random weights (init std 1): its greedy text depends on every prompt
    token, where the standard tiny model repeats one token whatever the prompt (so any batching
    would "match")."""
    from teacher_svc.backend import TransformersBackend

    out = tiny_llama(tmp_path_factory.mktemp("sharp-model"), initializer_range=1.0)
    return TransformersBackend.load(str(out))


def test_batched_greedy_generation_equals_batch_one_generation(sharp_backend) -> None:
    prompts = [
        ChatPrompt("Short.", ""),
        ChatPrompt("A much longer prompt that needs left padding in its batch, several tokens more.", ""),
        ChatPrompt("Mid length prompt here", 'New message: "'),
        ChatPrompt("Another one", ""),
    ]
    greedy = Sampling(temperature=0.0, max_new_tokens=8, n=1, seed=0)
    one = sharp_backend.generate(prompts, greedy, batch_size=1)
    # every prompt gets its own text, so a padding or mask leak between batched prompts would show
    assert len({cs[0].text for cs in one}) == len(prompts)
    for size in (2, 4):
        assert sharp_backend.generate(prompts, greedy, batch_size=size) == one, size


def test_greedy_is_deterministic_and_rejects_n_above_one(tiny_backend) -> None:
    greedy = Sampling(temperature=0.0, max_new_tokens=6, n=1, seed=0)
    prompts = [ChatPrompt("Hello", "")]
    a = tiny_backend.generate(prompts, greedy, batch_size=1)
    b = tiny_backend.generate(
        prompts, Sampling(temperature=0.0, max_new_tokens=6, n=1, seed=99), batch_size=1
    )
    assert a == b
    with pytest.raises(ValueError, match="n must be 1"):
        tiny_backend.generate(prompts, Sampling(temperature=0.0, max_new_tokens=6, n=2), batch_size=1)


def test_expand_seeds_accounts_for_every_completion(tiny_backend, banking77) -> None:
    labels = banking77.labels[:2]
    req = ExpansionRequest(
        banking77.instructions,
        labels,
        parse_seeds(banking77.seeds),
        per_label=3,
        sampling=SAMPLING,
        batch_size=4,
        round=2,
    )
    result = expand_seeds(tiny_backend, req)
    total = len(labels) * 3 * SAMPLING.n
    assert len(result.records) + result.duplicates_removed + result.unparsable == total
    assert 0 < result.tokens_generated <= total * SAMPLING.max_new_tokens
    for rec in result.records:
        assert rec["label"] in labels and rec["response"] == rec["label"]
        assert rec["id"] == content_id(rec["input"], rec["label"])
    assert expand_seeds(tiny_backend, req) == result


def test_prompts_rotate_seeds_and_show_the_label(banking77) -> None:
    seeds = parse_seeds(banking77.seeds)
    prompts = build_prompts(banking77.instructions, ["card_arrival", "exchange_rate"], seeds, per_label=4)
    assert [p.label for p in prompts] == ["card_arrival"] * 4 + ["exchange_rate"] * 4
    assert len({p.chat.user for p in prompts}) == 8
    own = [s for s in seeds if s.label == "card_arrival"]
    for p in prompts[:4]:
        assert '"card_arrival"' in p.chat.user and banking77.instructions in p.chat.user
        shown = [s for s in own if f"- {s.input}" in p.chat.user]
        assert len(shown) == min(EXAMPLES_PER_PROMPT, len(own))
        assert p.parent_id in {s.id for s in shown}
    with pytest.raises(ValueError, match="no seed example has label 'nope'"):
        build_prompts(banking77.instructions, ["nope"], seeds, per_label=1)


class ScriptedBackend:
    """Returns fixed completions: exercises parsing, dedupe and record assembly, not a model."""

    name = "scripted"
    model = "scripted-model"
    revision = "abc123def456"

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def generate(
        self, prompts: Sequence[ChatPrompt], sampling: Sampling, batch_size: int, stop: Sequence[str] = ()
    ):
        it = iter(self.texts)
        return [[Completion(next(it), 5) for _ in range(sampling.n)] for _ in prompts]


def test_expand_seeds_dedupes_against_seeds_and_itself_and_writes_contract_records(banking77) -> None:
    seeds = parse_seeds(banking77.seeds)
    copy_of_seed = seeds[0].input.upper() + '"'
    backend = ScriptedBackend(
        [
            'Has my card been posted yet? It is taking ages."',  # ok
            copy_of_seed,  # exact duplicate of a seed
            'has my card been posted yet?? it is taking ages"',  # duplicate of the first
            "\n\n",  # unparsable
            'The exchange rate you applied to my transfer looks wrong."',  # ok
            'The exchange rate you applied to my transfer looks very wrong."',  # near-duplicate
        ]
    )
    sampling = Sampling(temperature=0.9, top_p=0.95, max_new_tokens=40, n=3, seed=1)
    labels = ["card_arrival", "exchange_rate"]
    req = ExpansionRequest(banking77.instructions, labels, seeds, per_label=1, sampling=sampling, round=3)
    result = expand_seeds(backend, req)
    assert (len(result.records), result.duplicates_removed, result.unparsable) == (2, 3, 1)
    assert result.tokens_generated == 30
    rec = result.records[0]
    assert set(rec) == {"id", "input", "label", "prompt", "response", "parent_id", "provenance", "generation"}
    assert rec["input"] == "Has my card been posted yet? It is taking ages."
    # The teacher's own prompt and reply (prefill included): what ARTE's question-level pairs train on.
    assert rec["generation"]["completion"] == 'New message: "Has my card been posted yet? It is taking ages."'
    assert rec["generation"]["prompt"] == build_prompts(banking77.instructions, labels, seeds, 1)[0].chat.user
    assert rec["prompt"] == CLASSIFICATION.prompt(banking77.instructions, labels, rec["input"])
    assert rec["parent_id"] == next(s.id for s in seeds if s.label == "card_arrival")
    assert rec["provenance"] == {
        "method": "seed_expansion",
        "backend": "scripted",
        "model": "scripted-model",
        "revision": "abc123def456",
        "prompt_template_hash": PROMPT_TEMPLATE_HASH,
        "sampling": {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 40, "n": 3, "seed": 1},
        "round": 3,
    }
    assert result.records[1]["label"] == "exchange_rate"


def test_answer_kinds_name_skills_from_wrong_answers_and_ask_for_questions_that_practise_them() -> None:
    """Error-driven generation for the answer kinds (arXiv 2412.15652): the teacher names the skill each
    wrong answer misses (JSON, or a "Skill: ..." line from an endpoint that ignored the schema), skills with the same name merge, and targeted prompts ask for new
    questions practising a skill; the replies become questions without an answer (label "")."""
    from teacher_svc.errors import analyze_answers
    from teacher_svc.targeted import Skill, generate_targeted

    wrong = [{"id": f"q{i}", "question": f"Tom has {i + 5} pens and loses 2. How many are left?", "gold": str(i + 3),
              "prediction": "Answer: 9"} for i in range(3)]  # fmt: skip
    replies = ScriptedBackend(['{"skill":"subtraction with borrowing"}', "Skill: Subtraction with borrowing.", '{"skill":"???"}'])
    analysis = analyze_answers(replies, wrong, Sampling(temperature=0.0, max_new_tokens=48), retries=0)
    assert [(s["skill"], s["count"], s["example_ids"]) for s in analysis.skills] == [("subtraction with borrowing", 2, ["q0", "q1"])]
    assert analysis.failed == 1  # "???" names no skill: counted, not fatal
    skill = Skill.from_record(analysis.skills[0])
    assert (skill.label, skill.confused_with) == ("", "")
    asked = ScriptedBackend(['Sue had 12 apples and gave away 5. How many apples does she have now?"'])
    result = generate_targeted(asked, "Solve the word problem.", [], [skill], 1, Sampling(temperature=0.7, max_new_tokens=32))
    (question,) = result.records
    assert question["label"] == "" and question["input"].startswith("Sue had 12 apples")
    assert question["provenance"]["method"] == "targeted" and question["skill"] == skill.name
