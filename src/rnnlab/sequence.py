"""Time-axis helpers for variable-length batches: step masks, per-sequence reversal, PackedSequence I/O."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence


def step_mask(lengths: Tensor | None, T: int, device: torch.device) -> Tensor | None:
    """(T, B, 1) bool, true where step t < lengths[b]; ``None`` when all sequences are full."""
    if lengths is None:
        return None
    steps = torch.arange(T).unsqueeze(1)  # (T, 1)
    return (steps < lengths.unsqueeze(0)).unsqueeze(-1).to(device)


def reverse_index(lengths: Tensor, T: int) -> Tensor:
    """(T, B) time index that reverses each sequence within its length and leaves the padding in place."""
    t = torch.arange(T).unsqueeze(1)  # (T, 1)
    L = lengths.unsqueeze(0)  # (1, B)
    return torch.where(t < L, L - 1 - t, t)


def reverse_within_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse (T, B, F) along time within each sequence's length (an involution)."""
    if lengths is None:
        return x.flip(0)
    idx = reverse_index(lengths, x.shape[0]).to(x.device)  # (T, B)
    return x.gather(0, idx.unsqueeze(-1).expand_as(x))


def unpack(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """PackedSequence -> padded (T, B, F) in the caller's batch order, and lengths (B,) int64 on the CPU."""
    padded, lengths = pad_packed_sequence(packed, batch_first=False)
    return padded, lengths.to(torch.int64)


def repack(output: Tensor, like: PackedSequence) -> PackedSequence:
    """Padded (T, B, F) output in the caller's batch order -> PackedSequence laid out exactly like ``like``."""
    if like.sorted_indices is not None:
        output = output.index_select(1, like.sorted_indices.to(output.device))
    batch_sizes = like.batch_sizes  # (T,) on the CPU
    T, B = output.shape[:2]
    valid = torch.arange(B).unsqueeze(0) < batch_sizes[:T].unsqueeze(1)  # (T, B) in sorted batch order
    data = output[valid.to(output.device)]  # rows in time-major order, as PackedSequence stores them
    return PackedSequence(data, batch_sizes, like.sorted_indices, like.unsorted_indices)
