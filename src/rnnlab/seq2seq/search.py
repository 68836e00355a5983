"""Beam search with GNMT length normalisation over any step function (log-probabilities of the next token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

#: ``step(tokens (N,), state) -> (log_probs (N, V), state)``: one decoder step for N hypotheses
StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]
#: ``reorder(state, index (N,)) -> state``: row n of the new state is row ``index[n]`` of the old one
ReorderFn = Callable[[Any, Tensor], Any]


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length penalty (Wu et al. 2016): ``((5 + length) / 6) ** alpha``; 1 for ``alpha = 0``.

    A hypothesis is ranked by ``log P / length_penalty``, so ``alpha > 0`` stops the search from preferring
    short outputs just because every extra token multiplies in a probability below 1.

    >>> length_penalty(1, 0.6), round(length_penalty(7, 1.0), 3)
    (1.0, 2.0)
    """
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    """A finished output: ``tokens`` without BOS/EOS, summed ``log_prob`` and the normalised ``score``."""

    tokens: list[int]
    log_prob: float
    score: float


def beam_search(step: StepFn, reorder: ReorderFn, state: Any, batch_size: int, *, beam: int, bos: int, eos: int,
                max_len: int, alpha: float = 0.0) -> list[list[Hypothesis]]:
    """The ``beam`` best outputs of each of ``batch_size`` inputs, best first.

    ``state`` holds the ``batch_size * beam`` hypotheses' rows, beam-major within each input (rows
    ``b * beam .. b * beam + beam - 1`` belong to input ``b``), all equal at the start.  Each step extends
    every live hypothesis by every token, keeps the ``2 * beam`` best by summed log-probability, moves those
    ending in ``eos`` (ranked within the first ``beam``) to the finished list scored by
    ``log P / length_penalty(len, alpha)`` (EOS counted in the length) and carries the ``beam`` best others on.
    An input is done when ``beam`` hypotheses have finished; at ``max_len`` the live ones finish as they are.
    With ``beam=1`` this is greedy decoding.

    >>> import math
    >>> table = torch.log(torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.9, 0.1]]))  # row = last token
    >>> step = lambda tokens, s: (table[tokens], s)
    >>> [h.tokens for h in beam_search(step, lambda s, i: s, None, 1, beam=2, bos=0, eos=1, max_len=5)[0]]
    [[], [2]]
    """
    if beam < 1:
        raise ValueError(f"beam: expected an integer >= 1, got {beam!r}")
    if max_len < 1:
        raise ValueError(f"max_len: expected an integer >= 1, got {max_len!r}")
    B, K = batch_size, beam
    tokens = torch.full((B * K,), bos, dtype=torch.int64)
    scores = torch.full((B, K), float("-inf"))
    scores[:, 0] = 0.0  # the K rows start identical: only one may expand, or the beam fills with copies
    history = torch.zeros(B, K, 0, dtype=torch.int64)  # tokens so far per live hypothesis
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    for t in range(max_len):
        log_probs, state = step(tokens, state)  # (B*K, V)
        V = log_probs.shape[-1]
        cand = scores.unsqueeze(-1) + log_probs.float().view(B, K, V)  # (B, K, V)
        width = min(2 * K, K * V)
        top, flat = cand.view(B, K * V).topk(width, dim=-1)  # (B, 2K)
        src_beam, word = flat // V, flat % V
        new_scores = torch.full((B, K), float("-inf"))
        new_src = torch.zeros(B, K, dtype=torch.int64)
        new_word = torch.full((B, K), eos, dtype=torch.int64)
        for b in range(B):
            if done[b]:
                continue
            kept = 0
            for j in range(width):
                s = float(top[b, j])
                if s == float("-inf"):
                    break
                w, k = int(word[b, j]), int(src_beam[b, j])
                if w == eos:
                    if j < K:
                        seq = history[b, k].tolist()
                        finished[b].append(Hypothesis(seq, s, s / length_penalty(len(seq) + 1, alpha)))
                    continue
                if kept < K:
                    new_scores[b, kept], new_src[b, kept], new_word[b, kept] = s, k, w
                    kept += 1
            if len(finished[b]) >= K:
                done[b] = True
        if all(done):
            break
        rows = (torch.arange(B).unsqueeze(1) * K + new_src).view(-1)  # (B*K,) old row of each new hypothesis
        history = torch.cat([history.view(B * K, -1)[rows].view(B, K, -1), new_word.unsqueeze(-1)], dim=-1)
        scores, tokens = new_scores, new_word.view(-1)
        state = reorder(state, rows)
    for b in range(B):
        if not done[b]:  # ran out of steps: the live hypotheses finish unterminated
            for k in range(K):
                s = float(scores[b, k])
                if s > float("-inf"):
                    seq = history[b, k].tolist()
                    finished[b].append(Hypothesis(seq, s, s / length_penalty(len(seq), alpha)))
        finished[b].sort(key=lambda h: h.score, reverse=True)
        del finished[b][K:]
    return finished
