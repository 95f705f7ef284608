"""Metrics of generated text against a reference: ROUGE-L and exact match. Pure Python, no model.

Text is compared as lower-cased word tokens (runs of letters and digits, ``\\w+``), as ROUGE's usual
tokenisation does; punctuation and spacing do not count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, O(len(a) len(b)))."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (Lin, 2004; beta = 1): the harmonic mean of LCS / candidate words and LCS / reference words;
    0 when either side has no words."""
    c, r = words(candidate), words(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def exact_match(candidate: str, reference: str) -> float:
    """1.0 when both have the same words in the same order (case, punctuation and spacing aside), else 0.0."""
    return float(words(candidate) == words(reference))
