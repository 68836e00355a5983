"""CTC for recurrent acoustic models: the loss over a per-step head, greedy and prefix beam search decoding.

A model with a per-step head of ``1 + alphabet`` outputs (id 0 = the CTC blank) is a CTC acoustic model:
:func:`ctc_loss` wraps ``torch.nn.CTCLoss`` for batch-first logits and ``-100``-padded targets, and the
decoders turn its per-frame distributions into label sequences (Graves et al. 2006; Hannun et al. 2014 for
the prefix beam search).

>>> lp = torch.log(torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]))
>>> greedy_decode(lp.unsqueeze(0)), prefix_beam_search(lp, beam_size=4)[0][0]
([[1, 2]], [1, 2])
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import Tensor

BLANK = 0
IGNORE = -100


def _lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
    return lengths.to("cpu", torch.int64)


def ctc_loss(logits: Tensor, targets: Tensor, lengths: Tensor | None = None, *, blank: int = BLANK) -> Tensor:
    """Mean over the batch of the CTC negative log-likelihood divided by each target's length.

    ``logits`` (B, T, C) batch-first; ``targets`` (B, L) label ids padded with -100; ``lengths`` (B,) valid
    frames.  A target that cannot fit its frames gives an infinite loss that is zeroed (``zero_infinity``)
    instead of poisoning the batch.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits: expected (B, T, C), got {tuple(logits.shape)}")
    frames = _lengths(logits, lengths)
    target_lengths = (targets != IGNORE).sum(1).cpu()
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (B, T, C) -> (T, B, C) as CTCLoss wants
    flat = targets[targets != IGNORE]  # concatenated targets (sum L_i,): no padding value can leak in
    return F.ctc_loss(log_probs, flat, frames, target_lengths, blank=blank, reduction="mean", zero_infinity=True)


def collapse(path: list[int], blank: int = BLANK) -> list[int]:
    """Merge repeats, then drop blanks: the labelling a frame path stands for.

    >>> collapse([0, 1, 1, 0, 1, 2, 2, 0])
    [1, 1, 2]
    """
    out: list[int] = []
    prev = None
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return out


def greedy_decode(log_probs: Tensor, lengths: Tensor | None = None, *, blank: int = BLANK) -> list[list[int]]:
    """Best-path decoding of (B, T, C) scores: the most likely symbol per frame, collapsed."""
    frames = _lengths(log_probs, lengths)
    best = log_probs.argmax(-1).cpu().tolist()  # (B, T)
    return [collapse(row[:int(n)], blank) for row, n in zip(best, frames)]


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def prefix_beam_search(log_probs: Tensor, beam_size: int = 8, *, blank: int = BLANK) -> list[tuple[list[int], float]]:
    """CTC prefix beam search over one utterance's (T, C) log-probabilities, without a language model.

    Every kept prefix carries two log-probabilities: of the frame paths that end in a blank and of those
    that end in its last symbol, so that "a a" (two symbols) and "aa" (one) are told apart.  Returns up to
    ``beam_size`` ``(labels, log p(labels))`` pairs, best first; with a beam as large as the number of
    prefixes it is exact (tests/test_speech.py checks it against enumeration of every frame path).
    """
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size: expected an int >= 1, got {beam_size!r}")
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs: expected (T, C), got {tuple(log_probs.shape)}")
    lp = log_probs.double().cpu().tolist()
    C = len(lp[0]) if lp else 0
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (ends blank, ends symbol)
    for frame in lp:
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], which: int, value: float) -> None:
            entry = nxt.setdefault(prefix, [-math.inf, -math.inf])
            entry[which] = _logadd(entry[which], value)

        for prefix, (pb, ps) in beams.items():
            total = _logadd(pb, ps)
            add(prefix, 0, total + frame[blank])  # a blank keeps the prefix
            for c in range(C):
                if c == blank:
                    continue
                p = frame[c]
                if prefix and prefix[-1] == c:
                    add(prefix + (c,), 1, pb + p)  # the same symbol again needs a blank in between
                    add(prefix, 1, ps + p)  # ... otherwise it merges into the last one
                else:
                    add(prefix + (c,), 1, total + p)
        # prefixes no frame path reaches (e.g. "a a" from a beam whose paths all end in "a") are dropped
        alive = [kv for kv in nxt.items() if _logadd(*kv[1]) > -math.inf]
        ranked = sorted(alive, key=lambda kv: _logadd(*kv[1]), reverse=True)[:beam_size]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    ranked_out = sorted(beams.items(), key=lambda kv: _logadd(*kv[1]), reverse=True)
    return [(list(k), _logadd(*v)) for k, v in ranked_out]


def beam_decode(log_probs: Tensor, lengths: Tensor | None = None, *, beam_size: int = 8,
                blank: int = BLANK) -> list[list[int]]:
    """:func:`prefix_beam_search` for each utterance of a (B, T, C) batch: the best labelling of each."""
    frames = _lengths(log_probs, lengths)
    return [prefix_beam_search(log_probs[b, :int(frames[b])], beam_size, blank=blank)[0][0]
            for b in range(log_probs.shape[0])]


def edit_distance(a: list[int] | str, b: list[int] | str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) between two sequences.

    >>> edit_distance("kitten", "sitting")
    3
    """
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]
