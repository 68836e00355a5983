"""Interpolated Kneser-Ney n-gram language model over integer word ids: the word LM's baseline.

Chen & Goodman (1998), "An empirical study of smoothing techniques", section 3 (interpolated KN):

* highest order n, raw counts:  P(w | h) = max(c(hw) - D_n, 0) / c(h.) + D_n * N1+(h .) / c(h.) * P(w | h')
* orders 1 < k < n use *continuation* counts c'(g) = N1+(. g) (distinct words seen before g) in place of c;
* order 1:  P(w) = max(c'(w) - D_1, 0) / c'(.) + D_1 * N1+(c' > 0) / c'(.) / V  (interpolated with uniform,
  so every vocabulary word gets a probability);
* h' is h without its first word; a history never seen (c(h.) = 0) backs off entirely to P(w | h');
* D_k = n1 / (n1 + 2 n2) from the numbers of k-grams with count 1 and 2 at that order (Ney et al. 1994),
  unless fixed discounts are given.

Every n-gram is packed into one int64 key (base-V digits), so counting is ``np.unique`` and scoring a whole
stream is a handful of vectorised ``searchsorted`` look-ups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class _Level:
    """Counts of one order k: sorted k-gram keys with their (raw or continuation) counts, and per history
    (the first k-1 words) the total count and the number of distinct followers."""

    keys: np.ndarray
    counts: np.ndarray
    hist_keys: np.ndarray
    hist_totals: np.ndarray
    hist_types: np.ndarray
    discount: float


def _pack(ids: np.ndarray, k: int, vocab: int) -> np.ndarray:
    """Keys of the len(ids)-k+1 k-grams of ``ids``: sum_j ids[i+j] * V**(k-1-j)."""
    n = len(ids) - k + 1
    key = np.zeros(max(n, 0), dtype=np.int64)
    for j in range(k):
        key = key * vocab + ids[j:j + n]
    return key


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    if n1 == 0:
        return 0.5  # no singletons (tiny corpora): any D in (0, 1) is a guess; keep mass for unseen words
    return n1 / (n1 + 2 * n2)


class KneserNey:
    """Interpolated Kneser-Ney model of ``order`` trained on the id stream ``train`` (ids in [0, vocab)).

    >>> lm = KneserNey(np.array([0, 1, 2, 0, 1, 3, 0, 1, 2]), vocab=4, order=3)
    >>> round(float(lm.distribution([0, 1]).sum()), 12)
    1.0
    """

    def __init__(self, train: np.ndarray | list[int], vocab: int, order: int = 3,
                 discounts: tuple[float, ...] | None = None) -> None:
        ids = np.asarray(train, dtype=np.int64)
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order: expected an int >= 1, got {order!r}")
        if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
            raise ValueError(f"vocab: expected an int >= 1, got {vocab!r}")
        if order * math.log2(max(vocab, 2)) >= 62:
            raise ValueError(f"order: {order}-grams over {vocab} words do not fit an int64 key; lower the order "
                             "or the vocabulary")
        if len(ids) < order:
            raise ValueError(f"train: {len(ids)} tokens, fewer than the order {order}")
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"train: ids must lie in [0, {vocab}), got [{ids.min()}, {ids.max()}]")
        if discounts is not None and (len(discounts) != order or not all(0 < d < 1 for d in discounts)):
            raise ValueError(f"discounts: expected {order} values in (0, 1), got {discounts!r}")
        self.vocab, self.order = vocab, order
        self.levels: list[_Level] = []  # levels[k-1] holds order k
        for k in range(order, 0, -1):
            if k == order:  # raw counts
                keys, counts = np.unique(_pack(ids, k, vocab), return_counts=True)
            else:  # continuation counts: how many distinct (k+1)-grams (types) end in each k-gram
                keys, counts = np.unique(np.unique(_pack(ids, k + 1, vocab)) % vocab ** k, return_counts=True)
            d = discounts[k - 1] if discounts is not None else _discount(counts)
            hist = keys // vocab  # (K,) the first k-1 words; sorted because keys are
            hist_keys, start, n_types = np.unique(hist, return_index=True, return_counts=True)
            totals = np.add.reduceat(counts, start) if len(start) else np.zeros(0, np.int64)
            self.levels.insert(0, _Level(keys, counts, hist_keys, totals, n_types, float(d)))

    @staticmethod
    def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        """values[key] for each query key, 0 where the key is absent."""
        if len(sorted_keys) == 0:
            return np.zeros(len(query), dtype=np.float64)
        pos = np.searchsorted(sorted_keys, query).clip(0, len(sorted_keys) - 1)
        return np.where(sorted_keys[pos] == query, values[pos], 0).astype(np.float64)

    def _prob(self, hist: np.ndarray, words: np.ndarray) -> np.ndarray:
        """P(words[i] | hist[i]) for a (M, c) history matrix, c <= order-1 (the last c words of context)."""
        lv = self.levels[0]
        total = float(lv.counts.sum())
        c = self._lookup(lv.keys, lv.counts, words)
        p = np.maximum(c - lv.discount, 0) / total + lv.discount * len(lv.keys) / total / self.vocab
        for k in range(2, hist.shape[1] + 2):
            lv = self.levels[k - 1]
            h = np.zeros(len(words), dtype=np.int64)
            for j in range(hist.shape[1] - (k - 1), hist.shape[1]):  # the last k-1 words of the history
                h = h * self.vocab + hist[:, j]
            c = self._lookup(lv.keys, lv.counts, h * self.vocab + words)
            tot = self._lookup(lv.hist_keys, lv.hist_totals, h)
            n_types = self._lookup(lv.hist_keys, lv.hist_types, h)
            seen = tot > 0
            safe = np.where(seen, tot, 1.0)
            p = np.where(seen, (np.maximum(c - lv.discount, 0) + lv.discount * n_types * p) / safe, p)
        return p

    def prob(self, context: list[int] | np.ndarray, word: int) -> float:
        """P(word | context); only the last order-1 words of ``context`` are used."""
        hist = np.asarray(context, dtype=np.int64)[len(context) - min(len(context), self.order - 1):]
        return float(self._prob(hist[None, :], np.array([word], dtype=np.int64))[0])

    def distribution(self, context: list[int] | np.ndarray) -> np.ndarray:
        """P(w | context) for every word id w (V,): sums to 1."""
        hist = np.asarray(context, dtype=np.int64)[len(context) - min(len(context), self.order - 1):]
        words = np.arange(self.vocab, dtype=np.int64)
        return self._prob(np.broadcast_to(hist, (self.vocab, len(hist))), words)

    def log_probs(self, stream: np.ndarray | list[int]) -> np.ndarray:
        """ln P(stream[i] | stream[:i]) for i = 1 .. N-1 (every token but the first, as the LM predicts them);
        the first order-2 targets use the shorter history the stream offers."""
        s = np.asarray(stream, dtype=np.int64)
        out = np.empty(max(len(s) - 1, 0), dtype=np.float64)
        c = self.order - 1
        for i in range(1, min(c, len(s))):  # start of the stream: histories shorter than order-1
            out[i - 1] = math.log(self.prob(s[:i], int(s[i])))
        start = max(c, 1)  # first target with a full history
        if len(s) > start:
            n = len(s) - start
            hist = np.stack([s[start - c + j:start - c + j + n] for j in range(c)], axis=1) if c \
                else np.zeros((n, 0), dtype=np.int64)  # (n, c): row i = the c words before target start+i
            out[start - 1:] = np.log(self._prob(hist, s[start:]))
        return out

    def perplexity(self, stream: np.ndarray | list[int]) -> float:
        """exp of the mean negative log-likelihood of :meth:`log_probs`."""
        lp = self.log_probs(stream)
        if len(lp) == 0:
            raise ValueError("stream: needs at least 2 tokens")
        return math.exp(-float(lp.mean()))
