"""Interleaved benchmarks: bench.interleave's rounds and statistics, bench.record's refusals, and each
benchmark's own interleaving on the tiny model with one arm deliberately slowed (a sleep inside that
arm's measured span): the ratio the benchmark reports moves by the slowdown.

The machine these run on is shared, so a ratio is compared with the same benchmark's unslowed ratio
from the same process; the arm slowed is a cheap one, by a large factor, and the ratio may miss the
expected change by a factor of 2.5 either way: load that comes and goes between two measure calls
is not interleaved away, and tiny models' calls are short enough to dodge or catch it. Models
run on one torch thread here: on a loaded 2-core machine two OpenMP threads wait on each other and
single calls stall for tens of times their length, which is noise this test does not need.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench import generation, loop, record, scoring, trainer
from bench.interleave import Arm, Run, interleave, report, timed

ROOT = Path(__file__).resolve().parents[2]
SLOW = 8.0


def follows(base: float, slowed: float, expected: float, slack: float = 2.5) -> bool:
    """Whether the ratio moved from `base` to `slowed` by `expected`, give or take a factor `slack`."""
    return expected / slack < slowed / base < expected * slack


def assert_interleaved(result: dict, arms: list[str], unit: str, keys: list[str]) -> None:
    """Per-arm medians and spreads, per-round ratios, and each key the median of its ratio."""
    assert sorted(result["arms"]) == sorted(arms)
    for arm in arms:
        for stat in ("median", "spread", "rel_spread", "values"):
            assert stat in result["arms"][arm][f"{unit}_per_s"]
        assert len(result["arms"][arm]["seconds"]["values"]) == result["repeats"]
    for key in keys:
        assert result[key] == result["ratios"][key]["median"]
        assert len(result["ratios"][key]["values"]) == result["repeats"]


# -- the helper and bench.record, without models ----------------------------------------------


@pytest.mark.unit
def test_arms_take_turns_and_the_ratio_is_the_median_of_the_rounds() -> None:
    calls: list[tuple[str, int]] = []
    seconds = {"a": [1.0, 2.0, 1.0], "b": [2.0, 2.0, 4.0], "c": [1.0, 1.0, 1.0]}

    def arm(name: str) -> Arm:
        def run(chunk: int) -> Run:
            calls.append((name, chunk))
            return Run(10, seconds[name][chunk])

        return Arm(name, run)

    runs = interleave([arm("a"), arm("b"), arm("c")], 3, say=lambda _: None)
    # the order reverses every round: a and b, listed side by side, always run one right after the other
    assert calls == [("a", 0), ("b", 0), ("c", 0), ("c", 1), ("b", 1), ("a", 1), ("a", 2), ("b", 2), ("c", 2)]
    result = report(runs, "tokens", {"speedup": ("a", "b")})
    assert result["ratios"]["speedup"]["values"] == [2.0, 1.0, 4.0]  # a's rate over b's, round by round
    assert result["speedup"] == 2.0
    assert result["ratios"]["speedup"]["spread"] == 3.0
    assert result["ratios"]["speedup"]["rel_spread"] == 1.5
    assert result["arms"]["a"]["tokens_per_s"]["median"] == 10.0
    assert result["arms"]["b"]["seconds"] == {"median": 2.0, "spread": 2.0, "rel_spread": 1.0, "min": 2.0, "max": 4.0,
                                              "values": [2.0, 2.0, 4.0]}
    assert result["repeats"] == 3


@pytest.mark.unit
def test_timed_slowdown_sleeps_inside_the_measured_span() -> None:
    _, plain = timed(lambda: time.sleep(0.05))
    out, slowed = timed(lambda: time.sleep(0.05) or "done", 3.0)
    assert out == "done"
    assert 0.05 <= plain < 0.1
    assert 0.15 <= slowed < 0.3
    with pytest.raises(ValueError, match="slowdown"):
        timed(lambda: None, 0.5)


def _result(values: list[float]) -> dict:
    """Arm a `values` times as fast as arm b in each round, on the same work."""
    return report({"a": [Run(1.0, 1 / v) for v in values], "b": [Run(1.0, 1.0) for _ in values]}, "x", {"speedup": ("a", "b")})


@pytest.mark.unit
def test_record_refuses_noisy_short_and_old_results() -> None:
    assert record.refusal(_result([2.0, 2.1, 1.9]), 0.25) is None
    noisy = record.refusal(_result([2.0, 3.0, 1.5]), 0.25)
    assert noisy is not None and "speedup spread 1.5-3.0 is 75% of its median 2.0 (limit 25%)" in noisy
    assert "2 rounds, fewer than 3" in record.refusal(_result([2.0, 2.0]), 0.25)
    assert "before bench.interleave" in record.refusal({"speedup": 8.5, "threads": 1}, 0.25)
    assert record.figures(_result([2.0, 2.1, 1.9])) == [
        "- speedup: 2.0 (a/b x/s, median of 3 interleaved rounds; range 1.9-2.1, 10% of the median)"
    ]


@pytest.mark.unit
def test_supersede_marks_earlier_entries_once() -> None:
    text = "# R\n\n## bench.scoring — 2026-11-25 02:09 UTC\n\n- machine: m\n\n## bench.trainer — 2026-11-25 02:27 UTC\n\n- machine: m\n"
    marked = record.supersede(text, "scoring", "2026-11-28 10:00 UTC", "noisy non-interleaved measurement")
    assert marked == ("# R\n\n## bench.scoring — 2026-11-25 02:09 UTC (superseded)\n\n"
                      "- superseded by the entry of 2026-11-28 10:00 UTC: noisy non-interleaved measurement\n- machine: m\n\n"
                      "## bench.trainer — 2026-11-25 02:27 UTC\n\n- machine: m\n")
    assert record.supersede(marked, "scoring", "later", "again") == marked


# -- each benchmark's interleaving on the tiny model, one arm slowed -----------------------------


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.unit
@pytest.mark.usefixtures("one_thread")
def test_generation_speedup_follows_a_slowed_arm(tiny_model_dir: Path) -> None:
    from teacher_svc.backend import ChatPrompt, TransformersBackend

    backend = TransformersBackend.load(str(tiny_model_dir))
    prompts = [ChatPrompt(p) for p in generation.build_prompts(8)]
    base = generation.measure(backend, prompts, max_new_tokens=12, batch_size=8, repeats=3)
    slowed = generation.measure(backend, prompts, max_new_tokens=12, batch_size=8, repeats=3, slow={"batched": SLOW})
    assert_interleaved(base, ["batched", "sequential"], "tokens", ["speedup"])
    assert follows(base["speedup"], slowed["speedup"], 1 / SLOW), (base["ratios"], slowed["ratios"])
    assert base["identical_share"] == 1.0 and base["deterministic"]


@pytest.mark.unit
@pytest.mark.usefixtures("one_thread")
def test_scoring_speedups_follow_slowed_arms(tiny_model_dir: Path) -> None:
    from syllabus.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    ref_model = scoring.reference_adapter(model, std=0.02)
    samples = scoring.build_samples(tok, n=6)
    base = scoring.measure(model, ref_model, tok, samples, repeats=3)
    # the reference IFD loop slowed (speedup rises), the scorer of the loop's mix slowed (speedup_mix falls)
    slowed = scoring.measure(model, ref_model, tok, samples, repeats=3, slow={"reference": SLOW, "scorer_mix": SLOW})
    assert_interleaved(base, ["reference", "scorer", "scorer_fp32", "reference_mix", "scorer_mix"], "samples",
                       ["speedup", "speedup_fp32", "speedup_mix"])
    assert follows(base["speedup"], slowed["speedup"], SLOW), (base["ratios"], slowed["ratios"])
    assert follows(base["speedup_mix"], slowed["speedup_mix"], 1 / SLOW), (base["ratios"], slowed["ratios"])
    assert base["metric_mix"] == ["loss_base", "loss_ref", "learnability", "ifd"]
    assert base["max_abs_diff_fp32"] < 1e-3 and base["max_abs_diff_mix"] < 1e-2


@pytest.mark.unit
def test_trainer_ratio_follows_a_slowed_arm(tiny_model_dir: Path) -> None:
    args = trainer.parser().parse_args(["--model", str(tiny_model_dir), "--samples", "8", "--repeats", "1", "--row-tokens", "512",
                                   "--threads", "1"])
    workers = trainer.start_workers(args)
    try:
        base = trainer.measure(workers, 1)
        slowed = trainer.measure(workers, 1, slow={"ours": SLOW})
    finally:
        for w in workers.values():
            w.close()
    assert_interleaved(base, ["ours", "trl", "ours_unshared"], "tokens", ["tokens_per_s_ratio", "equal_tokens_ratio"])
    assert follows(base["tokens_per_s_ratio"], slowed["tokens_per_s_ratio"], 1 / SLOW), (base["ratios"], slowed["ratios"])
    # only ours was slowed: the equal-token ratio (ours without prefix sharing / TRL) stays where it was
    assert follows(base["equal_tokens_ratio"], slowed["equal_tokens_ratio"], 1.0), (base["ratios"], slowed["ratios"])
    assert base["tokens_ours"] == base["tokens_trl"] == base["tokens_ours_unshared"] > 0  # the same work in every arm
    assert base["ratios"]["tokens_per_s_ratio"]["equal_work"] and base["checks"]["equal_steps"]
    # laid out in full, ours processes TRL's tokens; sharing prefixes, fewer
    assert base["processed_tokens_rel_diff"] < 0.05
    assert base["processed_tokens_ours"] < base["processed_tokens_ours_unshared"]


@pytest.mark.integration
def test_loop_speedup_follows_a_slowed_arm(banking77_tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the stack's services: one torch thread each
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump(banking77_tiny(2, generate={"per_label": 1, "max_new_tokens": 8, "seed": 0},
                                                  train={"epochs": 1, "batch_size": 4})))
    # Both arms are this checkout, so they share one stack: the ratio without the slowdown is 1.
    stack = loop.start_stacks({"candidate": ROOT}, task)["candidate"]
    try:
        assert loop.warm_up(stack) > 0  # the first job on a stack pays one-time costs (imports, first allocations)
        result = loop.measure({"baseline": stack, "candidate": stack}, 1, slow={"candidate": 3.0})
    finally:
        stack.close()
    assert_interleaved(result, ["baseline", "candidate"], "jobs", ["speedup"])
    assert follows(1.0, result["speedup"], 1 / 3.0, slack=2.0), result["ratios"]
    assert all(0 <= a <= 1 for a in result["candidate"]["final_accuracy"])
    assert [s["name"] for s in result["baseline"]["steps"]][:2] == ["prepare", "baseline-eval"]
