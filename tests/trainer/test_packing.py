"""Padding-free packing (trainer_svc/packing.py): a packed row computes exactly what its samples
compute one by one, with and without a shared prefix, and the bin packers respect their capacity."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from syllabus.models import load_model
from syllabus.prompts import IGNORE_INDEX
from trainer_svc.packing import CompletionLM, bfd_pack, build_batch, sequential_pack, shared_prefix, token_logprobs

pytestmark = pytest.mark.unit


def _examples(prefix: list[int], seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Samples sharing `prefix`, each with its own prompt tail and a response to predict."""
    rng = random.Random(seed)
    out = []
    for n_tail, n_resp in ((3, 4), (1, 6), (5, 2), (2, 3)):
        tail = [rng.randrange(10, 500) for _ in range(n_tail)]
        resp = [rng.randrange(10, 500) for _ in range(n_resp)]
        ids = prefix + tail + resp
        out.append((ids, [IGNORE_INDEX] * (len(prefix) + n_tail) + resp))
    return out


def _alone(lm: CompletionLM, examples, pad_id: int) -> list[torch.Tensor]:
    """Each sample's target log-probs computed in a batch of its own."""
    out = []
    for i in range(len(examples)):
        logp, _, _ = token_logprobs(lm, build_batch([[i]], examples, pad_id))
        out.append(logp)
    return out


@pytest.mark.parametrize("share_prefix", [False, True])
def test_a_packed_row_computes_what_each_sample_computes_alone(tiny_model_dir: Path, share_prefix: bool) -> None:
    model, tok = load_model(str(tiny_model_dir))
    lm = CompletionLM(model).eval()
    examples = _examples(prefix=[101, 102, 103, 104, 105])
    pad = tok.pad_token_id
    with torch.no_grad():
        alone = _alone(lm, examples, pad)
        batch = build_batch([[0, 1, 2], [3]], examples, pad, share_prefix=share_prefix)
        logp, sample_of, _ = token_logprobs(lm, batch)
    # Every sample's response tokens, and nothing else, are targets.
    assert sorted(batch.samples) == [0, 1, 2, 3]
    for k, i in enumerate(batch.samples):
        got = logp[sample_of == k]
        assert got.shape == alone[i].shape == (sum(lab != IGNORE_INDEX for lab in examples[i][1]),)
        torch.testing.assert_close(got, alone[i], atol=1e-4, rtol=1e-4)
    # Sharing the prefix lays it out once per row: fewer tokens for the same logits.
    unshared = build_batch([[0, 1, 2], [3]], examples, pad).num_tokens
    assert batch.num_tokens == (unshared - 2 * 5 if share_prefix else unshared)


def test_a_sample_never_attends_across_its_neighbours() -> None:
    examples = [([1, 2, 3], [IGNORE_INDEX, 2, 3]), ([4, 5], [IGNORE_INDEX, 5])]
    batch = build_batch([[0, 1]], examples, pad_id=0)
    mask = batch.attention_mask[0, 0]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1]  # positions restart per sample
    assert not mask[3:, :3].any() and not mask[:3, 3:].any()  # no attention across samples
    assert mask[:3, :3].equal(torch.ones(3, 3, dtype=torch.bool).tril())
    # targets are the next token inside the sample; the last token of each predicts nothing
    assert batch.targets[0].tolist() == [2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]


def test_the_shared_prefix_stops_before_the_first_predicted_token() -> None:
    a = ([7, 8, 9, 1, 2], [IGNORE_INDEX] * 3 + [1, 2])
    b = ([7, 8, 9, 3], [IGNORE_INDEX] * 3 + [3])
    # Position 2 predicts the first response token of both, so it may not be shared.
    assert shared_prefix([0, 1], [a, b]) == 2
    assert shared_prefix([0], [a]) == 0
    assert shared_prefix([0, 1], [a, ([6, 8, 9, 3], [IGNORE_INDEX] * 3 + [3])]) == 0


def test_bin_packers_respect_capacity_and_order() -> None:
    lengths = [5, 9, 3, 7, 2, 12, 4]
    bins = bfd_pack(lengths, capacity=10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 or len(b) == 1 for b in bins)  # 12 gets a bin of its own
    assert bfd_pack(lengths, 10) == bins  # deterministic
    order = [6, 0, 2, 1, 4, 3]
    seq = sequential_pack(lengths, capacity=10, order=order)
    assert [i for b in seq for i in b] == order  # the curriculum's order survives packing
    assert all(sum(lengths[i] for i in b) <= 10 for b in seq)
