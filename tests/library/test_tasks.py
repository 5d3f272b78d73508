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
