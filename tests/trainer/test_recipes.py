"""Every shipped recipe's header comment says what it turns on: no hidden option (issue 22)."""

from __future__ import annotations

from pathlib import Path

import pytest

from syllabus.recipe import load_recipe

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_a_shipped_recipe_header_names_every_option_it_turns_on(path: Path) -> None:
    text = path.read_text()
    recipe, head = load_recipe(text), header(text)
    assert "Everything this recipe turns on" in head
    hft = any(st.hft for st in recipe.stages)
    averaging = any(st.schedule.average_last_k > 1 for st in recipe.stages)
    merge = any(st.after == "merge" for st in recipe.stages)
    replay = any(st.data.replay > 0 for st in recipe.stages)
    assert ("No HFT" in head) != hft and (not hft or "HFT" in head)
    assert ("no checkpoint averaging" in head) != averaging and (not averaging or "average of its last" in head)
    assert ("no merge" in head) != merge and (not merge or "merged into the weights" in head)
    assert not replay or "replay" in head
    for st in recipe.stages:
        if st.data.score_key:  # a band names its column
            assert st.data.score_key in head
        if st.curriculum.policy != "shuffled":
            assert st.curriculum.policy.upper() in head.upper()
