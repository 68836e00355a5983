"""Linear-chain CRF over per-step edge potentials: log-likelihood (forward algorithm) and Viterbi decoding.

A tagger's head gives emissions ``e[b, t, j]``; :class:`LinearChainCRF` turns them into edge potentials
``pot[b, t, i, j]`` = score of moving from tag ``i`` at step t-1 to tag ``j`` at step t (emission plus a
learned transition).  Step 0 has no previous tag: its potentials use row 0 only (start score + emission; the
module fills every row with it so any row gives the same answer).  Keeping the potentials as the model's
output lets a task compute the CRF loss from ``output`` alone, as the trainer's ``task.loss(output, batch)``
contract wants, and the functions here work for any potentials, learned or hand-made.

>>> crf = LinearChainCRF(3)
>>> pot = crf.potentials(torch.randn(2, 5, 3)); tuple(pot.shape)
(2, 5, 3, 3)
>>> tuple(viterbi_decode(pot, torch.tensor([5, 2])).shape)
(2, 5)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: label value of padded steps (as ``F.cross_entropy``'s default ``ignore_index``)
IGNORE = -100


@dataclass
class CRFConfig:
    """Options of :class:`LinearChainCRF`: the number of tags."""

    num_tags: int


def _lengths(potentials: Tensor, lengths: Tensor | None) -> Tensor:
    B, T = potentials.shape[:2]
    if potentials.dim() != 4 or potentials.shape[2] != potentials.shape[3]:
        raise ValueError(f"potentials: expected (B, T, C, C), got {tuple(potentials.shape)}")
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int64, device=potentials.device)
    lengths = lengths.to(potentials.device)
    if lengths.shape != (B,) or int(lengths.min()) < 1 or int(lengths.max()) > T:
        raise ValueError(f"lengths: expected (B,) = ({B},) values in [1, {T}], got {lengths.tolist()}")
    return lengths


def log_partition(potentials: Tensor, lengths: Tensor | None = None) -> Tensor:
    """log Z per sequence (B,): log-sum-exp of the scores of every tag path (the forward algorithm)."""
    lengths = _lengths(potentials, lengths)
    alpha = potentials[:, 0, 0]  # (B, C): log-sum of paths ending in each tag at step 0
    for t in range(1, potentials.shape[1]):
        step = torch.logsumexp(alpha.unsqueeze(2) + potentials[:, t], dim=1)  # (B, C_prev, C) -> (B, C)
        alpha = torch.where((t < lengths).unsqueeze(1), step, alpha)  # finished sequences keep their alpha
    return torch.logsumexp(alpha, dim=1)


def path_score(potentials: Tensor, tags: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Score (B,) of the given tag paths (B, T); steps at or past ``lengths`` (or labelled -100) are ignored."""
    lengths = _lengths(potentials, lengths)
    B, T = tags.shape
    valid = torch.arange(T, device=tags.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    tags = torch.where(valid, tags, torch.zeros_like(tags))  # any index for masked steps; their score is dropped
    prev = torch.cat([torch.zeros_like(tags[:, :1]), tags[:, :-1]], dim=1)  # (B, T): row 0 at step 0
    flat = potentials.flatten(2)  # (B, T, C*C)
    C = potentials.shape[-1]
    edge = flat.gather(2, (prev * C + tags).unsqueeze(2)).squeeze(2)  # (B, T)
    return (edge * valid).sum(1)


def neg_log_likelihood(potentials: Tensor, tags: Tensor, lengths: Tensor | None = None) -> Tensor:
    """-log p(tags | x) per sequence (B,)."""
    return log_partition(potentials, lengths) - path_score(potentials, tags, lengths)


@torch.no_grad()
def viterbi_decode(potentials: Tensor, lengths: Tensor | None = None) -> Tensor:
    """The highest-scoring tag path (B, T) int64; steps past a sequence's length are filled with -100."""
    lengths = _lengths(potentials, lengths)
    B, T, C, _ = potentials.shape
    delta = potentials[:, 0, 0]  # (B, C): best score of a path ending in each tag
    back = []
    for t in range(1, T):
        cand = delta.unsqueeze(2) + potentials[:, t]  # (B, C_prev, C)
        best, arg = cand.max(dim=1)  # (B, C)
        alive = (t < lengths).unsqueeze(1)
        delta = torch.where(alive, best, delta)
        # a finished sequence points each tag back to itself, so backtracking passes through unchanged
        back.append(torch.where(alive, arg, torch.arange(C, device=arg.device).expand(B, C)))
    out = torch.empty(B, T, dtype=torch.int64, device=potentials.device)
    tag = delta.argmax(1)  # (B,)
    out[:, T - 1] = tag
    for t in range(T - 1, 0, -1):
        tag = back[t - 1].gather(1, tag.unsqueeze(1)).squeeze(1)
        out[:, t - 1] = tag
    # the backtrack above walks identity pointers past the end; the last valid step holds the true final tag
    valid = torch.arange(T, device=out.device).unsqueeze(0) < lengths.unsqueeze(1)
    return torch.where(valid, out, torch.full_like(out, IGNORE))


class LinearChainCRF(nn.Module):
    """Learned transition (C, C) and start (C,) scores that turn emissions (B, T, C) into potentials."""

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if isinstance(num_tags, bool) or not isinstance(num_tags, int) or num_tags < 1:
            raise ValueError(f"num_tags: expected an int >= 1, got {num_tags!r}")
        self.config = CRFConfig(num_tags)
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [i, j]: tag i then tag j
        self.start = nn.Parameter(torch.zeros(num_tags))

    def potentials(self, emissions: Tensor) -> Tensor:
        """(B, T, C) emissions -> (B, T, C, C) edge potentials (step 0: start + emission in every row)."""
        C = self.config.num_tags
        if emissions.dim() != 3 or emissions.shape[-1] != C:
            raise ValueError(f"emissions: expected (B, T, {C}), got {tuple(emissions.shape)}")
        first = (emissions[:, :1] + self.start).unsqueeze(2).expand(-1, -1, C, -1)  # (B, 1, C, C)
        rest = emissions[:, 1:].unsqueeze(2) + self.transitions  # (B, T-1, C_prev, C)
        return torch.cat([first, rest], dim=1)

    def forward(self, emissions: Tensor) -> Tensor:
        return self.potentials(emissions)
