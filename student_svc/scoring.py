"""Per-sample scores from the student's token NLLs, in token-budgeted, length-bucketed batches.

Metrics (any subset in one request; every metric that needs the same forward pass gets it from
one pass, and a sequence several metrics need is run once):

- **Response loss** `loss_base` / `loss_ref`: mean NLL over the response tokens only, with the
  sample tokenized by `syllabus.prompts.encode_example`, exactly as the trainer tokenizes it.
- **LoBaSS learnability** (Learnability-Based Sample Selection, arXiv 2310.13008):
  `s(x) = (L0(x) - Lref(x)) / L0(x)`, L0 under the current student (the bare base with the adapter
  disabled in round 1, the `base_adapter` in later rounds), Lref under the
  reference adapter. Both from ONE model load: the caller passes a peft model wrapping the base
  with the reference adapter and L0 is computed inside `with model.disable_adapter():`.
- **IFD** (Cherry_LLM, "From Quantity to Quality", Li et al. 2023; Superfiltering):
  `IFD(Q, A) = PPL(A | prompt(Q)) / PPL(A)`. The conditional PPL is over the answer tokens of the
  templated sample (the end-of-turn token the trainer also learns is excluded so that both PPLs
  cover the same tokens); the unconditional PPL(A) is of the raw answer text, no template, started
  by the tokenizer's BOS token so every answer token is predicted. Both ratios are reported,
  named: `ifd_ppl` (newer reference code) and `ifd_loss` = mean NLL ratio (older code); they
  agree on the threshold 1 but rank differently.
- **Reverse IFD** (Selective Reflection-Tuning, Li et al. 2024):
  `r-IFD(Q, A) = PPL(Q | prompt_rev(A)) / PPL(Q)` with `REVERSE_PROMPT` as the user message.
  Reported as `rifd_ppl` and `rifd_loss`.
- **CAR** inputs: `loss_base` per record; the per-teacher compatibility-adjusted reward is in
  `student_svc.metrics.car`.

Batching: sequences are sorted by length into batches bounded by a padded-token budget
(`max_batch_tokens`) and an item cap, right-padded with an attention mask; the token prefix every
sequence of a group shares (chat template, task instructions) runs once and its KV cache is
reused; logits are projected only at positions that predict a target token, so memory scales with
target tokens, not sequence length x vocabulary. With `dtype="bfloat16"` the forward runs under
bf16 autocast (AMX/AVX512-BF16 CPUs, CUDA): 1.51x faster than fp32 on the AMD EPYC (AVX512-BF16)
bench.scoring recorded on, more with AMX; scores differ at the 1e-2 level but rank the same. `dtype="float32"` equals one-sample-at-a-time full-logit scoring to 1e-4.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syllabus.prompts import IGNORE_INDEX, encode_example

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LOSS_BASE = "loss_base"
LOSS_REF = "loss_ref"
LEARNABILITY = "learnability"
IFD = "ifd"  # -> ifd_ppl, ifd_loss
RIFD = "rifd"  # -> rifd_ppl, rifd_loss
#: Selective Reflection-Tuning rule over four versions (student_svc.reflection).
REFLECTION = "reflection"
#: The metrics the orchestrator has always asked for (an empty request means these).
ALL_METRICS = (LOSS_BASE, LOSS_REF, LEARNABILITY)
#: Every token-NLL metric `score_records` computes.
NLL_METRICS = (LOSS_BASE, LOSS_REF, LEARNABILITY, IFD, RIFD, REFLECTION)
#: Metrics that need the reference adapter.
REF_METRICS = frozenset({LOSS_REF, LEARNABILITY})
#: Columns each metric writes.
COLUMNS = {
    LOSS_BASE: (LOSS_BASE,),
    LOSS_REF: (LOSS_REF,),
    LEARNABILITY: (LEARNABILITY,),
    IFD: ("ifd_ppl", "ifd_loss", "answer_loss_cond", "answer_loss_uncond"),
    RIFD: ("rifd_ppl", "rifd_loss", "question_loss_cond", "question_loss_uncond"),
    REFLECTION: ("ifd_<v>", "rifd_<v>", "reflection_choice", "selected_prompt", "selected_response"),
}

#: The reverse prompt of r-IFD (Selective Reflection-Tuning reference code), filled with the answer.
REVERSE_PROMPT = (
    "Below is the response to an instruction, please guess the corresponding instruction for the "
    "given response.\n{response}\nGenerate the instruction for the above response."
)

DTYPES = ("auto", "float32", "bfloat16")
DEFAULT_MAX_LEN = 512
DEFAULT_BATCH_SIZE = 16
#: Padded tokens per forward pass; bounds activations and the (target tokens x vocab) logits.
DEFAULT_MAX_BATCH_TOKENS = 4096
#: Shared prefixes shorter than this are not worth a separate cached pass.
MIN_SHARED_PREFIX = 8

#: progress(done, total): sequences scored so far out of all sequences of the request.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Encoded:
    """One tokenized sequence: ids and labels (IGNORE_INDEX where nothing is predicted)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class ResponseNLL:
    """NLL of a sequence's target tokens: the sum, the count and (in order) each token's NLL."""

    total: float
    tokens: int
    per_token: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def mean(self) -> float:
        return self.total / self.tokens

    def head_mean(self, n: int) -> float:
        """Mean NLL of the first `n` target tokens (all of them if n is out of range)."""
        if not 0 < n < self.tokens or not self.per_token:
            return self.mean
        return float(sum(self.per_token[:n])) / n


# -- precision ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matmul units (AMX or AVX512-BF16; Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str, device) -> str:
    """"auto" -> "bfloat16" where the device runs bf16 natively, else "float32"."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    import torch

    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and cpu_has_bf16() else "float32"


def autocast(dtype: str, device):
    """bf16 autocast for "bfloat16" (the weights stay fp32; matmuls run in bf16), else nothing."""
    import torch

    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


# -- tokenization -------------------------------------------------------------------------------


def encode_records(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, str]], max_len: int = DEFAULT_MAX_LEN
) -> list[Encoded]:
    """Tokenize `{"prompt", "response"}` records the way the trainer does."""
    return [encode_pair(tokenizer, r["prompt"], r["response"], max_len) for r in records]


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_len: int = DEFAULT_MAX_LEN) -> Encoded:
    ids, labels = encode_example(tokenizer, prompt, response, max_len=max_len)
    return Encoded(ids, labels)


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token a raw (untemplated) text is conditioned on: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_raw(tokenizer: PreTrainedTokenizerBase, text: str, max_len: int = DEFAULT_MAX_LEN) -> Encoded:
    """`[start] + tokens(text)` with every text token a target: for unconditional PPL(text)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_len - 1]
    return Encoded([start_token_id(tokenizer), *ids], [IGNORE_INDEX, *ids])


def text_token_count(tokenizer: PreTrainedTokenizerBase, text: str, max_len: int = DEFAULT_MAX_LEN) -> int:
    """How many leading response targets of `encode_example(.., text)` are the text itself (the
    rest is the end-of-turn suffix)."""
    return min(len(tokenizer(text, add_special_tokens=False)["input_ids"]), max_len - 1)


def reverse_prompt(response: str) -> str:
    return REVERSE_PROMPT.format(response=response)


# -- batching -----------------------------------------------------------------------------------


def length_buckets(
    lengths: Sequence[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small.

    A batch holds at most `batch_size` items and at most `max_batch_tokens` padded tokens (a single
    longer item still gets a batch of its own). Memory is bounded by the token budget; the item
    cap only matters for very short sequences.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted descending: the batch's padded length is its first item's length.
        if current and (
            len(current) >= batch_size or (len(current) + 1) * lengths[current[0]] > max_batch_tokens
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def model_device(model: PreTrainedModel):
    return next(model.parameters()).device


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all `seqs` share."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def first_target_position(labels: Sequence[int]) -> int:
    """The position whose logits predict the first target token."""
    for i, t in enumerate(labels):
        if t != IGNORE_INDEX:
            return max(i - 1, 0)
    return len(labels)


def prefix_cache(model: PreTrainedModel, ids: Sequence[int], cache=None, dtype: str = "float32"):
    """Run `ids` (batch of one) and return the KV cache; extends `cache` (a copy is made) if given."""
    import copy

    import torch

    device = model_device(model)
    with torch.inference_mode(), autocast(dtype, device):
        out = model(
            input_ids=torch.tensor([list(ids)], device=device),
            cache=copy.deepcopy(cache) if cache is not None else None,
            use_cache=True,
            logits_to_keep=1,
        )
    return out.cache


def suffix_nll(
    model: PreTrainedModel,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_token_id: int,
    prefix: tuple[object, int] | None = None,
    dtype: str = "float32",
) -> list[ResponseNLL]:
    """Target-token NLLs of each (input_ids, labels) row, run as one right-padded batch.

    With `prefix=(cache, length)` the rows continue a shared prefix whose KV cache (batch of one)
    is copied and repeated over the batch: the same tokens at the same positions as running the
    full sequences, without recomputing the prefix. Position t predicts labels[t + 1]; logits are
    projected only at those positions, and the NLL is taken in fp32 (float64 sums).
    """
    import copy

    import torch
    import torch.nn.functional as F

    device = model_device(model)
    width = max(len(ids) for ids, _ in rows)
    ids_t = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labels) in enumerate(rows):
        ids_t[row, : len(ids)] = torch.tensor(list(ids))
        attn[row, : len(ids)] = 1
        targets[row, : len(ids) - 1] = torch.tensor(list(labels[1:]))
    keep = targets != IGNORE_INDEX
    kwargs: dict = {"use_cache": False}
    if prefix is not None:
        cache, length = prefix
        cache = copy.deepcopy(cache)  # the forward appends to it
        cache.batch_repeat_interleave(len(rows))
        attn = torch.cat([torch.ones((len(rows), length), dtype=torch.long), attn], dim=1)
        kwargs = {"cache": cache, "use_cache": True}
    with torch.inference_mode():
        with autocast(dtype, device):
            out = model(
                input_ids=ids_t.to(device),
                attention_mask=attn.to(device),
                logits_to_keep=keep.to(device),
                **kwargs,
            )
        logits = out.logits.float()  # (kept positions, vocab), row-major over (batch, position)
        nll = F.cross_entropy(logits, targets[keep].to(device), reduction="none").double().cpu()
    counts = keep.sum(dim=1).tolist()
    out_rows = []
    for part, n in zip(nll.split(counts), counts, strict=True):
        out_rows.append(ResponseNLL(total=float(part.sum()), tokens=n, per_token=tuple(part.tolist())))
    return out_rows


def response_nll(
    model: PreTrainedModel,
    examples: Sequence[Encoded],
    pad_token_id: int,
    batch_size: int = 0,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    share_prefix: bool = True,
    dtype: str = "float32",
    progress: Callable[[int], None] | None = None,
) -> list[ResponseNLL]:
    """Target-token NLLs of each example under `model`, in input order.

    Batches are length-bucketed under a padded-token budget and right-padded; logits are computed
    only at the positions that predict a target token. With `share_prefix`, the token prefix that
    every example shares (chat template, task instructions, label list: most of a task's prompt)
    is run once and its KV cache reused by every batch; it never reaches into a target.
    `progress(n)` is called with the number of examples each batch finished.
    """
    if not examples:
        return []
    dtype = resolve_dtype(dtype, model_device(model))
    g = 0
    if share_prefix and len(examples) > 1:
        g = min(
            common_prefix_len([e.input_ids for e in examples]),
            *(first_target_position(e.labels) for e in examples),
        )
        if g < MIN_SHARED_PREFIX:
            g = 0
    shared = (prefix_cache(model, examples[0].input_ids[:g], dtype=dtype), g) if g else None
    results: list[ResponseNLL | None] = [None] * len(examples)
    lengths = [len(e) - g for e in examples]
    for batch in length_buckets(lengths, batch_size or DEFAULT_BATCH_SIZE, max_batch_tokens):
        rows = [(examples[i].input_ids[g:], examples[i].labels[g:]) for i in batch]
        for i, r in zip(batch, suffix_nll(model, rows, pad_token_id, shared, dtype), strict=True):
            results[i] = r
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]


# -- metrics ------------------------------------------------------------------------------------


def learnability(loss_base: float, loss_ref: float) -> float:
    """LoBaSS learnability (L0 - Lref) / L0 (arXiv 2310.13008); 0.0 when L0 is 0 (nothing to learn)."""
    if loss_base <= 0.0:
        return 0.0
    return (loss_base - loss_ref) / loss_base


def ifd_ratios(loss_cond: float, loss_uncond: float) -> tuple[float, float]:
    """(PPL ratio, loss ratio) of a conditional vs unconditional mean NLL (IFD / r-IFD).

    PPL ratio = exp(loss_cond - loss_uncond); loss ratio = loss_cond / loss_uncond (inf if the
    unconditional loss is 0). Both are < 1 exactly when the condition helps.
    """
    import math

    ppl = math.exp(loss_cond - loss_uncond)
    loss = loss_cond / loss_uncond if loss_uncond > 0 else math.inf
    return ppl, loss


@dataclass(frozen=True)
class ScoreOptions:
    """How `score_records` runs; every field is exposed in ScoreRequest.

    dtype: "auto" (bf16 autocast where the device has native bf16, the fast default), "float32"
      (exact: equals per-sample full-logit scoring to 1e-4) or "bfloat16".
    batch_size: most sequences per forward pass (0: DEFAULT_BATCH_SIZE).
    max_batch_tokens: most padded tokens per forward pass (0: DEFAULT_MAX_BATCH_TOKENS); bounds memory.
    max_len: sequences are truncated to this many tokens (prompt from the left).
    share_prefix: run the prefix every sequence of a pass group shares once (KV cache).
    ratio: "ppl" or "loss": which IFD/r-IFD form the reflection rule compares.
    ifd_on_base: IFD, r-IFD and the reflection rule on the base view (the current student's adapter
      when one is loaded, else the adapter disabled) instead of the model as given. With LoBaSS that
      view is the current student, and IFD's conditional pass is L0's: one forward pass for both.
    """

    dtype: str = "auto"
    batch_size: int = 0
    max_batch_tokens: int = 0
    max_len: int = DEFAULT_MAX_LEN
    share_prefix: bool = True
    ratio: str = "ppl"
    ifd_on_base: bool = False


class NLLPlan:
    """Sequences to score, deduplicated, in groups that run together (one group per model state).

    `add(group, seq)` returns a handle; after `run`, `result(handle)` is its ResponseNLL.
    """

    def __init__(self) -> None:
        self._groups: dict[str, dict[tuple, int]] = {}
        self._seqs: dict[str, list[Encoded]] = {}
        self._results: dict[str, list[ResponseNLL]] = {}

    def add(self, group: str, seq: Encoded) -> tuple[str, int]:
        key = (tuple(seq.input_ids), tuple(seq.labels))
        index = self._groups.setdefault(group, {})
        if key not in index:
            index[key] = len(index)
            self._seqs.setdefault(group, []).append(seq)
        return group, index[key]

    def total(self) -> int:
        return sum(len(s) for s in self._seqs.values())

    def groups(self) -> list[str]:
        return list(self._seqs)

    def run(
        self,
        group: str,
        model: PreTrainedModel,
        pad_token_id: int,
        options: ScoreOptions,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        seqs = self._seqs[group]
        # Templated and raw sequences share no prefix: bucket them separately so each kind's
        # common prefix (the chat template + instructions) is still shared.
        kinds: dict[bool, list[int]] = {}
        for i, s in enumerate(seqs):
            kinds.setdefault(s.labels[0] == IGNORE_INDEX and len(s.labels) > 1 and s.labels[1] != IGNORE_INDEX, []).append(i)
        results: list[ResponseNLL | None] = [None] * len(seqs)
        for idx in kinds.values():
            for i, r in zip(
                idx,
                response_nll(
                    model,
                    [seqs[i] for i in idx],
                    pad_token_id,
                    options.batch_size,
                    options.max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS,
                    share_prefix=options.share_prefix,
                    dtype=options.dtype,
                    progress=progress,
                ),
                strict=True,
            ):
                results[i] = r
        self._results[group] = results  # type: ignore[assignment]

    def result(self, handle: tuple[str, int]) -> ResponseNLL:
        group, i = handle
        return self._results[group][i]


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def run_plan(
    plan: NLLPlan,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    options: ScoreOptions,
    progress: Progress | None = None,
) -> None:
    """Run every group of `plan`: group "base" with the adapter disabled (if `model` is a peft
    model) or under the current student's adapter when one is loaded, "model" on `model` as given."""
    from peft import PeftModel

    from student_svc.models import STUDENT_ADAPTER

    total = plan.total()
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    for group in plan.groups():
        if group == "base" and isinstance(model, PeftModel) and STUDENT_ADAPTER in model.peft_config:
            # LoBaSS round >= 2: L0 under the current student, Lref under the reference.
            active = model.active_adapter
            model.set_adapter(STUDENT_ADAPTER)
            try:
                plan.run(group, model, pad_id(tokenizer), options, step)
            finally:
                model.set_adapter(active)
        elif group == "base" and isinstance(model, PeftModel):
            with model.disable_adapter():
                plan.run(group, model, pad_id(tokenizer), options, step)
        else:
            plan.run(group, model, pad_id(tokenizer), options, step)


def score_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, str]],
    metrics: Collection[str] = ALL_METRICS,
    batch_size: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
    options: ScoreOptions | None = None,
    progress: Progress | None = None,
) -> list[dict]:
    """Score `{"id", "prompt", "response"}` records: `{"id", <column>: float, ...}` in input order.

    `model` is the base student, or (required for loss_ref / learnability) a `peft.PeftModel`
    wrapping it with the reference adapter; base losses are then taken with the adapter disabled.
    IFD and r-IFD are computed on `model` as given (on the base view with `options.ifd_on_base`). `options` defaults to the fast path
    (`ScoreOptions()`); `batch_size` / `max_len` are shorthands kept for existing callers.
    """
    from peft import PeftModel

    options = options or ScoreOptions(batch_size=batch_size, max_len=max_len)
    unknown = set(metrics) - set(NLL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {list(NLL_METRICS)}")
    need_ref = bool(REF_METRICS & set(metrics))
    if need_ref and not isinstance(model, PeftModel):
        raise ValueError(
            f"metrics {sorted(REF_METRICS & set(metrics))} need a model with the reference adapter"
        )
    plan = NLLPlan()
    group = "base" if options.ifd_on_base else "model"
    handles = [plan_record(plan, tokenizer, r, metrics, options.max_len, group) for r in records]
    run_plan(plan, model, tokenizer, options, progress)
    return [finish_record(plan, r, h, metrics, options.ratio) for r, h in zip(records, handles, strict=True)]


def plan_record(
    plan: NLLPlan,
    tokenizer: PreTrainedTokenizerBase,
    record: Mapping[str, str],
    metrics: Collection[str],
    max_len: int,
    ifd_group: str = "model",
) -> dict[str, object]:
    """Add the sequences `metrics` need for one record to `plan`; returns the handles by role.
    IFD and r-IFD run in `ifd_group` ("model", or "base": `ScoreOptions.ifd_on_base`)."""
    q, a = record["prompt"], record["response"]
    h: dict[str, object] = {}
    templated = encode_pair(tokenizer, q, a, max_len)
    if LOSS_BASE in metrics or LEARNABILITY in metrics:
        h["base"] = plan.add("base", templated)
    if LOSS_REF in metrics or LEARNABILITY in metrics:
        h["ref"] = plan.add("model", templated)
    if IFD in metrics:
        h["ifd_cond"] = plan.add(ifd_group, templated)  # in "base": the same sequence as L0, run once
        h["ifd_uncond"] = plan.add(ifd_group, encode_raw(tokenizer, a, max_len))
        h["ifd_n"] = text_token_count(tokenizer, a, max_len)
    if RIFD in metrics:
        h["rifd_cond"] = plan.add(ifd_group, encode_pair(tokenizer, reverse_prompt(a), q, max_len))
        h["rifd_uncond"] = plan.add(ifd_group, encode_raw(tokenizer, q, max_len))
        h["rifd_n"] = text_token_count(tokenizer, q, max_len)
    if REFLECTION in metrics:
        from student_svc.reflection import variant_records

        h[REFLECTION] = {
            v: plan_record(plan, tokenizer, rec, (IFD, RIFD), max_len, ifd_group) for v, rec in variant_records(record).items()
        }
    return h


def finish_record(
    plan: NLLPlan, record: Mapping[str, str], h: Mapping[str, object], metrics: Collection[str], ratio: str = "ppl"
) -> dict:
    row: dict = {"id": record["id"]}
    if LOSS_BASE in metrics:
        row[LOSS_BASE] = plan.result(h["base"]).mean
    if LOSS_REF in metrics:
        row[LOSS_REF] = plan.result(h["ref"]).mean
    if LEARNABILITY in metrics:
        row[LEARNABILITY] = learnability(plan.result(h["base"]).mean, plan.result(h["ref"]).mean)
    for name, prefix, text in ((IFD, "ifd", "answer"), (RIFD, "rifd", "question")):
        if name in metrics:
            cond = plan.result(h[f"{prefix}_cond"]).head_mean(h[f"{prefix}_n"])
            uncond = plan.result(h[f"{prefix}_uncond"]).mean
            row[f"{prefix}_ppl"], row[f"{prefix}_loss"] = ifd_ratios(cond, uncond)
            row[f"{text}_loss_cond"], row[f"{text}_loss_uncond"] = cond, uncond
    if REFLECTION in metrics:
        from student_svc.reflection import reflection_row

        scored = {v: finish_record(plan, record, hv, (IFD, RIFD)) for v, hv in h[REFLECTION].items()}
        row.update(reflection_row(record, scored, ratio))
    return row


def car(mean_reward: float, mean_loss: float, beta: float) -> float:
    """Compatibility-Adjusted Reward (arXiv 2411.07133): r / (1 + beta * L), r the mean reward of a
    teacher's responses, L their mean response NLL under the base student. beta is not given in the
    paper: exposed (ScoreRequest.car_beta)."""
    return mean_reward / (1.0 + beta * mean_loss)


def car_by_teacher(records: Sequence[Mapping], rows: Sequence[Mapping], beta: float) -> list[dict]:
    """Per teacher (record field "teacher"): count, mean "reward", mean loss_base and CAR, sorted
    by CAR descending (the teacher/generation setting to prefer first)."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for rec, row in zip(records, rows, strict=True):
        groups.setdefault(str(rec["teacher"]), []).append((float(rec["reward"]), float(row[LOSS_BASE])))
    out = []
    for teacher, pairs in groups.items():
        reward = sum(p[0] for p in pairs) / len(pairs)
        loss = sum(p[1] for p in pairs) / len(pairs)
        out.append({"teacher": teacher, "count": len(pairs), "reward": reward, "loss": loss, "car": car(reward, loss, beta)})
    return sorted(out, key=lambda g: (-g["car"], g["teacher"]))
