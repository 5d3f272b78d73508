"""The report page from report documents the e2e job does not produce: a job that stopped before any
round, and an answer-kind job (no labels: an error table, no confusion)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.report import accuracy_series, write_report

pytestmark = pytest.mark.unit


def document(**parts) -> dict:
    base = {
        "job": {"job_id": "j-1", "task": "t", "kind": "classification", "status": "failed", "rounds_total": 2,
                "baseline_accuracy": None, "final_accuracy": None, "labels": ["a", "b"]},
        "rounds": [], "accuracy": {"loop": []}, "baselines": [], "training": [],
        "scores": {"column": None, "rounds": []}, "funnel": {"generated": 0, "leaked": 0, "kept": 0, "selected": 0, "trained": 0},
        "evaluation": None, "examples": {"column": None, "round": None, "top": [], "bottom": []},
    }  # fmt: skip
    return base | parts


def images(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def test_a_job_without_rounds_still_gets_a_page_with_what_there_is(tmp_path: Path) -> None:
    page = write_report(document(), tmp_path / "out")
    assert page == tmp_path / "out" / "report.html"
    assert images(page) == ["accuracy.png", "funnel.png"]
    assert all((page.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for src in images(page))
    text = page.read_text()
    assert "No baseline arms" in text and "Final evaluation" not in text
    assert not list(page.parent.glob(".tmp-*"))  # written atomically


def test_an_answer_kind_job_lists_its_errors_and_escapes_text(tmp_path: Path) -> None:
    evaluation = {"round": 1, "accuracy": 0.5, "correct": 1, "total": 2, "labels": [], "confusion": [],
                  "errors": [{"id": "e1", "input": "2 < 3 & <b>bold</b>?", "label": "5", "prediction": "6"}]}  # fmt: skip
    arm = {"arm": "seeds_only", "comparison": "generated data", "repeats": 2, "lift": 0.25, "ci_low": 0.05, "ci_high": 0.5,
           "verdict": "generated data: +25.0 points [+5.0, +50.0], significant",
           "rounds": [{"round": 1, "accuracy": 0.25, "accuracies": [0.0, 0.5], "trained": 4, "lift": 0.25, "ci_low": 0.05,
                       "ci_high": 0.5, "verdict": "generated data: +25.0 points [+5.0, +50.0], significant"}]}  # fmt: skip
    data = document(
        job={**document()["job"], "kind": "numeric", "labels": [], "status": "completed"},
        rounds=[{"round": 1, "generated": 4, "leaked": 1, "kept": 3, "selected": 2, "trained": 4, "accuracy": 0.5, "train_loss": 1.2}],
        accuracy={"loop": [[0, 0.0], [1, 0.5]]}, baselines=[arm], evaluation=evaluation,
        training=[{"round": 1, "stage": "sft", "samples": 4, "steps": 3, "mean_loss": 1.2, "losses": [1.5, 1.2, 0.9], "stages": []}],
        scores={"column": "ifd_ppl", "rounds": [{"round": 1, "selected": [0.9, 0.8], "dropped": [1.3]}]},
    )  # fmt: skip
    page = write_report(data, tmp_path)
    assert images(page) == ["accuracy.png", "funnel.png", "loss.png", "scores.png"]
    text = page.read_text()
    assert "2 &lt; 3 &amp; &lt;b&gt;bold&lt;/b&gt;?" in text and "<b>bold</b>" not in text
    assert "gold \\ predicted" not in text  # no confusion table without labels
    assert 'class="verdict sig"' in text and arm["verdict"] in text


def test_each_arm_is_drawn_with_its_band_from_the_base_student() -> None:
    arm = {"arm": "random", "comparison": "the scores", "repeats": 3, "lift": 0.1, "ci_low": 0.0, "ci_high": 0.2, "verdict": "",
           "rounds": [{"round": 1, "accuracy": 0.4, "accuracies": [0.3, 0.4, 0.5], "accuracy_ci": [0.3, 0.5], "trained": 4},
                      {"round": 2, "accuracy": 0.5, "accuracies": [0.5, 0.5, 0.5], "accuracy_ci": None, "trained": 4}]}  # fmt: skip
    data = document(accuracy={"loop": [[0, 0.2], [1, 0.5], [2, 0.6]], "loop_ci": [[0, 0.1, 0.3], [1, 0.4, 0.6], [2, None, None]]},
                    baselines=[arm])  # fmt: skip
    assert accuracy_series(data) == [
        ("loop", [0, 1, 2], [0.2, 0.5, 0.6], [0.1, 0.4, None], [0.3, 0.6, None]),
        ("random", [0, 1, 2], [0.2, 0.4, 0.5], [0.1, 0.3, None], [0.3, 0.5, None]),  # round 0: the base student's point and band
    ]


def test_the_baselines_table_shows_each_accuracy_band_and_the_repeats(tmp_path: Path) -> None:
    arm = {"arm": "all_kept", "comparison": "selection", "repeats": 3, "lift": -0.08, "ci_low": -0.15, "ci_high": -0.02,
           "verdict": "selection: -8.0 points [-15.0, -2.0], significant (the baseline beats the loop)",
           "rounds": [{"round": 1, "accuracy": 0.61, "accuracies": [0.6, 0.6, 0.63], "accuracy_ci": [0.55, 0.67], "trained": 88,
                       "lift": -0.08, "ci_low": -0.15, "ci_high": -0.02, "verdict": ""}]}  # fmt: skip
    data = document(accuracy={"loop": [[0, 0.2], [1, 0.53]], "loop_ci": [[0, 0.12, 0.28], [1, 0.43, 0.63]]}, baselines=[arm])
    text = write_report(data, tmp_path).read_text()
    row = re.search(r"<tr><td>all_kept</td>.*?</tr>", text).group(0)
    assert "61.0%" in row and "[55.0, 67.0]" in row and "53.0%" in row and "[43.0, 63.0]" in row
    assert "60.0% / 60.0% / 63.0%" in row
