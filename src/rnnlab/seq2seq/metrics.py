"""Sequence error rates: Levenshtein distance, token (phoneme) error rate and whole-sequence (word) error rate."""

from __future__ import annotations

from typing import Sequence


def edit_distance(hyp: Sequence, ref: Sequence) -> int:
    """Fewest insertions, deletions and substitutions turning ``hyp`` into ``ref`` (Levenshtein).

    >>> edit_distance("kitten", "sitting"), edit_distance([], ["a", "b"]), edit_distance("ab", "ab")
    (3, 2, 0)
    """
    prev = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        cur = [i] + [0] * len(ref)
        for j, r in enumerate(ref, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (h != r))
        prev = cur
    return prev[-1]


def error_sums(hyps: Sequence[Sequence], refs: Sequence[Sequence]) -> dict[str, float]:
    """Summed ``edits``, reference ``tokens``, ``word_errors`` (not an exact match) and ``count`` (words).

    PER = edits / tokens and WER = word_errors / count (see :func:`error_rates`); sums add up across batches.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"hyps: expected {len(refs)} hypotheses (one per reference), got {len(hyps)}")
    edits = sum(edit_distance(list(h), list(r)) for h, r in zip(hyps, refs))
    wrong = sum(list(h) != list(r) for h, r in zip(hyps, refs))
    return {"edits": float(edits), "tokens": float(sum(len(r) for r in refs)), "word_errors": float(wrong),
            "count": float(len(refs))}


def error_rates(sums: dict[str, float]) -> dict[str, float]:
    """``per`` and ``wer`` from :func:`error_sums` totals.

    >>> error_rates(error_sums([["K", "AE", "T"], ["D", "AA"]], [["K", "AE", "T"], ["D", "AO", "G"]]))
    {'per': 0.3333333333333333, 'wer': 0.5}
    """
    return {"per": sums["edits"] / max(sums["tokens"], 1.0), "wer": sums["word_errors"] / max(sums["count"], 1.0)}
