"""Element-wise helpers shared by every Triton cell rule: lanes, stable activations and the length/zoneout blend."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.gpu.driver import compute_type


def keep_ptrs(keeps: list[Tensor] | None, olds: list[Tensor], n: int) -> list[Tensor]:
    """The first ``n`` keep tensors a kernel takes; without zoneout the old states stand in (never read)."""
    return list((keeps if keeps is not None else olds)[:n])


def step_flags(saved: Tensor, keeps: list[Tensor] | None) -> dict:
    """The constexprs every element-wise kernel takes: zoneout or not, and the compute type of the storage."""
    return dict(HAS_KEEP=keeps is not None, COMPUTE=compute_type(saved))


@triton.jit
def ld(ptr, mask, COMPUTE: tl.constexpr):
    """Load and widen to the compute type (float32 for bf16/fp16/fp32 storage, float64 for float64)."""
    return tl.load(ptr, mask=mask).to(COMPUTE)


@triton.jit
def sigmoid(z):
    # exp of a non-positive number only: finite for any z, including ±inf
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def tanh(z):
    # tanh(|z|) = (1 - e) / (1 + e) with e = exp(-2|z|) in (0, 1]: no overflow, exact sign, ±1 at ±inf
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z >= 0, t, -t)


@triton.jit
def blend(new, old, valid, keep, HAS_KEEP: tl.constexpr):
    """The state a step leaves: zoneout keeps ``old`` with weight ``keep``; padded rows keep ``old``."""
    if HAS_KEEP:
        new = keep * old + (1.0 - keep) * new
    return tl.where(valid, new, old)


@triton.jit
def blend_grad(d, valid, keep, HAS_KEEP: tl.constexpr):
    """Backward of :func:`blend`: (gradient reaching the step's new state, gradient passed to ``old``)."""
    d_new = tl.where(valid, d, 0.0)
    d_old = tl.where(valid, 0.0, d)
    if HAS_KEEP:
        d_old += keep * d_new
        d_new = (1.0 - keep) * d_new
    return d_new, d_old


@triton.jit
def lanes(N, H, BLOCK: tl.constexpr):
    """This program's lanes of a flat (B, H) state: (offsets, in-range mask, batch row, unit)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < N, offs // H, offs % H


@triton.jit
def row_valid(VALID, b, m):
    """Whether each lane's batch row still runs this step (a padded row keeps its state)."""
    return tl.load(VALID + b, mask=m) != 0


@triton.jit
def load_keep(KEEP, offs, m, other, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr):
    """The zoneout keep weights at ``KEEP``; without zoneout ``other``, a placeholder :func:`blend` ignores."""
    keep = other
    if HAS_KEEP:
        keep = ld(KEEP + offs, m, COMPUTE)
    return keep


@triton.jit
def store_blend(OUT, KEEP, offs, m, new, old, valid, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr):
    """Store the state a step leaves, :func:`blend` of ``new`` and ``old`` with the keep weights at ``KEEP``."""
    keep = load_keep(KEEP, offs, m, new, HAS_KEEP, COMPUTE)
    tl.store(OUT + offs, blend(new, old, valid, keep, HAS_KEEP), mask=m)


@triton.jit
def load_blend_grad(D, KEEP, offs, m, valid, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr):
    """:func:`blend_grad` of the gradient at ``D``: (to the step's new state, to ``old``)."""
    d = ld(D + offs, m, COMPUTE)
    d_new, d_old = blend_grad(d, valid, load_keep(KEEP, offs, m, d, HAS_KEEP, COMPUTE), HAS_KEEP)
    return d_new, d_old


@triton.jit
def blend_rows(NEW, OLD, OUT, VALID, KEEP, N, W, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
               BLOCK: tl.constexpr):
    """:func:`blend` over (B, W) rows as a kernel of its own (the driver's output projection's state)."""
    offs, m, b, _ = lanes(N, W, BLOCK)
    store_blend(OUT, KEEP, offs, m, ld(NEW + offs, m, COMPUTE), ld(OLD + offs, m, COMPUTE), row_valid(VALID, b, m),
                HAS_KEEP, COMPUTE)


@triton.jit
def blend_rows_grad(D, VALID, KEEP, D_NEW, D_OLD, N, W, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
                    BLOCK: tl.constexpr):
    """:func:`blend_grad` of :func:`blend_rows`."""
    offs, m, b, _ = lanes(N, W, BLOCK)
    d_new, d_old = load_blend_grad(D, KEEP, offs, m, row_valid(VALID, b, m), HAS_KEEP, COMPUTE)
    tl.store(D_NEW + offs, d_new, mask=m)
    tl.store(D_OLD + offs, d_old, mask=m)
