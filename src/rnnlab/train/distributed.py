"""Data-parallel helpers: detect a torchrun launch, shard the global batch, reduce metric sums (gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from rnnlab.tasks.base import Batch


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; ``world_size == 1`` means plain single-process training."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(backend: str = "gloo") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else single process.

    Reuses an already initialised group (e.g. one made by ``torch.multiprocessing`` spawn in tests).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` rows of an ``n``-row global batch for ``rank`` (sizes differ by <= 1).

    Example:
        >>> [shard_bounds(10, r, 3) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_batch(batch: Batch, info: DistInfo) -> Batch:
    """This rank's rows of a global batch (all of it when not distributed)."""
    if not info.enabled:
        return batch
    lo, hi = shard_bounds(len(batch), info.rank, info.world_size)
    lengths = None if batch.lengths is None else batch.lengths[lo:hi]
    return Batch(batch.x[lo:hi], batch.y[lo:hi], lengths)


def all_reduce_sums(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Add per-rank metric sums across ranks (float64, so counts stay exact)."""
    if not info.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is true on any rank (e.g. one rank saw a NaN loss)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def scale_for_shard(loss: Tensor, local: int, total: int, info: DistInfo) -> Tensor:
    """Weight a rank's mean loss so that DDP's gradient *average* equals the global-batch mean gradient."""
    if not info.enabled:
        return loss
    return loss * (info.world_size * local / total)
