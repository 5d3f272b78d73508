"""Duplicate detection for generated text: exact (after normalisation) and near-duplicate.

Normalisation lowercases, drops punctuation and collapses whitespace, so "I lost my card!" and
"i lost my  card" are the same message. Near-duplicates are judged on word sets: two messages are
near-duplicates when the Jaccard similarity of their normalised word sets is at least
`NEAR_DUPLICATE_THRESHOLD` (0.8, i.e. at most one differing word in five). Word sets rather than word
n-grams because customer messages are short (5-20 words): trigram overlap on such texts is too
sensitive to a single changed word, while a word set still separates genuinely new phrasings. This is
the cheap filter Self-Instruct uses (it uses ROUGE-L >= 0.7) in spirit; the check is O(n) per message,
which is fine for the thousands of examples one round produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syllabus.answers import normalize  # the one normalisation labels, answers and dedupe share

NEAR_DUPLICATE_THRESHOLD = 0.8


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class Match:
    """Why a text is a duplicate: `kind` is "exact" or "near", `of` the key of the text it matches."""

    kind: str
    of: str
    similarity: float


@dataclass
class DuplicateIndex:
    """Texts seen so far; `find` tells whether a new text duplicates one of them."""

    threshold: float = NEAR_DUPLICATE_THRESHOLD
    _exact: dict[str, str] = field(default_factory=dict)
    _words: list[tuple[frozenset[str], str]] = field(default_factory=list)

    def add(self, text: str, key: str) -> None:
        norm = normalize(text)
        self._exact.setdefault(norm, key)
        self._words.append((frozenset(norm.split()), key))

    def find(self, text: str) -> Match | None:
        norm = normalize(text)
        if norm in self._exact:
            return Match("exact", self._exact[norm], 1.0)
        words = frozenset(norm.split())
        best: Match | None = None
        for other, key in self._words:
            sim = jaccard(words, other)
            if sim >= self.threshold and (best is None or sim > best.similarity):
                best = Match("near", key, sim)
        return best

    def __len__(self) -> int:
        return len(self._words)
