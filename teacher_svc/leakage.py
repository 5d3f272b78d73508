"""Leakage guard: generated examples that overlap the eval set are dropped and counted.

An example leaks when, after `teacher_svc.dedupe.normalize`, its input

- equals an eval input (`exact`), or
- shares a word n-gram of `ngram` words (default 8) with an eval input (`ngram`; the contamination
  test of GPT-3/Llama-style reports, which catches a copied sentence inside a longer text), or
- is a near-duplicate of an eval input by word-set Jaccard >= 0.8 (`near`; the same measure as
  generation dedupe, which catches reworded short messages that share no long n-gram).

Inputs shorter than `ngram` words are compared as a whole n-gram, so a short eval message copied into
a longer example is still caught.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from teacher_svc.dedupe import DuplicateIndex, normalize

DEFAULT_NGRAM = 8


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    if len(words) <= n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class LeakageGuard:
    """The eval inputs to guard; `check` says whether (and how) a text leaks."""

    eval_texts: Iterable[str]
    ngram: int = DEFAULT_NGRAM
    dropped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._near = DuplicateIndex()
        self._grams: dict[tuple[str, ...], str] = {}
        self._short: list[tuple[str, ...]] = []
        for i, text in enumerate(self.eval_texts):
            key = f"eval[{i}]"
            self._near.add(text, key)
            words = normalize(text).split()
            for g in _ngrams(words, self.ngram):
                self._grams.setdefault(g, key)
            if 0 < len(words) < self.ngram:
                self._short.append(tuple(words))

    def check(self, text: str) -> str | None:
        """"exact", "ngram" or "near" if `text` overlaps the eval set, else None."""
        words = normalize(text).split()
        if match := self._near.find(text):
            return "exact" if match.kind == "exact" else "near"
        if any(g in self._grams for g in _ngrams(words, self.ngram)):
            return "ngram"
        joined = " " + " ".join(words) + " "
        if any(" " + " ".join(s) + " " in joined for s in self._short):
            return "ngram"
        return None

    def filter(self, records: Sequence[dict], field_name: str = "input") -> list[dict]:
        """The records that do not leak; the others are counted in `dropped` by kind."""
        kept = []
        for rec in records:
            kind = self.check(str(rec.get(field_name, "")))
            if kind is None:
                kept.append(rec)
            else:
                self.dropped[kind] += 1
        return kept

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())
