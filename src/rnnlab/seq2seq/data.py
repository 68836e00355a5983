"""What a seq2seq batch and output look like: reserved target ids, the packed source/target pair, the output."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PAD, BOS, EOS = 0, 1, 2  # target ids reserved by every Seq2Seq vocabulary (the source reserves PAD = 0 only)


def pack_pair(src: Tensor, tgt_in: Tensor) -> Tensor:
    """(B, S) source ids and (B, T) decoder inputs -> one (B, 2, max(S, T)) int64 tensor, zero-padded.

    The trainer hands a model one ``x``; a seq2seq batch carries both sequences in it this way.

    >>> x = pack_pair(torch.tensor([[5, 6, 7]]), torch.tensor([[1, 9]])); x.tolist()
    [[[5, 6, 7], [1, 9, 0]]]
    >>> [t.tolist() for t in unpack_pair(x)]
    [[[5, 6, 7]], [[1, 9, 0]]]
    """
    B, L = src.shape[0], max(src.shape[1], tgt_in.shape[1])
    x = torch.zeros(B, 2, L, dtype=torch.int64, device=src.device)
    x[:, 0, :src.shape[1]] = src
    x[:, 1, :tgt_in.shape[1]] = tgt_in
    return x


def unpack_pair(x: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`pack_pair`: (B, 2, L) -> source (B, L), decoder inputs (B, L)."""
    if x.dim() != 3 or x.shape[1] != 2:
        raise ValueError(f"x: expected a (B, 2, L) source/target pair from pack_pair, got shape {tuple(x.shape)}")
    return x[:, 0], x[:, 1]


@dataclass
class Seq2SeqOutput:
    """What :meth:`Seq2Seq.forward` returns (with ``None`` as the state).

    ``logits`` (B, T, V): teacher-forced scores of every target step.  In eval mode the model also decodes
    greedily, so a task can score free-running output: ``predictions`` (B, T') ids (PAD after the end),
    ``pred_lengths`` (B,) tokens before EOS.
    """

    logits: Tensor
    predictions: Tensor | None = None
    pred_lengths: Tensor | None = None
