from __future__ import annotations

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
        ("select: {policy: threshold}\n", "policy threshold needs `threshold`"),
        ("rounds: 1\ntailor: {every: 1}\n", "tailor: needs rounds >= 2"),
        ("generate: {modes: [{mode: expand}, {mode: expand}]}\n", "modes: expand given twice"),
        ("generate: {modes: [{mode: rationales, styles: [haiku]}]}\n", "generate.modes[0].rationales.styles[0]"),
        ("critique: {mode: vibes}\n", "critique.mode"),
        ("score: {metrics: [ifd, magic]}\n", "score.metrics[1]"),
        ("train: {recipe: {stages: [{data: {score_key: difficulty100}}]}}\n",
         "score_key 'difficulty100' is not a scored column; scored: ['learnability', 'learnability_pct'] (add difficulty to score.metrics)"),
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
