"""Student scores recomputed in the test process, from the model's weights, by the formulas of
ALGORITHMS.md: the e2e selection tests compare a job's choice with these, never with the job's own
score artifacts (random or constant scores would rank themselves "correctly").

Each score is one plain forward pass per sequence in fp32 with full logits (no batching, no shared
prefix cache, no logit pruning: the service's fast path is what is checked). The only code shared
with the service is the prompt template (`syllabus.prompts.render_prompt`), the chat form the
student is trained and scored on.

- response loss L(x): mean NLL of the response tokens (and the end-of-turn token the trainer also
  learns) after the templated prompt;
- LoBaSS learnability (L0 - Lref) / L0, L0 under the base, Lref under the reference adapter;
- IFD = PPL(A | prompt(Q)) / PPL(A) (ppl form) or the mean-NLL ratio (loss form), the
  unconditional A raw after BOS; r-IFD the same with Q given prompt_rev(A);
- per-record CAR = reward / (1 + beta * L0) with reward 1;
- the IRT crowd's right/wrong on a record: each member's most likely label.
"""

from __future__ import annotations

import itertools
import math
import tarfile
from collections.abc import Sequence
from pathlib import Path

from syllabus.prompts import render_prompt

# Selective Reflection-Tuning's reverse prompt, as in the reference code (ALGORITHMS.md).
REVERSE_PROMPT = (
    "Below is the response to an instruction, please guess the corresponding instruction for the "
    "given response.\n{response}\nGenerate the instruction for the above response."
)
#: Two scores this close are a tie: the service's batched fp32 pass equals a plain one to 1e-4.
TIE = 1e-3


class Oracle:
    """One model (a base directory, optionally with a peft adapter archive) scoring records."""

    def __init__(self, model_dir: Path | str, adapter_tar: Path | None = None, work: Path | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        if adapter_tar is not None:
            from peft import PeftModel

            assert work is not None, "an adapter needs a directory to unpack into"
            target = work / adapter_tar.stem
            with tarfile.open(adapter_tar) as tar:
                tar.extractall(target, filter="data")
            config = next(target.rglob("adapter_config.json"))
            model = PeftModel.from_pretrained(model, str(config.parent)).merge_and_unload()
        self.model = model.eval()

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def mean_nll(self, context: Sequence[int], target: Sequence[int]) -> float:
        """Mean NLL of `target` following `context` (one forward, fp32 full logits)."""
        import torch
        import torch.nn.functional as F

        ids = torch.tensor([[*context, *target]])
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[0].float()
        return F.cross_entropy(logits[len(context) - 1 : -1], ids[0, len(context) :]).item()

    def response_loss(self, prompt: str, response: str) -> float:
        return self.mean_nll(
            self._ids(render_prompt(self.tok, prompt)), self._ids(response + (self.tok.eos_token or ""))
        )

    def label_logprob(self, prompt: str, label: str) -> float:
        target = self._ids(label + (self.tok.eos_token or ""))
        return -self.mean_nll(self._ids(render_prompt(self.tok, prompt)), target) * len(target)

    def _ratio(self, condition: str, text: str, form: str) -> float:
        target = self._ids(text)
        cond = self.mean_nll(self._ids(render_prompt(self.tok, condition)), target)
        uncond = self.mean_nll([self.tok.bos_token_id], target)
        return math.exp(cond - uncond) if form == "ppl" else cond / uncond

    def ifd(self, prompt: str, response: str, form: str = "ppl") -> float:
        return self._ratio(prompt, response, form)

    def rifd(self, prompt: str, response: str, form: str = "ppl") -> float:
        return self._ratio(REVERSE_PROMPT.format(response=response), prompt, form)


def crowd_correct(crowd: Sequence[Oracle], prompt: str, label: str, labels: Sequence[str]) -> int:
    """How many crowd members answer `label`: each picks its most likely label (log p(label +
    end-of-turn | prompt), summed over tokens; a tie goes to the earlier label), PUDF's right/wrong."""
    right = 0
    for member in crowd:
        lps = [member.label_logprob(prompt, option) for option in labels]
        right += labels[max(range(len(labels)), key=lambda j: (lps[j], -j))] == label
    return right


def learnability(base: Oracle, reference: Oracle, prompt: str, response: str) -> float:
    l0 = base.response_loss(prompt, response)
    return (l0 - reference.response_loss(prompt, response)) / l0


def compatibility(base: Oracle, prompt: str, response: str, beta: float = 1.0) -> float:
    """CAR without its reward: 1 / (1 + beta * L), L the base student's response loss."""
    return 1.0 / (1.0 + beta * base.response_loss(prompt, response))


def assert_top(chosen: Sequence[str], scores: dict[str, float], k: int, descending: bool = True) -> None:
    """`chosen` is a top-k of `scores` (k of them, none with a score clearly below an unchosen one;
    ties within TIE may go either way), in rank order."""
    sign = 1.0 if descending else -1.0
    assert len(chosen) == min(k, len(scores)), (chosen, scores)
    assert set(chosen) <= set(scores), set(chosen) - set(scores)
    rest = [scores[i] * sign for i in scores if i not in chosen]
    worst = min((scores[i] * sign for i in chosen), default=math.inf)
    assert all(v <= worst + TIE for v in rest), (chosen, scores)
    ranks = [scores[i] * sign for i in chosen]
    assert all(a >= b - TIE for a, b in itertools.pairwise(ranks)), (chosen, scores)


def _service_runs_bf16() -> bool:
    """Whether the student service's default precision ("auto") is bf16 autocast on this CPU
    (AMX or AVX512-BF16 in /proc/cpuinfo, as `student_svc.scoring.cpu_has_bf16` decides)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


#: How close a job's score must be to this fp32 pass: fp32 batched scoring equals it to 1e-4; under
#: bf16 autocast (the service's fast path on bf16 CPUs) scores differ at the 1e-2 level (up to 1.7%
#: in the PPL-ratio form was seen), so the bound widens there and only there.
REL_TOL, ABS_TOL = (2e-2, 5e-5) if _service_runs_bf16() else (1e-3, 1e-5)


def assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    """The job's score column equals the recomputed one, record by record, within REL_TOL / ABS_TOL.
    Random, constant or another model's scores miss by far more, and the tests assert the other
    model's distance apart."""
    assert set(got) == set(want)
    bad = {i: (got[i], want[i]) for i in want if not math.isclose(got[i], want[i], rel_tol=REL_TOL, abs_tol=ABS_TOL)}
    assert not bad, bad
