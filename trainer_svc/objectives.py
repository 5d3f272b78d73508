"""Token-level objectives beyond plain SFT: `kd`, `dft`, `anchored` (recipe `objective`).

Each works on the logits at the response targets only (`CompletionLM` runs the LM head there), so
memory is that of SFT plus, for kd, (target tokens x k) and, for anchored, one no-grad reference
pass; the full-vocabulary terms are reduced in chunks of `CHUNK` positions so no second
(tokens x vocab) temporary lives at once.

- kd (Hinton et al. 2015; top-k as Arcee DistillKit stores it; GKD's generalised JSD, arXiv
  2306.13649): `alpha * T^2 * D(p_T^k || p_S^k) + (1 - alpha) * CE(y_t)`, both distributions
  renormalised over the teacher's top-k ids at temperature T; D is forward KL, or JSD_beta
  (beta 0: forward KL, 1: reverse KL).
- opd (on-policy distillation, Thinking Machines 2025; Qwen3 report): on the student's own samples,
  `-sg(log p_T(x_t) - log p_S(x_t)) * log p_S(x_t)` per token (the sampled reverse KL's gradient).
- dft (On the Generalization of SFT, arXiv 2508.05629): `-sg(p(y_t)) * log p(y_t)`.
- anchored (Anchored SFT): dft + `lambda * KL(p_ref || p_theta)` over the vocabulary, the
  reference = the same model with its adapter disabled.

Every loss is the global mean over the step's target tokens (as SFT's), and every function also
returns the per-sample mean NLL, which the adaptive curricula take as their feedback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from syllabus.prompts import IGNORE_INDEX
from syllabus.recipe import TEACHER_OBJECTIVES, Distill
from syllabus.topk import TopK
from trainer_svc.packing import per_sample_sums

__all__ = ["TEACHER_OBJECTIVES", "anchored_step_loss", "dft_step_loss", "kd_step_loss", "opd_step_loss", "reduce_sum"]

#: Target positions per chunk of a full-vocabulary reduction.
CHUNK = 1024


def target_logits(lm, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [N, vocab] fp32, target ids [N], sample index [N], ordinal of each target within
    its sample [N]) at the batch's target positions, in flat order."""
    flat_targets = batch.targets.reshape(-1)
    positions = (flat_targets != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    logits = lm(batch, positions).float()
    sample_of = batch.sample_ids.reshape(-1).index_select(0, positions)
    # a sample's targets are contiguous and in order in the flat layout: ordinal = j - its first j
    n = len(batch.samples)
    first = torch.full((n,), positions.numel(), dtype=torch.long, device=positions.device)
    first = first.scatter_reduce(0, sample_of, torch.arange(positions.numel(), device=positions.device), "amin")
    ordinal = torch.arange(positions.numel(), device=positions.device) - first[sample_of]
    return logits, flat_targets.index_select(0, positions), sample_of, ordinal


def reduce_sum(x: torch.Tensor, dist_on: bool) -> torch.Tensor:
    """`x` summed over the ranks (itself outside torch.distributed)."""
    if dist_on:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
    return x


def _global_mean(token_loss: torch.Tensor, dist_on: bool, world: int, real: bool):
    n_global = reduce_sum(torch.tensor(float(token_loss.numel()) if real else 0.0, device=token_loss.device), dist_on)
    total = token_loss.sum()
    loss = total / n_global.clamp(min=1) * world  # DDP averages over ranks: * world gives the global mean
    reported = reduce_sum(total.detach() if real else torch.zeros((), device=total.device), dist_on) / n_global.clamp(min=1)
    return loss, reported.item()


def _per_sample_nll(logp_target: torch.Tensor, sample_of: torch.Tensor, n: int) -> list[float]:
    sums, counts = per_sample_sums(-logp_target.detach(), sample_of, n)
    return (sums / counts.clamp(min=1)).tolist()


def teacher_rows(rows: Sequence[TopK], sample_of: torch.Tensor, ordinal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's (ids [N, k], log-probs [N, k]) for each flat target, from each batch sample's
    rows (`rows[s]` for batch sample s, one row per target of that sample)."""
    device = sample_of.device
    width = max(len(r) for r in rows)
    k = rows[0].ids.shape[1]
    ids = torch.zeros((len(rows), width, k), dtype=torch.long)
    lps = torch.full((len(rows), width, k), -math.inf, dtype=torch.float32)
    for s, r in enumerate(rows):
        ids[s, : len(r)] = torch.from_numpy(r.ids.astype("int64"))
        lps[s, : len(r)] = torch.from_numpy(r.logprobs.astype("float32"))
    so, od = sample_of.cpu(), ordinal.cpu()
    return ids[so, od].to(device), lps[so, od].to(device)


def divergence(teacher_lp: torch.Tensor, student_lp: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-row divergence of two log-distributions over the same support ([N, k] each)."""
    p, q = teacher_lp.exp(), student_lp.exp()
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return (p * (teacher_lp - student_lp)).sum(-1)
    if beta == 1.0:
        return (q * (student_lp - teacher_lp)).sum(-1)
    m = torch.logsumexp(torch.stack([teacher_lp + math.log(beta), student_lp + math.log(1 - beta)]), dim=0)
    return beta * (p * (teacher_lp - m)).sum(-1) + (1 - beta) * (q * (student_lp - m)).sum(-1)


def kd_step_loss(lm, batch, rows: Sequence[TopK], cfg: Distill, dist_on: bool, world: int, real: bool = True):
    """(loss, reported loss, per-sample mean NLL) of a kd step; `rows[s]` the teacher's top-k of
    batch sample s."""
    logits, tgt, sample_of, ordinal = target_logits(lm, batch)
    t_ids, t_lp = teacher_rows(rows, sample_of, ordinal)
    T = cfg.temperature
    teacher_k = torch.log_softmax(t_lp / T, dim=-1)
    student_k = torch.log_softmax(logits.gather(1, t_ids) / T, dim=-1)
    div = divergence(teacher_k, student_k, cfg.divergence, cfg.beta)
    logp_target = -F.cross_entropy(logits, tgt, reduction="none")
    token_loss = cfg.alpha * T * T * div - (1 - cfg.alpha) * logp_target
    loss, reported = _global_mean(token_loss, dist_on, world, real)
    return loss, reported, _per_sample_nll(logp_target, sample_of, len(batch.samples))


def opd_step_loss(lm, batch, rows: Sequence[TopK], dist_on: bool, world: int, real: bool = True):
    """On-policy distillation on the student's own samples: per token the advantage
    `A_t = log p_T(x_t) - log p_S(x_t)` (detached; the negative sampled reverse KL), the loss
    `-A_t * log p_S(x_t)`, a per-token policy gradient with no discount. Reported: the mean sampled
    reverse KL, log p_S - log p_T, which falls as the student nears the teacher."""
    logits, tgt, sample_of, ordinal = target_logits(lm, batch)
    logp = -F.cross_entropy(logits, tgt, reduction="none")
    teacher = torch.zeros_like(logp)
    for s, r in enumerate(rows):  # the teacher's log-prob of the sampled token at each position
        at = (sample_of == s).nonzero(as_tuple=True)[0]
        teacher[at] = torch.from_numpy(r.chosen.astype("float32")).to(logp.device)[ordinal[at]]
    advantage = (teacher - logp).detach()
    loss, _ = _global_mean(-advantage * logp, dist_on, world, real)
    _, reported = _global_mean(-advantage, dist_on, world, real)
    return loss, reported, _per_sample_nll(logp, sample_of, len(batch.samples))


def dft_step_loss(lm, batch, dist_on: bool, world: int, real: bool = True):
    """DFT: each target token's NLL scaled by its own detached probability."""
    logits, tgt, sample_of, _ = target_logits(lm, batch)
    logp_target = -F.cross_entropy(logits, tgt, reduction="none")
    loss, reported = _global_mean(-logp_target.detach().exp() * logp_target, dist_on, world, real)
    return loss, reported, _per_sample_nll(logp_target, sample_of, len(batch.samples))


def anchored_step_loss(lm, core, peft_model, batch, lam: float, dist_on: bool, world: int, real: bool = True):
    """Anchored SFT: DFT + lam * KL(p_ref || p_theta) at every target position, the reference the
    model with its adapter disabled (a no-grad pass, not through DDP)."""
    logits, tgt, sample_of, _ = target_logits(lm, batch)
    with torch.no_grad(), peft_model.disable_adapter():
        ref_logits, _, _, _ = target_logits(core, batch)
    logp_target = -F.cross_entropy(logits, tgt, reduction="none")
    kl = torch.cat([
        F.kl_div(torch.log_softmax(logits[i : i + CHUNK], -1), torch.log_softmax(ref_logits[i : i + CHUNK], -1),
                 reduction="none", log_target=True).sum(-1)
        for i in range(0, logits.size(0), CHUNK)
    ]) if logits.size(0) else logits.new_zeros(0)  # fmt: skip
    token_loss = -logp_target.detach().exp() * logp_target + lam * kl
    loss, reported = _global_mean(token_loss, dist_on, world, real)
    return loss, reported, _per_sample_nll(logp_target, sample_of, len(batch.samples))
