"""Staged training (a `Recipe`), readable top to bottom: setup -> stages -> save.

    from syllabus.recipe import load_recipe
    from trainer_svc.staged import run_recipe
    recipe = load_recipe(open("recipes/chain_of_lora_2stage.yaml").read())
    ref, result = run_recipe("bundled:smollm2-135m-instruct", records, recipe, store, "adapters/x.tar")

Records are dicts: `{"prompt", "response"}` for SFT, `{"prompt", "chosen", "rejected"}` for DPO,
`{"question", "solution", "critique"}` (or prompt/response) for CFT, with optional score fields and
"category" for filters and curricula. A record with `"heldout": true` is never trained on, by any
stage or replay: it is the held-out split on which a PUDF stage estimates the model's ability.

How one step runs: the step's samples are packed into rows (`trainer_svc.packing`), the model body
runs once over the rows, and the LM head runs only at target positions. SFT/CFT loss is the mean
NLL over the step's target tokens; DPO compares summed log-probabilities of chosen and rejected
responses with those of the reference = the same model with its adapter disabled.

Between stages: `after: merge` is Chain of LoRA — the adapter is folded into the weights, the next
stage gets a fresh adapter and a fresh optimiser. The published adapter of a chained run is one
peft LoRA whose rank is the sum of the stages' ranks (A stacked, B stacked and pre-scaled), so
base + that adapter = base + the sum of stage deltas exactly; merged HF weights on request.

Resumable: with a checkpoint key, the full training state (stage, step, adapters of merged
stages, trainable weights, optimiser, RNG, curriculum state, per-stage losses, seconds and records)
is saved every `checkpoint_every` steps and at stage ends; a restarted run loads it and continues
with the same data order, ending with the same weights as an uninterrupted run.

Distributed: pass `dist=True` inside an initialised torch.distributed process group (gloo on CPU,
nccl on GPUs): every rank builds the same plan, takes every world-th row of each step, gradients
are averaged by DistributedDataParallel and the loss is normalised by the global token count, so
the update equals the single-process one. Rank 0 writes checkpoints and outputs.
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from syllabus.artifacts import ArtifactError, ArtifactRef, ArtifactStore, training_metrics_key
from syllabus.prompts import IGNORE_INDEX, encode_example
from syllabus.recipe import Recipe, Stage, recipe_models
from syllabus.topk import TopK, TopKSet
from trainer_svc.curriculum import PUDF, SEC, AdaRFT, checkpoint_weights, irt_ability, lr_at
from trainer_svc.objectives import (
    TEACHER_OBJECTIVES,
    anchored_step_loss,
    dft_step_loss,
    kd_step_loss,
    opd_step_loss,
    reduce_sum,
)
from trainer_svc.packing import (
    CompletionLM,
    Example,
    bfd_pack,
    build_batch,
    per_sample_sums,
    sequential_pack,
    token_logprobs,
)

log = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Training was asked to stop (cancelled, or the service is shutting down) before it finished."""


@dataclass
class Progress:
    """One optimiser step, as reported to `on_step`."""

    stage: int
    stage_name: str
    stage_count: int
    step: int  # within the stage, from 1
    total_steps: int  # of the stage
    global_step: int
    global_total: int
    loss: float
    lr: float
    tokens_per_s: float
    eta_s: float
    tokens: int = 0  # real tokens of this step on every rank (this rank's x world, as tokens_per_s)


@dataclass
class RecipeResult:
    stage_losses: list[list[float]] = field(default_factory=list)
    """Loss of every step, per stage."""
    stage_lrs: list[list[float]] = field(default_factory=list)
    tokens: int = 0
    """Real tokens processed (this rank)."""
    seconds: float = 0.0
    resumed_from: int = 0
    """Global step the run resumed from (0: fresh)."""
    merged_ref: ArtifactRef | None = None
    stage_seconds: list[float] = field(default_factory=list)
    """Wall seconds per stage, setup to merge; a resumed run adds those of earlier attempts (as
    of their last checkpoint)."""
    stage_samples: list[set[int]] = field(default_factory=list)
    """Indices of the records each stage trained on (its replay included)."""
    stage_curriculum: list[dict] = field(default_factory=list)
    """Curriculum metrics per stage (`StepSource.metrics`: PUDF's abilities and caps)."""
    stage_batches: list[list[list[int]]] = field(default_factory=list)
    """Per stage, per step in order: the record indices the step trained on (rows flattened, in row
    order), so a test or a report can check the order a curriculum chose on the batches themselves."""
    stage_trace: list[list[dict]] = field(default_factory=list)
    """Per stage, per step: the curriculum's state before the step (`StepSource.state`: SEC's Q and
    arm probabilities, AdaRFT's target) and the feedback it got after it (`items`, `loss_before`,
    `loss_after`: per-record losses, in the order the policy received them)."""

    def open_stage(self) -> None:
        self.stage_losses.append([])
        self.stage_lrs.append([])
        self.stage_seconds.append(0.0)
        self.stage_samples.append(set())
        self.stage_curriculum.append({})
        self.stage_batches.append([])
        self.stage_trace.append([])

    def per_stage(self) -> dict:
        """The per-stage lists, as a checkpoint keeps them (`RecipeResult(**d)` restores them)."""
        return {
            "stage_losses": self.stage_losses, "stage_lrs": self.stage_lrs, "stage_seconds": self.stage_seconds,
            "stage_samples": self.stage_samples, "stage_curriculum": self.stage_curriculum,
            "stage_batches": self.stage_batches, "stage_trace": self.stage_trace, "tokens": self.tokens,
        }  # fmt: skip

    @property
    def losses(self) -> list[float]:
        return [x for s in self.stage_losses for x in s]

    @property
    def mean_loss(self) -> float:
        xs = self.losses
        return sum(xs) / len(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------------
# Data


def cft_prompt(question: str, solution: str) -> str:
    """Critique fine-tuning input (TIGER-AI-Lab CFT): the critique is the target."""
    return f"Question: {question}\n\nSolution: {solution}"


def encode_records(
    tokenizer, records: Sequence[dict], objective: str, max_len: int, indices: Sequence[int], out: dict
) -> dict[int, list[Example]]:
    """Per record index, its sequences: [sample] for sft/cft, [chosen, rejected] for dpo (into `out`)."""
    for i in indices:
        if i in out:
            continue
        r = records[i]
        try:
            if objective == "dpo":
                out[i] = [
                    encode_example(tokenizer, r["prompt"], r["chosen"], max_len),
                    encode_example(tokenizer, r["prompt"], r["rejected"], max_len),
                ]
            elif objective == "cft" and "critique" in r:
                out[i] = [encode_example(tokenizer, cft_prompt(r["question"], r["solution"]), r["critique"], max_len)]
            else:
                out[i] = [encode_example(tokenizer, r["prompt"], r["response"], max_len)]
        except KeyError as e:
            raise ValueError(f"record {i}: missing {e.args[0]!r} for objective {objective}") from None
    return out


def is_heldout(record: dict, index: int) -> bool:
    """`"heldout": true`: a record no stage trains on (PUDF's probe set)."""
    v = record.get("heldout", False)
    if not isinstance(v, bool):
        # A dataset error, reported like the dataset's others (ValueError -> INVALID_ARGUMENT), not a TypeError.
        raise ValueError(f'record {index}: "heldout" must be true or false, got {v!r}')  # noqa: TRY004
    return v


def select_records(records: Sequence[dict], stage: Stage) -> list[int]:
    """Indices of the records passing the stage's data filter (before replay); never a held-out one."""
    f = stage.data
    keep = []
    for i, r in enumerate(records):
        if is_heldout(r, i):
            continue
        if f.categories and r.get("category") not in f.categories:
            continue
        if f.score_key is not None:
            s = r.get(f.score_key)
            if s is None:
                continue
            if f.min_score is not None and s < f.min_score:
                continue
            if f.max_score is not None and s >= f.max_score:
                continue
        keep.append(i)
    return keep


def with_replay(own: list[int], earlier: list[int], share: float, seed: int) -> list[int]:
    """Add round(share * len(own)) records drawn without replacement from earlier stages' records
    (`select_records` results, so never a held-out one)."""
    pool = sorted(set(earlier) - set(own))
    k = min(len(pool), round(share * len(own)))
    return own + random.Random(seed).sample(pool, k) if k else own


# ---------------------------------------------------------------------------------------------------
# Step sources: what each step trains on (rows of record indices). Picklable, for checkpoints.


class StepSource:
    """Yields the rows of each step; `feedback` gets per-record losses (adaptive policies)."""

    total: int

    def next_rows(self) -> list[list[int]]:
        raise NotImplementedError

    def feedback(self, items: list[int], loss_before: list[float], loss_after: list[float] | None) -> None:
        pass

    def metrics(self) -> dict:
        """Extra keys of the stage's entry in the published metrics."""
        return {}

    def state(self) -> dict:
        """The policy's state before a step, for `RecipeResult.stage_trace` (adaptive policies)."""
        return {}

    wants_after = False  # does feedback need the loss after the update (SEC)?


class EmptySource(StepSource):
    """A stage no record passes the filter of: no step."""

    total = 0


def _pack(recipe: Recipe, lengths: Sequence[int], order: Sequence[int], keep_order: bool) -> list[list[int]]:
    if not recipe.packing:
        return [[i] for i in order]
    if keep_order:
        return sequential_pack(lengths, recipe.row_tokens, order)
    return bfd_pack(lengths, recipe.row_tokens, order)


def _rows_per_step(recipe: Recipe) -> int:
    return recipe.rows_per_step if recipe.packing else recipe.batch_size


class EpochSource(StepSource):
    """shuffled (seeded, packed best-fit) or static (ascending score, packed in order)."""

    def __init__(self, recipe: Recipe, stage: Stage, items: list[int], lengths: Sequence[int], records, seed: int):
        self.recipe, self.items, self.lengths, self.seed = recipe, items, list(lengths), seed
        self.static = stage.curriculum.policy == "static"
        if self.static:
            key = stage.curriculum.score_key
            self.items = sorted(items, key=lambda i: records[i][key], reverse=stage.curriculum.descending)
        self.epoch, self.plan, self.pos = -1, [], 0
        per_epoch = len(self._epoch_plan(0))
        self.total = stage.steps or max(1, math.ceil(stage.epochs * per_epoch))

    def _epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        g = random.Random(self.seed * 1_000_003 + epoch)
        order = list(self.items)
        if not self.static:
            g.shuffle(order)
        n = self.recipe.samples_per_step
        if self.recipe.packing and n:
            # The same samples per step as unpacked training, each step's samples packed into rows.
            chunks = [order[i : i + n] for i in range(0, len(order), n)]
            return [_pack(self.recipe, self.lengths, c, keep_order=self.static) for c in chunks]
        bins = _pack(self.recipe, self.lengths, order, keep_order=self.static)
        if not self.static:
            g.shuffle(bins)
        k = _rows_per_step(self.recipe)
        return [bins[i : i + k] for i in range(0, len(bins), k)]

    def next_rows(self) -> list[list[int]]:
        if self.pos >= len(self.plan):
            self.epoch += 1
            self.plan, self.pos = self._epoch_plan(self.epoch), 0
        self.pos += 1
        return self.plan[self.pos - 1]


class SECSource(StepSource):
    """Self-Evolving Curriculum: arms from `arm_key` (or score bins); reward = batch loss drop."""

    wants_after = True

    def __init__(self, recipe: Recipe, stage: Stage, items: list[int], lengths, records, seed: int):
        c = stage.curriculum
        self.recipe, self.items, self.lengths = recipe, items, list(lengths)
        names = []
        for i in items:
            r = records[i]
            if c.arm_key in r:
                names.append(str(r[c.arm_key]))
            else:
                scores = sorted(records[j][c.score_key] for j in items)
                rank = sorted(scores).index(r[c.score_key])
                names.append(f"bin{min(c.bins - 1, rank * c.bins // len(scores))}")
        self.arm_names = sorted(set(names))
        arm_of = [self.arm_names.index(n) for n in names]
        self.sec = SEC(arm_of, len(self.arm_names), c.sec_alpha, c.sec_tau, seed)
        self.pos_of = {rec: p for p, rec in enumerate(items)}
        self.total = stage.steps or max(1, math.ceil(stage.epochs * math.ceil(len(items) / recipe.batch_size)))

    def state(self) -> dict:
        return {"arms": list(self.arm_names), "q": list(self.sec.q), "probs": self.sec.probs()}

    def next_rows(self) -> list[list[int]]:
        chosen = [self.items[p] for p in self.sec.sample(self.recipe.batch_size)]
        return _pack(self.recipe, self.lengths, chosen, keep_order=False)

    def feedback(self, items, loss_before, loss_after) -> None:
        by_arm: dict[int, list[float]] = {}
        for rec, b, a in zip(items, loss_before, loss_after or loss_before, strict=True):
            by_arm.setdefault(self.sec.arm_of[self.pos_of[rec]], []).append(b - a)
        self.sec.update({arm: sum(v) / len(v) for arm, v in by_arm.items()})


class AdaRFTSource(StepSource):
    """AdaRFT: batches nearest the target difficulty (record score, 0..100); reward = mean exp(-loss)."""

    def __init__(self, recipe: Recipe, stage: Stage, items: list[int], lengths, records, seed: int):
        c = stage.curriculum
        self.recipe, self.items, self.lengths = recipe, items, list(lengths)
        lo, hi = c.adarft_range
        self.ada = AdaRFT([records[i][c.score_key] for i in items], c.adarft_eta, c.adarft_alpha, c.adarft_beta, c.adarft_t0, lo, hi)
        self.total = stage.steps or max(1, math.ceil(stage.epochs * math.ceil(len(items) / recipe.batch_size)))

    def state(self) -> dict:
        return {"target": self.ada.target}

    def next_rows(self) -> list[list[int]]:
        chosen = [self.items[p] for p in self.ada.sample(self.recipe.batch_size)]
        return _pack(self.recipe, self.lengths, chosen, keep_order=False)

    def feedback(self, items, loss_before, loss_after) -> None:
        self.ada.update(sum(math.exp(-x) for x in loss_before) / len(loss_before))


class PUDFSource(StepSource):
    """PUDF (DDaCLAE): each epoch trains on the records with difficulty (IRT b) <= cap; the cap follows
    the model's ability theta, estimated before the first epoch and after every epoch on the probe
    set (right = every target token is the model's argmax; `trainer_svc.curriculum.PUDF`).

    The probe set is the held-out records (`"heldout": true`) that carry the difficulty, as the paper
    estimates ability on a dev split; without any, the first 64 training records stand in (the
    stage logs a warning). The step budget is `epochs` passes over the whole pool, as the shuffled
    baseline's; a PUDF epoch is one pass over the records eligible then, so it is usually shorter."""

    PROBE_FALLBACK = 64

    def __init__(self, recipe: Recipe, stage: Stage, items: list[int], lengths, records, seed: int):
        c = stage.curriculum
        self.recipe, self.items, self.lengths, self.seed = recipe, items, list(lengths), seed
        self.pudf = PUDF([records[i][c.score_key] for i in items], c.pudf_step)
        k = _rows_per_step(recipe)
        per_epoch = math.ceil(len(_pack(recipe, lengths, items, keep_order=False)) / k)
        self.total = stage.steps or max(1, math.ceil(stage.epochs * per_epoch))
        self.epoch, self.plan, self.pos = -1, [], 0
        held = [i for i, r in enumerate(records) if is_heldout(r, i) and r.get(c.score_key) is not None]
        self.probe_from = "heldout" if held else "training"
        self.probe = held or items[: self.PROBE_FALLBACK]
        self.probe_b = [records[i][c.score_key] for i in self.probe]
        self.abilities: list[float] = []
        self.caps: list[float] = []
        self.pending_ability = True  # the first epoch waits for theta_0

    def next_rows(self) -> list[list[int]]:
        if self.pos >= len(self.plan):
            if self.pending_ability:
                raise RuntimeError("PUDF: an epoch may start only after the ability was estimated (set_ability)")
            self.epoch += 1
            g = random.Random(self.seed * 1_000_003 + self.epoch)
            order = [self.items[p] for p in self.pudf.eligible()]
            g.shuffle(order)
            bins = _pack(self.recipe, self.lengths, order, keep_order=False)
            k = _rows_per_step(self.recipe)
            self.plan, self.pos = [bins[i : i + k] for i in range(0, len(bins), k)], 0
        self.pos += 1
        if self.pos == len(self.plan):
            self.pending_ability = True
        return self.plan[self.pos - 1]

    def set_ability(self, right: Sequence[bool]) -> None:
        """The probe's right/wrong (in `probe` order) -> theta -> the cap of the next epoch."""
        theta = irt_ability(self.probe_b, list(right))
        self.pudf.update(theta)
        self.abilities.append(theta)
        self.caps.append(self.pudf.cap)
        self.pending_ability = False

    def metrics(self) -> dict:
        """abilities[k]: theta before epoch k+1 (the last: after the last full epoch); caps[k]: the cap it set."""
        return {"abilities": list(self.abilities), "caps": list(self.caps), "probe": self.probe_from,
                "probe_size": len(self.probe)}  # fmt: skip


SOURCES = {"shuffled": EpochSource, "static": EpochSource, "sec": SECSource, "adarft": AdaRFTSource, "pudf": PUDFSource}


# ---------------------------------------------------------------------------------------------------
# Model: adapters, Chain of LoRA, HFT


def new_adapter(lm, stage: Stage, seed: int, init_adapter: Path | None = None):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(seed)
    if init_adapter is not None:
        return PeftModel.from_pretrained(lm, init_adapter, is_trainable=True)
    lc = stage.lora
    cfg = LoraConfig(r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.targets), task_type="CAUSAL_LM")
    return get_peft_model(lm, cfg)


def adapter_snapshot(model) -> dict:
    """The live adapter's weights and scaling (what a merged stage leaves for the chained output)."""
    from peft import get_peft_model_state_dict

    cfg = model.peft_config["default"]
    return {
        "state": {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()},
        "scale": cfg.lora_alpha / cfg.r,
        "rank": cfg.r,
        "targets": sorted(cfg.target_modules),
    }


def _category(name: str) -> str:
    return "attn" if "self_attn" in name else "mlp" if ".mlp." in name else "norm"


def hft_freeze(model, seed: int) -> list[torch.nn.Parameter]:
    """Freeze a random half of the trainable units per (layer, category); return what was frozen.

    A unit is a LoRA-adapted module (its A and B together) or, in full fine-tuning, one parameter.
    With an odd count the middle unit is frozen with probability 1/2.
    """
    import re

    groups: dict[tuple[str, str], dict[str, list[torch.nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        unit = re.sub(r"\.lora_[AB]\..*$", "", name)
        m = re.search(r"layers\.(\d+)\.", name)
        groups.setdefault((m.group(1) if m else "-", _category(name)), {}).setdefault(unit, []).append(p)
    rng = random.Random(seed)
    frozen = []
    for key in sorted(groups):
        units = sorted(groups[key])
        rng.shuffle(units)
        n = len(units) // 2 + (1 if len(units) % 2 and rng.random() < 0.5 else 0)
        for u in units[:n]:
            for p in groups[key][u]:
                p.requires_grad_(False)
                frozen.append(p)
    return frozen


def chained_adapter_files(snapshots: Sequence[dict], base_ref: str, dest: Path) -> None:
    """Write one peft LoRA equal to the sum of the stages' deltas: A stacked, B stacked * scale_t,
    rank = sum of ranks, alpha = rank (scale 1). Modules a stage did not adapt get zero blocks."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    total_rank = sum(s["rank"] for s in snapshots)
    modules = sorted({k.rsplit(".lora_", 1)[0] for s in snapshots for k in s["state"]})
    tensors = {}
    for mod in modules:
        a_blocks, b_blocks = [], []
        for s in snapshots:
            a = s["state"].get(f"{mod}.lora_A.weight")
            b = s["state"].get(f"{mod}.lora_B.weight")
            if a is None:  # shapes from any stage that has the module
                ref = next(t for t in snapshots if f"{mod}.lora_A.weight" in t["state"])["state"]
                a = torch.zeros(s["rank"], ref[f"{mod}.lora_A.weight"].shape[1])
                b = torch.zeros(ref[f"{mod}.lora_B.weight"].shape[0], s["rank"])
            else:
                b = b * s["scale"]
            a_blocks.append(a)
            b_blocks.append(b)
        tensors[f"{mod}.lora_A.weight"] = torch.cat(a_blocks, 0).contiguous()
        tensors[f"{mod}.lora_B.weight"] = torch.cat(b_blocks, 1).contiguous()
    targets = sorted({t for s in snapshots for t in s["targets"]})
    dest.mkdir(parents=True, exist_ok=True)
    LoraConfig(r=total_rank, lora_alpha=total_rank, target_modules=targets, task_type="CAUSAL_LM", base_model_name_or_path=base_ref).save_pretrained(dest)
    save_file(tensors, dest / "adapter_model.safetensors", metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------------
# Objectives


def sft_step_loss(lm, batch, n_items: int, dist_on: bool, world: int, real: bool = True):
    """(loss to backpropagate, reported loss, per-item mean NLL) — loss = global mean over target tokens.

    `real=False`: a rank with no row of its own this step runs a stand-in row (DDP needs every rank
    in the backward) whose tokens count nowhere: not in the global token count, not in the loss."""
    logp, sample_of, _ = token_logprobs(lm, batch)
    nll_sum = -logp.sum()
    n_global = reduce_sum(torch.tensor(float(logp.numel()) if real else 0.0), dist_on)
    # DDP averages gradients over ranks; * world turns that into the global token mean.
    loss = nll_sum / n_global.clamp(min=1) * world
    reported = reduce_sum(nll_sum.detach() if real else torch.zeros(()), dist_on) / n_global.clamp(min=1)
    sums, counts = per_sample_sums(-logp.detach(), sample_of, len(batch.samples))
    return loss, reported.item(), (sums / counts.clamp(min=1)).tolist()


def dpo_step_loss(lm, core, peft_model, batch, beta: float, dist_on: bool, world: int, real: bool = True):
    """DPO: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), mean over pairs.

    Sequences alternate chosen, rejected in `batch.samples` order (pairs stay in one row)."""
    logp, sample_of, _ = token_logprobs(lm, batch)
    pol, _ = per_sample_sums(logp, sample_of, len(batch.samples))
    with torch.no_grad(), peft_model.disable_adapter():
        ref_lp, ref_of, _ = token_logprobs(core, batch)  # not through DDP: no gradient to sync
        ref, _ = per_sample_sums(ref_lp, ref_of, len(batch.samples))
    margin = (pol[0::2] - ref[0::2]) - (pol[1::2] - ref[1::2])
    losses = -F.logsigmoid(beta * margin)
    n_global = reduce_sum(torch.tensor(float(losses.numel()) if real else 0.0), dist_on)
    loss = losses.sum() / n_global * world
    reported = reduce_sum(losses.detach().sum() if real else torch.zeros(()), dist_on) / n_global
    return loss, reported.item(), losses.detach().tolist()


def _kd_rows(topk: TopKSet, records: Sequence[dict], enc: dict[int, list[Example]]) -> dict[int, TopK]:
    """Per encoded record, the teacher's rows for its targets (found by the record's content)."""
    return {
        i: topk.for_record(records[i]["prompt"], records[i]["response"], sum(t != IGNORE_INDEX for t in ex[0][1]))
        for i, ex in enc.items()
    }


# ---------------------------------------------------------------------------------------------------
# Checkpoints


CKPT_CLASSES = (StepSource, EmptySource, EpochSource, SECSource, AdaRFTSource, PUDFSource, SEC, AdaRFT, PUDF, random.Random,
                *recipe_models())  # fmt: skip
"""What a checkpoint's curriculum state pickles besides tensors and plain data: the sources, their
policies and RNGs, and the recipe they hold (its pydantic models)."""
CKPT_FORMAT = 3
"""2: per-stage seconds, records and curriculum metrics; PUDF's probe set and pre-epoch ability.
3: per-step batches and curriculum trace (`RecipeResult.stage_batches`, `stage_trace`)."""


def _save_ckpt(store: ArtifactStore, key: str, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": CKPT_FORMAT, **state}, buf)
    store.put_bytes(key, buf.getvalue())


def _load_ckpt(store: ArtifactStore, key: str) -> dict | None:
    ref = store.stat(key)
    if ref is None:
        return None
    # weights_only: a checkpoint from the store is data, never code; only the curriculum state's own
    # classes may be rebuilt (CKPT_CLASSES), so a tampered checkpoint cannot run anything on load.
    try:
        with torch.serialization.safe_globals(list(CKPT_CLASSES)):
            ckpt = torch.load(io.BytesIO(store.get_bytes(ref)), weights_only=True)
    except pickle.UnpicklingError as e:  # a global outside CKPT_CLASSES: not a checkpoint this code wrote
        log.warning("checkpoint %s is refused (%s): training from the start", key, str(e).splitlines()[-1][:200])
        return None
    if ckpt.get("format") != CKPT_FORMAT:
        # Its curriculum state may not fit this code; a fresh run ends with the same weights.
        log.warning("checkpoint %s has format %s, not %d: training from the start", key, ckpt.get("format"), CKPT_FORMAT)
        return None
    return ckpt


def trainable_state(model) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad or "lora_" in n}


# ---------------------------------------------------------------------------------------------------
# The recipe


def train_recipe(
    lm,
    tokenizer,
    records: Sequence[dict],
    recipe: Recipe,
    *,
    init_adapter: Path | None = None,
    store: ArtifactStore | None = None,
    checkpoint_key: str | None = None,
    on_step: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    dist_on: bool = False,
    teacher_topk: TopKSet | None = None,
) -> tuple[Any, list[dict], RecipeResult]:
    """Run every stage; return (final model, merged stage snapshots, result).

    The final model is a PeftModel if the last stage left a live adapter, else the (merged) LM.
    `teacher_topk`: the teacher's top-k log-probs of the records, which every `kd` stage needs."""
    if teacher_topk is None and any(st.objective in TEACHER_OBJECTIVES for st in recipe.stages):
        raise ValueError("a kd or opd stage needs the teacher's top-k log-probs of the records (teacher_logprobs)")
    rank, world = 0, 1
    if dist_on:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    device = next(lm.parameters()).device
    pad_id = tokenizer.pad_token_id
    encoded: dict[str, dict[int, list[Example]]] = {}
    seen: list[int] = []
    sources = []
    for si, st in enumerate(recipe.stages):
        own = select_records(records, st)
        if not own:
            # In a loop a score band can be empty in some round: the stage is skipped (0 steps),
            # the run goes on. (A merge of its untrained adapter changes nothing: B = 0.)
            log.warning("recipe %s stage %s: no record passes the data filter; the stage is skipped",
                        recipe.name, recipe.stage_name(si))  # fmt: skip
            sources.append(EmptySource())
            encoded.setdefault(st.objective, {})
            continue
        items = with_replay(own, seen, st.data.replay, recipe.seed + si)
        seen += own
        enc = encode_records(tokenizer, records, st.objective, recipe.max_seq_len, items, encoded.setdefault(st.objective, {}))
        lengths = [sum(len(ids) for ids, _ in enc[i]) if i in enc else 0 for i in range(len(records))]
        source = SOURCES[st.curriculum.policy](recipe, st, items, lengths, records, recipe.seed * 7919 + si)
        if isinstance(source, PUDFSource):
            encode_records(tokenizer, records, st.objective, recipe.max_seq_len, source.probe, enc)
            if source.probe_from != "heldout":
                log.warning(
                    "recipe %s stage %s: no held-out record (\"heldout\": true) has %r; PUDF estimates the "
                    "ability on the first %d training records instead", recipe.name, recipe.stage_name(si),
                    st.curriculum.score_key, len(source.probe),
                )  # fmt: skip
        sources.append(source)
    global_total = sum(s.total for s in sources)

    ckpt = _load_ckpt(store, checkpoint_key) if store is not None and checkpoint_key else None
    result = RecipeResult()
    snapshots: list[dict] = []
    model = lm
    optimizer = None
    start_stage, start_step = 0, 0
    if ckpt is not None:
        start_stage, start_step = ckpt["stage"], ckpt["step"]
        result = RecipeResult(**ckpt["per_stage"], resumed_from=ckpt["global_step"])
        sources[start_stage] = ckpt["source"]
        log.info("recipe %s: resuming at stage %d step %d", recipe.name, start_stage, start_step)
    global_step = sum(len(x) for x in result.stage_losses[:start_stage]) + start_step
    t_run = time.perf_counter()

    for si, st in enumerate(recipe.stages):
        # --- stage setup: adapter (fresh, continued or from init), optimiser, HFT
        t_stage = time.perf_counter()
        fresh_adapter = st.lora is not None and (si == 0 or recipe.stages[si - 1].after == "merge")
        if fresh_adapter:
            model = new_adapter(lm, st, recipe.seed + si, init_adapter if si == 0 else None)
        if si < start_stage:  # resuming: replay transitions only, loading merged stages' weights
            if st.after == "merge":
                from peft import set_peft_model_state_dict

                set_peft_model_state_dict(model, ckpt["snapshots"][len(snapshots)]["state"])
                snapshots.append(ckpt["snapshots"][len(snapshots)])
                lm = model.merge_and_unload()
                model = lm
            continue
        if st.lora is None:
            for p in lm.parameters():
                p.requires_grad_(True)
        frozen = hft_freeze(model, recipe.seed * 31 + si) if st.hft else []
        params = [p for p in model.parameters() if p.requires_grad]
        if optimizer is None or fresh_adapter or (si > 0 and recipe.stages[si - 1].reset_optimizer):
            frozen_ids = {id(p) for p in frozen}
            all_trainable = [p for p in model.parameters() if p.requires_grad or id(p) in frozen_ids]
            optimizer = torch.optim.AdamW(all_trainable, lr=st.lr, weight_decay=st.weight_decay)
        source = sources[si]
        step0 = 0
        if ckpt is not None and si == start_stage:
            model.load_state_dict(ckpt["trainable"], strict=False)
            if ckpt["optimizer"] is not None:
                optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"])
            step0 = start_step
            avg_snaps = ckpt["avg_snaps"]
            ckpt = None
        else:
            avg_snaps = []
        if len(result.stage_losses) == si:  # a fresh stage (a resumed one has its lists already)
            result.open_stage()
        seconds0 = result.stage_seconds[si]  # of earlier attempts
        core = CompletionLM(model)
        lm_fwd = core
        if dist_on:
            from torch.nn.parallel import DistributedDataParallel as DDP

            lm_fwd = DDP(core)
        enc = encoded[st.objective]
        kd_rows = _kd_rows(teacher_topk, records, enc) if st.objective in TEACHER_OBJECTIVES else {}
        if isinstance(source, PUDFSource) and source.pending_ability:
            # theta_0, so that the first epoch already trains only on b <= cap
            _estimate_ability(source, model, core, enc, pad_id, recipe, dist_on)
        model.train()
        sched = st.schedule
        avg_steps = set()
        if sched.average_last_k > 1:
            avg_steps = {source.total - 1 - j * sched.average_every for j in range(sched.average_last_k)}

        for step in range(step0, source.total):
            if should_stop is not None and should_stop():
                raise TrainingStopped(f"stopped at stage {si + 1} step {step} of {source.total}")
            t0 = time.perf_counter()
            trace = source.state()
            rows = source.next_rows()
            result.stage_samples[si].update(i for row in rows for i in row)
            result.stage_batches[si].append([i for row in rows for i in row])
            lr = lr_at(step, source.total, st.lr, sched.warmup_ratio, sched.kind, sched.final_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = lr
            # sequences of the step: one per sft item, chosen+rejected per dpo item, rows kept
            seq_rows, seqs, items_of_seq = [], [], []
            for row in rows:
                sr = []
                for item in row:
                    for ex in enc[item]:
                        sr.append(len(seqs))
                        seqs.append(ex)
                        items_of_seq.append(item)
                seq_rows.append(sr)
            mine = seq_rows[rank::world] or [seq_rows[0]]
            weight = 1.0 if seq_rows[rank::world] else 0.0
            batch = build_batch(mine, seqs, pad_id, share_prefix=recipe.packing and recipe.share_prefix).to(device)
            items = [items_of_seq[s] for s in batch.samples]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
                if st.objective == "dpo":
                    loss, reported, per_item = dpo_step_loss(
                        lm_fwd, core, model, batch, st.dpo_beta, dist_on, world, real=weight > 0
                    )
                    items = items[0::2]
                elif st.objective == "kd":
                    loss, reported, per_item = kd_step_loss(
                        lm_fwd, batch, [kd_rows[i] for i in items], st.distill, dist_on, world, real=weight > 0
                    )
                elif st.objective == "opd":
                    loss, reported, per_item = opd_step_loss(lm_fwd, batch, [kd_rows[i] for i in items], dist_on, world, real=weight > 0)
                elif st.objective == "dft":
                    loss, reported, per_item = dft_step_loss(lm_fwd, batch, dist_on, world, real=weight > 0)
                elif st.objective == "anchored":
                    loss, reported, per_item = anchored_step_loss(
                        lm_fwd, core, model, batch, st.anchor_lambda, dist_on, world, real=weight > 0
                    )
                else:
                    loss, reported, per_item = sft_step_loss(
                        lm_fwd, batch, len(batch.samples), dist_on, world, real=weight > 0
                    )
            (loss * weight).backward()
            if recipe.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if weight == 0.0:
                items, per_item = [], []
            after = None
            if source.wants_after and items:
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
                    _, _, after = sft_step_loss(core, batch, len(batch.samples), False, 1)
            if dist_on and not isinstance(source, EpochSource):
                # every rank must see the same feedback, or adaptive sources would diverge
                import torch.distributed as dist

                gathered: list = [None] * world
                dist.all_gather_object(gathered, (items, per_item, after))
                items = [x for g in gathered for x in g[0]]
                per_item = [x for g in gathered for x in g[1]]
                after = [x for g in gathered for x in g[2]] if after is not None else None
            if items:
                source.feedback(items, per_item, after)
            if trace:  # adaptive policies only: the shuffled and static orders are in stage_batches
                trace.update(items=list(items), loss_before=list(per_item), loss_after=after)
                result.stage_trace[si].append(trace)
            if isinstance(source, PUDFSource) and source.pending_ability:
                _estimate_ability(source, model, core, enc, pad_id, recipe, dist_on)  # the next epoch's cap
            if step in avg_steps:
                avg_snaps.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
            global_step += 1
            result.stage_losses[si].append(reported)
            result.stage_lrs[si].append(lr)
            dt = time.perf_counter() - t0
            result.tokens += batch.num_tokens
            result.seconds += dt
            if on_step is not None:
                elapsed = time.perf_counter() - t_run
                done_here = global_step - result.resumed_from
                on_step(
                    Progress(
                        si, recipe.stage_name(si), len(recipe.stages), step + 1, source.total,
                        global_step, global_total, reported, lr,
                        batch.num_tokens * world / dt if dt > 0 else 0.0,
                        elapsed / max(1, done_here) * (global_total - global_step),
                        tokens=batch.num_tokens * world,
                    )
                )
            last = step + 1 == source.total
            if (recipe.checkpoint_every and (step + 1) % recipe.checkpoint_every == 0 and not last) and store is not None and checkpoint_key and rank == 0:
                result.stage_seconds[si] = seconds0 + time.perf_counter() - t_stage
                _save_ckpt(store, checkpoint_key, {
                    "stage": si, "step": step + 1, "global_step": global_step, "per_stage": result.per_stage(),
                    "source": source, "snapshots": snapshots,
                    "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(), "avg_snaps": avg_snaps,
                })  # fmt: skip

        # --- stage end: averaging, unfreeze, merge or continue
        if len(avg_snaps) > 1:
            w = checkpoint_weights(len(avg_snaps), sched.average_decay)
            named = dict(model.named_parameters())
            with torch.no_grad():
                for n in avg_snaps[0]:
                    named[n].copy_(sum(wi * snap[n] for wi, snap in zip(w, reversed(avg_snaps), strict=True)))
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
        if st.after == "merge":
            snapshots.append(adapter_snapshot(model))
            lm = model.merge_and_unload()
            model = lm
            optimizer = None
        result.stage_seconds[si] = seconds0 + time.perf_counter() - t_stage
        result.stage_curriculum[si] = source.metrics()
        if si + 1 < len(recipe.stages) and store is not None and checkpoint_key and rank == 0:
            nxt = sources[si + 1]
            _save_ckpt(store, checkpoint_key, {
                "stage": si + 1, "step": 0, "global_step": global_step, "per_stage": result.per_stage(),
                "source": nxt, "snapshots": snapshots,
                "trainable": trainable_state(model) if st.after == "continue" else {},
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "rng": torch.get_rng_state(), "avg_snaps": [],
            })  # fmt: skip
    return model, snapshots, result


def _estimate_ability(source: PUDFSource, model, core, enc, pad_id: int, recipe: Recipe, dist_on: bool) -> None:
    """Probe in eval mode (no dropout: right/wrong is the model's answer), then back to training."""
    model.eval()
    source.set_ability(_probe_right(core, enc, source.probe, pad_id, recipe, dist_on))
    model.train()


def _probe_right(core, enc, probe: list[int], pad_id: int, recipe: Recipe, dist_on: bool) -> list[bool]:
    """Per probe record, in order: is every target token the model's argmax (teacher forced)?

    The probe is packed into rows of `row_tokens` and run `rows_per_step` rows at a time (a
    held-out split may be large). Under DDP every rank takes rank 0's answers, so the curriculum
    cannot diverge."""
    seqs = [enc[i][0] for i in probe]
    rows = bfd_pack([len(ids) for ids, _ in seqs], max(recipe.row_tokens, recipe.max_seq_len))
    per_forward = _rows_per_step(recipe)
    device = next(core.parameters()).device
    right = [False] * len(seqs)
    for k in range(0, len(rows), per_forward):
        batch = build_batch(rows[k : k + per_forward], seqs, pad_id).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
            flat = batch.targets.reshape(-1)
            pos = (flat >= 0).nonzero(as_tuple=True)[0]
            pred = core(batch, pos).argmax(-1)
        ok = (pred == flat.index_select(0, pos)).float()
        sums, counts = per_sample_sums(ok, batch.sample_ids.reshape(-1).index_select(0, pos), len(batch.samples))
        for j, s in enumerate(batch.samples):
            right[s] = bool(sums[j] == counts[j])
    if dist_on:
        import torch.distributed as dist

        box = [right]
        dist.broadcast_object_list(box, src=0)
        right = box[0]
    return right


# ---------------------------------------------------------------------------------------------------
# Outputs


def save_outputs(
    model, snapshots: list[dict], base: str, tokenizer, store: ArtifactStore, output_key: str, merged_key: str | None
) -> tuple[ArtifactRef, ArtifactRef | None]:
    """Publish the adapter (peft; chained stages as one summed LoRA) and, if asked, merged HF weights."""
    from peft import PeftModel

    from syllabus.models import pack_adapter

    tmp = Path(tempfile.mkdtemp(prefix="syllabus-out-"))
    try:
        live = isinstance(model, PeftModel)
        if not snapshots and live:
            for cfg in model.peft_config.values():
                cfg.base_model_name_or_path = base
            model.save_pretrained(tmp / "adapter", save_embedding_layers=False)
        elif snapshots:
            chained_adapter_files(snapshots + ([adapter_snapshot(model)] if live else []), base, tmp / "adapter")
        merged_ref = None
        if merged_key or not (snapshots or live):  # full fine-tuning publishes the weights themselves
            full = model.merge_and_unload() if live else model
            full.save_pretrained(tmp / "merged")
            tokenizer.save_pretrained(tmp / "merged")
            merged_ref = store.put_bytes(merged_key or output_key, pack_adapter(tmp / "merged"))
        if (tmp / "adapter").is_dir():
            return store.put_bytes(output_key, pack_adapter(tmp / "adapter")), merged_ref
        return merged_ref, merged_ref
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_metrics(store: ArtifactStore, output_key: str) -> dict | None:
    """The metrics of a finished run at `output_key`, or None if it never finished."""
    ref = store.stat(training_metrics_key(output_key))
    return json.loads(store.get_bytes(ref)) if ref is not None else None


def stage_metrics(recipe: Recipe, result: RecipeResult, records: Sequence[dict] = ()) -> list[dict]:
    """One entry per recipe stage, in order: name, steps, mean_loss (None without a step), seconds
    (wall, summed over a resumed run's attempts), samples (distinct records trained on, replay
    included), plus the curriculum's own keys (PUDF: abilities, caps, probe, probe_size) and, with
    `recipe.log_batches`, `batches` (per step, the ids of `records` it trained on, in order) and
    `trace` (`RecipeResult.stage_trace`, record ids for indices; empty for shuffled/static/pudf)."""

    def name(i: int) -> object:
        return records[i].get("id", i) if i < len(records) else i

    out = []
    for i in range(len(recipe.stages)):
        ran = i < len(result.stage_losses)
        losses = result.stage_losses[i] if ran else []
        out.append({
            "name": recipe.stage_name(i),
            "steps": len(losses),
            "mean_loss": sum(losses) / len(losses) if losses else None,
            "seconds": round(result.stage_seconds[i], 3) if ran else 0.0,
            "samples": len(result.stage_samples[i]) if ran else 0,
            **(result.stage_curriculum[i] if ran else {}),
        })  # fmt: skip
        if recipe.log_batches:
            out[-1]["batches"] = [[name(j) for j in step] for step in result.stage_batches[i]] if ran else []
            # the adaptive policy's state and feedback per step (stage_trace), with record ids
            out[-1]["trace"] = [{**t, "items": [name(j) for j in t["items"]]} for t in result.stage_trace[i]] if ran else []
    return out


class NonFiniteLoss(RuntimeError):
    """Training diverged (inf/NaN loss): nothing is published."""


def run_recipe(
    base: str,
    records: Sequence[dict],
    recipe: Recipe,
    store: ArtifactStore,
    output_key: str,
    *,
    init_adapter: Path | None = None,
    merged_key: str | None = None,
    on_step: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    teacher_topk: TopKSet | None = None,
) -> tuple[ArtifactRef, RecipeResult]:
    """setup -> train every stage (resuming from `<output_key>.ckpt` if present) -> save -> cleanup.

    The metrics (`metrics_key`) are published before the adapter, so an adapter in the store always
    has its true step count and loss curve beside it. A stop request or a non-finite loss publishes
    nothing."""
    from syllabus.models import load_model

    lm, tokenizer = load_model(base)
    lm = lm.to("cuda" if torch.cuda.is_available() else "cpu")
    ckpt_key = output_key + ".ckpt"
    model, snapshots, result = train_recipe(
        lm, tokenizer, records, recipe, init_adapter=init_adapter, store=store, checkpoint_key=ckpt_key,
        on_step=on_step, should_stop=should_stop, teacher_topk=teacher_topk,
    )  # fmt: skip
    bad = next((i for i, x in enumerate(result.losses) if not math.isfinite(x)), None)
    if bad is not None:
        raise NonFiniteLoss(f"the loss became {result.losses[bad]} at step {bad + 1}: check lr and lora alpha")
    if should_stop is not None and should_stop():
        raise TrainingStopped("stopped before publishing")
    metrics = {"steps": len(result.losses), "mean_loss": result.mean_loss, "losses": result.losses,
               "tokens": result.tokens, "resumed_from": result.resumed_from, "stages": stage_metrics(recipe, result, records)}  # fmt: skip
    store.put_bytes(training_metrics_key(output_key), json.dumps(metrics, sort_keys=True).encode())
    ref, result.merged_ref = save_outputs(model, snapshots, base, tokenizer, store, output_key, merged_key)
    # The adapter is published, so a restart finds it and never resumes: the checkpoint (LoRA and
    # optimiser state, several times the adapter's size) is scratch now.
    try:
        store.delete(ckpt_key)
    except (ArtifactError, OSError) as e:  # the adapter stands; a stale checkpoint only costs space
        log.warning("could not delete checkpoint %s: %s", ckpt_key, e)
    log.info("recipe %s: %d steps, mean loss %.4f -> %s", recipe.name, len(result.losses), result.mean_loss, ref.uri)
    return ref, result


def read_records(data: bytes) -> list[dict]:
    """JSONL -> list of dicts (validation of fields happens per objective in encode_records)."""
    out = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if line.strip():
            r = json.loads(line)
            if not isinstance(r, dict):
                raise ValueError(f"line {lineno} is not a JSON object")
            is_heldout(r, len(out))
            out.append(r)
    if not out:
        raise ValueError("no records")
    return out
