"""bench.record refuses what is no like-for-like figure (failed correctness checks, unequal work, a
changed machine) and writes the machine into every supersede note; bench.peak counts and measures
what the figures are set against; the trainer arms time the same region."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import peak, record, trainer
from bench.interleave import Run, report

pytestmark = pytest.mark.unit


def _result(work_b: float = 10.0, checks: dict | None = None) -> dict:
    runs = {"a": [Run(10.0, 1.0)] * 3, "b": [Run(work_b, 2.0)] * 3}
    return {**report(runs, "x", {"speedup": ("a", "b")}), **({"checks": checks} if checks is not None else {})}


def test_a_failed_correctness_check_or_unequal_work_is_refused() -> None:
    assert record.refusal(_result(checks={"identical_texts": True}), 0.25) is None
    assert record.refusal(_result(checks={"identical_texts": False, "deterministic": True, "equal_steps": False}), 0.25) == (
        "correctness checks failed: identical_texts, equal_steps")
    assert _result(10.005)["ratios"]["speedup"]["equal_work"]  # within 0.1%: the same work
    assert not _result(11.0)["ratios"]["speedup"]["equal_work"]
    assert record.refusal(_result(11.0), 0.25) == "the arms of speedup did unequal work: not like for like"


ENTRIES = """# R

## bench.scoring — 2026-11-28 10:44 UTC (superseded)

- machine: Intel Xeon (amx_bf16 amx_tile avx512_bf16 avx512f avx2 fma), 2 cores, 24 GiB RAM, Python 3.11.7

## bench.scoring — 2026-11-28 11:35 UTC

- machine: AMD EPYC, 2 cores, 24 GiB RAM, Python 3.11.7, torch 2.13.0+cpu

## bench.generation — 2026-11-28 11:26 UTC

- machine: AMD EPYC (avx2 fma), 2 cores, 24 GiB RAM, Python 3.11.7, torch 2.13.0+cpu
"""


def test_a_figure_on_another_cpu_than_the_entry_it_follows_is_refused_unless_said_why() -> None:
    assert record.latest_cpu(ENTRIES, "scoring") == "AMD EPYC, 2 cores"  # the live entry, not the superseded one
    assert record.latest_cpu(ENTRIES, "trainer") is None
    assert record.cpu_refusal(ENTRIES, "generation", "AMD EPYC (avx2 fma), 2 cores") is None
    assert record.cpu_refusal(ENTRIES, "trainer", "AMD EPYC (avx2 fma), 2 cores") is None  # nothing to follow
    # "AMD EPYC" alone names CPUs with and without AVX-512: flags not recorded count as another machine
    assert record.cpu_refusal(ENTRIES, "scoring", "AMD EPYC (avx2 fma), 2 cores") == (
        "the machine changed (AMD EPYC, 2 cores -> AMD EPYC (avx2 fma), 2 cores): a ratio moves with the CPU's kernels")
    assert "4 cores" in record.cpu_refusal(ENTRIES, "generation", "AMD EPYC (avx2 fma), 4 cores")
    assert record.cpu_label().endswith(" cores") and "(" in record.cpu_label()


def test_the_supersede_note_names_the_machine_of_the_new_entry() -> None:
    marked = record.supersede(ENTRIES, "generation", "2026-12-08 00:00 UTC", "like for like", "AMD EPYC (avx2 fma), 2 cores")
    assert "- superseded by the entry of 2026-12-08 00:00 UTC (on AMD EPYC (avx2 fma), 2 cores): like for like" in marked


def test_an_entry_writes_the_peak_and_each_arms_share_of_it() -> None:
    result = {**_result(), "peak": {"threads": 2, "fp32_gflops": 40.0, "bf16_gflops": 2.0},
              "achieved": {"a": {"gflops": 30.0, "dtype": "fp32", "peak_fraction": 0.75}}}  # fmt: skip
    e = {"cmd": "python -m bench.x", "seconds": 1.0, "load_before": "0", "load_after": "0", "result": result}
    text = record.entry("x", e, "now", None, None, cpu_changed="AVX2 machine from now on")
    assert "- machine peak (this run, 2 threads): fp32 40.0 GFLOP/s, bf16 2.0 GFLOP/s" in text
    assert "- a: 30.0 GFLOP/s fp32, 75% of peak" in text
    assert "- machine changed from the entry before: AVX2 machine from now on" in text


SMOLLM = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152)  # fmt: skip


def test_forward_flops_count_the_linear_weights_a_token_meets() -> None:
    # SmolLM2-135M: q, o 576x576; k, v 576x192; gate, up, down 576x1536; tied lm_head 576x49152
    per_layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert peak.forward_flops_per_token(SMOLLM) == 2 * (30 * per_layer + 576 * 49152)
    assert peak.forward_flops_per_token(SMOLLM) / 2 == pytest.approx(134.5e6, rel=0.01)  # ~ the model's 135M weights
    assert peak.layer_shapes(SMOLLM, 8) == [(8, 576, 576), (8, 576, 1536), (8, 1536, 576), (8, 576, 49152)]
    assert peak.achieved(4e9, 2.0, {"fp32_gflops": 8.0}, "fp32") == {"gflops": 2.0, "dtype": "fp32", "peak_fraction": 0.25}


def test_the_probe_measures_both_dtypes_at_the_models_shapes() -> None:
    tiny = SimpleNamespace(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)
    found = peak.measure_peak(tiny, tokens=16)
    assert found["shapes"] == [[16, 64, 64], [16, 64, 128], [16, 128, 64], [16, 64, 256]]
    assert found["fp32_gflops"] > 0 and found["bf16_gflops"] > 0
    assert found["cpu"]["model"] and set(found["cpu"]["flags"]) <= set(peak.MATMUL_FLAGS)


# -- the trainer arms time the same region: from the samples to the trained adapter ---------------


def _slow(monkeypatch: pytest.MonkeyPatch, owner, name: str, delay: float) -> None:
    inner = getattr(owner, name)

    def slowed(*a, **kw):
        time.sleep(delay)
        return inner(*a, **kw)

    monkeypatch.setattr(owner, name, slowed)


@pytest.mark.parametrize("arm", ["ours", "trl"])
def test_each_trainer_arms_timer_covers_its_setup(arm: str, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two seconds spent preparing the data (ours: encoding the records; TRL: building the trainer, which
    tokenizes and packs) shows in the arm's seconds: a timer that started after the setup would not."""
    import torch

    from syllabus.models import load_model

    torch.manual_seed(0)
    args = trainer.parser().parse_args(["--model", str(tiny_model_dir), "--samples", "8", "--repeats", "1", "--row-tokens", "512"])
    lm, tok = load_model(str(tiny_model_dir))
    data = trainer.chunks(args)[0]
    trainer.TRAINERS[arm](lm, tok, args, data, 1.0)  # warm-up: first-call imports and allocations
    plain = trainer.TRAINERS[arm](lm, tok, args, data, 1.0)["seconds"]
    if arm == "ours":
        from trainer_svc import staged

        _slow(monkeypatch, staged, "encode_records", 2.0)
    else:
        import trl

        _slow(monkeypatch, trl.SFTTrainer, "__init__", 2.0)
    slowed = trainer.TRAINERS[arm](lm, tok, args, data, 1.0)["seconds"]
    assert slowed - plain > 1.5, (plain, slowed)
