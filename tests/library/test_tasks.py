from __future__ import annotations

import math
from pathlib import Path

import pytest

from syllabus.tasks import TaskSpecError, dump_task, load_task, parse_task

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
GOOD = """\
name: t
kind: classification
instructions: Classify.
labels: [a, b]
seeds: [{input: one, label: a}, {input: two, label: b}]
eval: [{input: three, label: a}]
"""


def test_banking77_full_example_probes_a_validation_split_disjoint_from_training() -> None:
    task = load_task(ROOT / "examples/banking77/full.yaml")
    assert len(task.validation) == 20 and {ex.label for ex in task.validation} == set(task.labels)
    val = {ex.input for ex in task.validation}
    assert not val & {ex.input for ex in task.seeds} and not val & {ex.input for ex in task.eval}


def test_banking77_example_loads() -> None:
    task = load_task(ROOT / "examples/banking77/task.yaml")
    assert task.kind == "classification" and len(task.labels) == 5
    assert len(task.seeds) == 20 and len(task.eval) == 40
    assert {ex.label for ex in task.eval} == set(task.labels)
    assert not {ex.input for ex in task.seeds} & {ex.input for ex in task.eval}


def test_dump_is_self_contained_and_round_trips() -> None:
    task = load_task(ROOT / "examples/banking77/task.yaml")
    again = parse_task(dump_task(task))
    assert again == task


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "colour: red\n", "task: colour: unknown key"),
        (GOOD.replace("eval: [{input: three, label: a}]\n", ""), "task: eval: missing (required)"),
        (GOOD.replace("label: b}]", "label: c}]"), "task: seeds[1].label 'c' is not in labels"),
        (GOOD.replace("eval: [{input: three, label: a}]", "eval: [{input: three, label: z}]"), "task: eval[0].label 'z' is not in labels"),
        (GOOD + "train: {learning_rate: -1}\n", "task: train.learning_rate: Input should be greater than 0"),
        (GOOD.replace("kind: classification", "kind: poetry"), "task: kind: Input should be 'classification'"),
        ("- just\n- a list\n", "task: expected a mapping of task fields at the top level"),
        (GOOD.replace("{input: two, label: b}", "{input: two, label: a}"), "task: seeds: no seed example for label(s) b"),
        ("name: [unclosed\n", "task: line 2 invalid YAML"),
    ],
)
def test_bad_task_gives_one_line_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(TaskSpecError) as info:
        parse_task(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_file_references_resolve_relative_to_the_task(tmp_path: Path) -> None:
    (tmp_path / "seeds.jsonl").write_text('{"input": "one", "label": "a"}\n{"input": "two", "label": "b"}\n')
    (tmp_path / "task.yaml").write_text(GOOD.replace("seeds: [{input: one, label: a}, {input: two, label: b}]", "seeds: seeds.jsonl"))
    assert [ex.input for ex in load_task(tmp_path / "task.yaml").seeds] == ["one", "two"]
    (tmp_path / "task.yaml").write_text(GOOD.replace("eval: [{input: three, label: a}]", "eval: nowhere.jsonl"))
    with pytest.raises(TaskSpecError, match="eval: file 'nowhere.jsonl' not found"):
        load_task(tmp_path / "task.yaml")


def test_a_task_file_of_the_first_format_keeps_its_meaning() -> None:
    """Old files load: one expand mode (plus targeted when targeted_per_skill > 0), LoBaSS top fraction."""
    val = "validation: [{input: four, label: b}]\n"  # targeted reads it (never the seeds)
    task = parse_task(GOOD + val + "generate: {per_label: 3, targeted_per_skill: 2}\nselect: {metric: learnability, top_fraction: 0.3}\n")
    assert [m.mode for m in task.generate.modes] == ["expand", "targeted"]
    assert task.generate.mode("targeted").per_skill == 2 and task.generate.mode("expand").per_label is None
    assert (task.select.policy, task.select.metric, task.select.top_fraction) == ("top_fraction", "learnability", 0.3)
    assert task.score.metrics == ["learnability"] and task.critique.mode == "rules" and task.train.recipe is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("select: {metric: ifd}\n", "select: ranks by ifd, which is not in score.metrics ['learnability']"),
        ("score: {metrics: [ifd]}\nselect: {metric: learnability}\n", "select: ranks by learnability, which is not in score.metrics ['ifd']"),
        ("select: {policy: reflection}\n", "select.policy reflection needs critique.mode reflection"),
        ("select: {reweight: loss_base}\n", "select.reweight: reweights diversity clusters; policy top_fraction has none"),
        ("select: {policy: diversity, reweight: success_gap}\n",
         "select.reweight: success_gap is read from the difficulty metric: add difficulty to score.metrics"),
        ("select: {policy: threshold}\n", "policy threshold needs `threshold`"),
        ("rounds: 1\ntailor: {every: 1}\n", "tailor: needs rounds >= 2"),
        ("generate: {modes: [{mode: expand}, {mode: expand}]}\n", "modes: expand given twice"),
        ("generate: {modes: [{mode: rationales, styles: [haiku]}]}\n", "generate.modes[0].rationales.styles[0]"),
        ("critique: {mode: vibes}\n", "critique.mode"),
        ("score: {metrics: [ifd, magic]}\n", "score.metrics[1]"),
        ("train: {recipe: {stages: [{data: {score_key: difficulty100}}]}}\n",
         ("score_key 'difficulty100' is not a scored column; scored: ['learnability', 'learnability_pct', 'loss_base', "
          "'loss_base_pct'] (add difficulty to score.metrics)")),
        ("score: {metrics: [ifd]}\ntrain: {recipe: {stages: [{data: {score_key: loss_base_pct, max_score: 0.5}}]}}\n",
         "score_key 'loss_base_pct' is not a scored column; scored: ['ifd_loss', 'ifd_loss_pct', 'ifd_ppl', 'ifd_ppl_pct'] (add learnability to score.metrics)"),
        ("train: {recipe: {stages: [{objective: dpo}]}}\n", "dpo needs preference pairs"),
        ("train: {recipe: {stages: [{objective: cft}]}}\n", "cft trains on critique records"),
        ("train: {recipe: {stages: [{lr: -1}]}}\n", "train.recipe.stages[0].lr"),
        ("score: {metrics: [learnability, difficulty]}\ntrain: {recipe: {stages: [{curriculum: {policy: pudf, score_key: irt_b}}]}}\n",
         "train.recipe.stages[0].curriculum: pudf estimates the ability on a held-out split: give the task a validation split"),
        ("teacher: {model: 'openai:big'}\ntailor: {every: 1}\n", "tailor: trains a LoRA on the teacher's weights"),
        # The methods that read the student on a validation split never fall back to the seeds.
        ("tailor: {every: 1}\n", "validation: tailor reads the student on a validation split (never the seeds"),
        ("score: {metrics: [preference]}\n", "validation: score.metrics: preference reads the student on a validation split"),
        ("generate: {targeted_per_skill: 2}\n", "validation: generate.modes: targeted reads the student on a validation split"),
    ],
)
def test_method_options_are_validated(extra: str, message: str) -> None:
    with pytest.raises(TaskSpecError) as err:
        parse_task(GOOD + extra, source="task.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_selection_ranks_by_the_first_scored_metric_unless_told() -> None:
    assert parse_task(GOOD + "score: {metrics: [ifd, compatibility]}\n").select.metric == "ifd"
    assert parse_task(GOOD + "score: {metrics: [ifd, learnability]}\n").select.metric == "learnability"


def test_every_shipped_recipe_is_a_valid_train_recipe(tmp_path: Path) -> None:
    """A task names a recipe by path (resolved like seeds, on the client); the gateway wants it inline."""
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 5
    for path in recipes:
        if path.name == "dpo_teacher.yaml":  # the teacher's DPO (tailoring), not a student recipe
            continue
        task_file = tmp_path / "task.yaml"
        task_file.write_text(GOOD + "validation: [{input: four, label: b}]\n" + f"score: {{metrics: [learnability, difficulty]}}\ntrain: {{recipe: {path}}}\n")
        task = load_task(task_file)
        assert task.train.recipe is not None and task.train.recipe.stages, path.name
        assert parse_task(dump_task(task), inline_only=True) == task
    with pytest.raises(TaskSpecError, match="must carry its recipe inline"):
        parse_task(GOOD + "train: {recipe: recipes/shuffled_baseline.yaml}\n", inline_only=True)
    with pytest.raises(TaskSpecError, match="train.recipe: file 'nope.yaml' not found"):
        parse_task(GOOD + "train: {recipe: nope.yaml}\n", base_dir=tmp_path)


def test_every_example_task_loads() -> None:
    for path in sorted((ROOT / "examples").glob("*/*.yaml")):
        if path.name.startswith(("task", "full")):
            assert load_task(path).name, path


NUMERIC = """\
name: n
kind: numeric
instructions: Solve.
seeds: [{input: "Dan had 4 and spent 3. How many are left?", answer: "1"}]
eval: [{input: "Ann has 2 and gets 2 more. How many?", answer: "4"}]
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("kind: classification", "kind: numeric"), "labels: only classification tasks have labels"),
        (GOOD.replace("labels: [a, b]\n", ""), "labels: classification needs at least 2 labels"),
        (NUMERIC.replace('answer: "4"', "answer: four"), "eval[0].label: 'four' is not a number (numeric task)"),
        (NUMERIC.replace("kind: numeric", "kind: open_ended"), "rubric: open_ended tasks need a rubric"),
        (NUMERIC + "critique: {mode: reflection}\n", "critique.mode: reflection rewrites the question"),
        (NUMERIC.replace('answer: "4"}', 'answer: "4", solution: "2 + 2 = 4"}'), "eval[0].solution: only the seeds of a numeric task"),
        (GOOD.replace("label: a}", "label: a, solution: x}", 1), "seeds[0].solution: only the seeds of a numeric task"),
        (NUMERIC + "critique: {mode: judge}\ngenerate: {modes: [{mode: targeted}]}\n", "critique.mode: judge critiques the teacher's solutions"),
        (NUMERIC + "score: {metrics: [difficulty]}\nselect: {policy: random}\n", "difficulty scores the crowd's label choice"),
        (NUMERIC + "generate: {modes: [{mode: expand}]}\n", "add a rationales mode to answer them"),
        (NUMERIC.replace("kind: numeric", "kind: open_ended") + "rubric: r\ngenerate: {modes: [{mode: rft}]}\n", "rft needs a gold answer"),
        (NUMERIC.replace("kind: numeric", "kind: poem"), "kind"),
    ],
)
def test_each_kind_says_what_it_needs(text: str, message: str) -> None:
    with pytest.raises(TaskSpecError) as err:
        parse_task(text, source="task.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_svamp_example_is_a_numeric_task() -> None:
    task = load_task(ROOT / "examples/svamp/task.yaml")
    assert task.kind == "numeric" and (len(task.seeds), len(task.validation), len(task.eval)) == (40, 20, 100)
    assert not {e.input for e in task.eval} & {e.input for e in task.seeds + task.validation}
    assert [m.mode for m in task.generate.modes] == ["expand", "rationales", "rft"]
    # Each seed trains on SVAMP's equation, which reaches its answer, before its answer line.
    for seed in task.seeds:
        equation, result = seed.solution.rsplit(" = ", 1)
        assert result == seed.label and eval(equation, {"__builtins__": {}}) == pytest.approx(float(seed.label))  # committed data
        assert task.response_for(seed.label, seed.solution) == f"{seed.solution}\nAnswer: {seed.label}"


def test_the_ifd_filter_is_on_by_default_exactly_when_ifd_ranks() -> None:
    from syllabus.tasks import SelectSpec

    assert SelectSpec(metric="ifd").filters_ifd  # Cherry LLM drops IFD > 1 before ranking by IFD
    assert SelectSpec(weights={"ifd": 1.0, "learnability": 1.0}).filters_ifd
    assert not SelectSpec().filters_ifd and not SelectSpec(metric="learnability").filters_ifd
    assert not SelectSpec(metric="ifd", ifd_filter=False).filters_ifd  # asked off
    assert not SelectSpec(policy="random", metric="ifd").filters_ifd  # random ranks nothing
    assert SelectSpec(policy="random", ifd_filter=True).ranked_metrics() == ["ifd"]


def _ifd_rows() -> list[dict]:
    """Two candidates whose IFD forms disagree, worked by hand from (conditional, unconditional)
    mean NLLs: a = (1, 2): PPL ratio e^-1 = 0.368, loss ratio 0.5; b = (4, 6): e^-2 = 0.135, 0.667."""
    from student_svc.scoring import ifd_ratios

    rows = []
    for rid, cond, uncond in (("a", 1.0, 2.0), ("b", 4.0, 6.0)):
        ppl, loss = ifd_ratios(cond, uncond)
        rows.append({"id": rid, "ifd_ppl": ppl, "ifd_loss": loss})
    return rows


def test_score_ifd_ratio_picks_the_column_selection_ranks_by() -> None:
    from syllabus.selection import ranked

    rows = _ifd_rows()
    assert rows[0]["ifd_ppl"] == pytest.approx(0.3679, abs=1e-4) and rows[1]["ifd_loss"] == pytest.approx(0.6667, abs=1e-4)
    ppl = parse_task(GOOD + "score: {metrics: [ifd, rifd]}\n")
    loss = parse_task(GOOD + "score: {metrics: [ifd, rifd], ifd_ratio: loss}\n")
    assert ppl.score.ifd_ratio == "ppl"  # the newer Cherry_LLM code is the default
    assert (ppl.score.column("ifd"), ppl.score.column("rifd")) == ("ifd_ppl", "rifd_ppl")
    assert (loss.score.column("ifd"), loss.score.column("rifd")) == ("ifd_loss", "rifd_loss")
    assert loss.score.column("learnability") == "learnability"
    # The same two candidates, ranked by IFD descending: the forms disagree.
    assert [r["id"] for r in ranked(rows, ppl.score.column("ifd"))] == ["a", "b"]
    assert [r["id"] for r in ranked(rows, loss.score.column("ifd"))] == ["b", "a"]


REFLECTING = GOOD + "critique: {mode: reflection}\nselect: {policy: reflection}\nscore: {metrics: [ifd]}\n"


def test_the_reflection_rule_ratio_follows_score_ifd_ratio_unless_set() -> None:
    assert parse_task(REFLECTING).reflection_ratio == "ppl"
    assert parse_task(REFLECTING.replace("metrics: [ifd]", "metrics: [ifd], ifd_ratio: loss")).reflection_ratio == "loss"
    own = REFLECTING.replace("mode: reflection}", "mode: reflection, reflection_ratio: loss}")
    assert parse_task(own).reflection_ratio == "loss"
    assert parse_task(own.replace("metrics: [ifd]", "metrics: [ifd], ifd_ratio: ppl")).reflection_ratio == "loss"


def test_the_reflection_rule_keeps_a_different_version_under_each_ratio() -> None:
    """By hand, from (conditional, unconditional) mean NLLs per version: IFD(ori) = (1, 2) -> ppl 0.368,
    loss 0.5; IFD(Q*) = (4, 6) -> ppl 0.135, loss 0.667. Under ppl the reflected instruction is easier
    (0.135 < 0.368), so the rule weighs A*; under loss it is harder (0.667 > 0.5), so it weighs QA*.
    Both candidates pass their checks: r-IFD 0.368 (ppl) / 0.5 (loss) < r-IFD(ori or Q*) = 1 and IFD < 1."""
    from student_svc.reflection import reflection_row
    from student_svc.scoring import ifd_ratios

    def version(ifd: tuple[float, float], rifd: tuple[float, float]) -> dict:
        (ip, il), (rp, rl) = ifd_ratios(*ifd), ifd_ratios(*rifd)
        return {"ifd_ppl": ip, "ifd_loss": il, "rifd_ppl": rp, "rifd_loss": rl}

    scored = {"ori": version((1, 2), (2, 2)), "q": version((4, 6), (2, 2)), "a": version((1, 2), (1, 2)), "qa": version((1, 2), (1, 2))}
    record = {"id": "r", "prompt": "Q", "response": "A", "prompt_q": "Q*", "response_q": "A", "response_a": "A*", "response_qa": "QA*"}
    ppl, loss = reflection_row(record, scored, "ppl"), reflection_row(record, scored, "loss")
    assert (ppl["reflection_choice"], ppl["selected_prompt"], ppl["selected_response"]) == ("a", "Q", "A*")
    assert (loss["reflection_choice"], loss["selected_prompt"], loss["selected_response"]) == ("qa", "Q*", "QA*")
    assert loss["ifd_q"] == pytest.approx(4 / 6) and ppl["ifd_q"] == pytest.approx(math.exp(-2))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("score: {metrics: [ifd], ifd_ratio: log}\n", "task: score.ifd_ratio: Input should be 'ppl' or 'loss'"),
        ("score: {metrics: [ifd], model: {model: 'openai:small'}}\n", "task: score.model: a scorer computes token losses"),
        ("score: {metrics: [ifd], model: {model: 'http://x/m'}}\n", "task: score.model.model: name a configured endpoint, not a URL"),
        ("score: {metrics: [learnability], model: {model: bundled:smollm2-135m-instruct}}\n", "task: score.model scores ifd, rifd"),
        ("critique: {reflection_ratio: loss}\n", "task: critique.reflection_ratio: only the reflection rule"),
    ],
)
def test_bad_scorer_settings_give_one_line(extra: str, message: str) -> None:
    with pytest.raises(TaskSpecError) as info:
        parse_task(GOOD + extra)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_score_model_names_a_scorer() -> None:
    task = parse_task(GOOD + "score: {metrics: [ifd], model: {model: bundled:smollm2-135m-instruct}}\n")
    assert task.score.model is not None and task.score.model.model == "bundled:smollm2-135m-instruct"
    assert parse_task(GOOD + "score: {metrics: [ifd]}\n").score.model is None  # default: the student


def test_a_recipe_band_may_read_either_ifd_form() -> None:
    recipe = "train: {recipe: {stages: [{data: {score_key: KEY, min_score: 0.5}}]}}\n"
    for key in ("ifd_ppl_pct", "ifd_loss_pct", "rifd_loss"):
        task = parse_task(GOOD + "score: {metrics: [ifd, rifd]}\n" + recipe.replace("KEY", key))
        assert task.train.recipe is not None and task.train.recipe.stages[0].data.score_key == key
    with pytest.raises(TaskSpecError, match="score_key 'rifd_loss' is not a scored column"):
        parse_task(GOOD + "score: {metrics: [ifd]}\n" + recipe.replace("KEY", "rifd_loss"))
