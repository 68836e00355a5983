"""Which cells run on the generic C++ driver (driver.h) and the autograd Function around its entry points.

A cell joins by declaring, in its own file, ``driver_kernel`` (the prefix of its entry points in generic.cpp,
e.g. ``"slstm"`` for ``slstm_forward`` / ``slstm_backward``) and ``driver_inputs(x, p)``, which returns the
driver's inputs: the projected input for all steps ``xp`` (T, B, X*H) (the one input GEMM, biases folded),
the recurrent weight in the form the cell's ``Rec`` needs, the element-wise parameter vectors (E, H) or
``None``, the number of heads (block-diagonal recurrence) and the cell's option word.  No dispatch ladder:
:func:`driver_for` reads the declaration of the nearest class in the cell's MRO that has one, provided the
cell has that class's math (a subclass that overrides ``step`` runs on the reference backend).

The Function's backward is the driver's hand-written BPTT; it is ``once_differentiable``, so a second
derivative raises instead of silently returning zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.backends.base import LayerCall
from rnnlab.backends.cpp.generic_loader import generic_failed, load_generic
from rnnlab.cells.base import RecurrentCell, State

_DTYPES = (torch.float32, torch.float64)


def driver_for(cell: RecurrentCell) -> str | None:
    """The generic driver's entry-point prefix for this cell, or ``None`` (not declared, or math changed)."""
    for cls in type(cell).__mro__:
        name = cls.__dict__.get("driver_kernel")
        if name is not None:
            same = all(getattr(type(cell), f) is getattr(cls, f)
                       for f in ("step", "project_input", "sequence", "driver_inputs"))
            return name if same else None
    return None


def _eager(x: Tensor) -> bool:
    """The driver is opaque to torch.compile / export, torch.func transforms, autocast and jit tracing:
    there the reference backend (plain differentiable torch ops) runs instead."""
    return (type(x) is Tensor and not torch._C._are_functorch_transforms_active()
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing())


def supports(call: LayerCall) -> bool:
    """Whether the generic driver computes this call (the cpp backend has already checked device, dtype,
    recording, dropout, zoneout and per-step states)."""
    name = driver_for(call.cell)
    if name is None or generic_failed() or call.x.dtype not in _DTYPES or not _eager(call.x):
        return False
    ext = load_generic()
    return ext is not None and hasattr(ext, f"{name}_forward")


class GenericDriverFn(torch.autograd.Function):
    """out, final state (B, S*H) = driver(xp, s0, w, e); backward through the driver's BPTT."""

    @staticmethod
    def forward(ctx, name: str, heads: int, opt: int, xp: Tensor, s0: Tensor, w: Tensor, e: Tensor,
                lengths: Tensor) -> tuple[Tensor, Tensor]:
        ext = load_generic()
        out, states, saved = getattr(ext, f"{name}_forward")(xp, s0, w, e, lengths, heads, opt)
        ctx.meta = (name, heads, opt)
        ctx.save_for_backward(xp, w, e, lengths, states, saved)
        return out, states[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor | None, ds_t: Tensor | None):
        name, heads, opt = ctx.meta
        xp, w, e, lengths, states, saved = ctx.saved_tensors
        dxp, ds0, dw, de = getattr(load_generic(), f"{name}_backward")(
            dout, ds_t, xp, w, e, lengths, heads, opt, states, saved)
        return None, None, None, dxp, ds0, dw, (de if e.numel() else None), None


def run(cell: RecurrentCell, p, x: Tensor, state: State, lengths: Tensor) -> tuple[Tensor, State]:
    """One layer, one direction: x (T, B, I), state as the cell's, lengths (B,) int64 or empty."""
    name = driver_for(cell)
    xp, w, e, heads, opt = cell.driver_inputs(x, p)  # type: ignore[attr-defined]
    if e is None:
        e = x.new_empty(0)
    sizes = cell.state_sizes()
    s0 = torch.cat([s.contiguous() for s in state], dim=-1)  # (B, S*H)
    out, s_t = GenericDriverFn.apply(name, heads, opt, xp, s0, w, e, lengths)
    return out, tuple(s_t.split(list(sizes), dim=-1))
