"""Which cells run on the generic C++ driver (driver.h) and the autograd Function around its entry points.

A cell joins by declaring, in its own file, ``driver_kernel`` (the prefix of its entry points in generic.cpp,
e.g. ``"slstm"`` for ``slstm_forward`` / ``slstm_backward``) and ``driver_inputs(x, p)``, which returns the
driver's inputs: the projected input for all steps ``xp`` (T, B, X*H) (the one input GEMM, biases folded),
the recurrent weight in the form the cell's ``Rec`` needs, the element-wise parameter vectors (E, H) or
``None``, the number of heads (block-diagonal recurrence) and the cell's option word.  No dispatch ladder:
:func:`driver_for` reads the declaration of the nearest class in the cell's MRO that has one, provided the
cell has that class's math (a subclass that overrides ``step`` runs on the reference backend).

The Function's backward is the driver's hand-written BPTT.  When that backward must itself be differentiable
(``create_graph=True``: a gradient penalty, a Hessian-vector product) the gradient is recomputed through the
cell's own PyTorch step (:func:`rnnlab.backends.step_loop.differentiable_loop`), so second derivatives are
right rather than missing.
"""

from __future__ import annotations

import torch
from torch import Tensor
from rnnlab.backends.base import LayerCall
from rnnlab.backends.cpp.generic_loader import generic_failed, load_generic
from rnnlab.backends.step_loop import differentiable_loop
from rnnlab.cells.base import RecurrentCell, State

_DTYPES = (torch.float32, torch.float64)


def driver_for(cell: RecurrentCell) -> str | None:
    """The generic driver's entry-point prefix for this cell, or ``None`` (not declared, or math changed)."""
    for cls in type(cell).__mro__:
        name = cls.__dict__.get("driver_kernel")
        if name is not None:
            same = all(getattr(type(cell), f) is getattr(cls, f)
                       for f in ("step", "project_input", "sequence", "driver_inputs"))
            if not same or not cell.driver_supported():  # type: ignore[attr-defined]
                return None
            return name
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
    """out, final state (B, S*H) = driver(xp, s0, w, e); backward through the driver's BPTT.

    ``x`` and the cell's parameters ``params`` (named ``names``) come in too, unused by the driver: the
    driver's inputs xp, w, e are made from them outside, so the ordinary backward returns gradients for xp, w,
    e (autograd carries them on to x and the parameters) and none for x and params directly; the
    differentiable backward returns the whole gradient for x, s0 and params directly and none for xp, w, e.
    Either way each input gets its total gradient once."""

    @staticmethod
    def forward(ctx, name: str, heads: int, opt: int, cell: RecurrentCell, names: tuple[str, ...], xp: Tensor,
                s0: Tensor, w: Tensor, e: Tensor, lengths: Tensor, x: Tensor, *params: Tensor):
        ext = load_generic()
        out, states, saved = getattr(ext, f"{name}_forward")(xp, s0, w, e, lengths, heads, opt)
        ctx.meta = (name, heads, opt, cell, names)
        ctx.save_for_backward(xp, w, e, lengths, states, saved, s0, x, *params)
        return out, states[-1].clone()

    @staticmethod
    def backward(ctx, dout: Tensor | None, ds_t: Tensor | None):
        name, heads, opt, cell, names = ctx.meta
        xp, w, e, lengths, states, saved, s0, x, *params = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
            d_x, d_s0, d_params = _differentiable_grads(cell, names, x, s0, params, lengths, dout, ds_t)
            return (None,) * 5 + (None, d_s0, None, None, None, d_x) + d_params
        dxp, ds0, dw, de = getattr(load_generic(), f"{name}_backward")(
            dout, ds_t, xp, w, e, lengths, heads, opt, states, saved)
        return (None,) * 5 + (dxp, ds0, dw, (de if e.numel() else None), None, None) + (None,) * len(params)


def _differentiable_grads(cell: RecurrentCell, names: tuple[str, ...], x: Tensor, s0: Tensor,
                          params: list[Tensor], lengths: Tensor, dout: Tensor | None, ds_t: Tensor | None):
    """Gradients of (out, final state) for x, s0 and the parameters through the cell's own step, recorded."""
    T, B = x.shape[0], x.shape[1]
    if lengths.numel():
        valid = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
    else:
        valid = torch.ones(T, B, dtype=torch.bool)
    state = tuple(s0.split(list(cell.state_sizes()), dim=-1))
    with torch.enable_grad():
        out, final = differentiable_loop(cell, dict(zip(names, params)), x, valid, None, None, state)
        outs, grads = [], []
        for o, g in ((out, dout), (torch.cat(final, dim=-1), ds_t)):
            if g is not None:
                outs.append(o)
                grads.append(g)
        inputs = [x, s0, *params]
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(outs, wanted, grads, create_graph=True, allow_unused=True))
        got = [next(found) if t.requires_grad else None for t in inputs]
    return got[0], got[1], tuple(got[2:])


def run(cell: RecurrentCell, p, x: Tensor, state: State, lengths: Tensor) -> tuple[Tensor, State]:
    """One layer, one direction: x (T, B, I), state as the cell's, lengths (B,) int64 or empty."""
    name = driver_for(cell)
    xp, w, e, heads, opt = cell.driver_inputs(x, p)  # type: ignore[attr-defined]
    if e is None:
        e = x.new_empty(0)
    sizes = cell.state_sizes()
    s0 = state[0].contiguous() if len(state) == 1 else torch.cat([s.contiguous() for s in state], dim=-1)  # (B, S*H)
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (x, s0, *p.values())):
        # nothing to differentiate: the extension directly (the Function's bookkeeping is most of a small call)
        out, states, _ = getattr(load_generic(), f"{name}_forward")(xp, s0, w, e, lengths, heads, opt)
        s_t = states[-1]
    else:
        names = tuple(p)
        out, s_t = GenericDriverFn.apply(name, heads, opt, cell, names, xp, s0, w, e, lengths, x, *p.values())
    return out, (s_t,) if len(sizes) == 1 else tuple(s_t.split(list(sizes), dim=-1))
