"""Which cells run on the generic C++ driver (driver.h) and how a layer call reaches it, with every option.

A cell joins by declaring, in its own file, ``driver_kernel`` (the prefix of its entry points in generic.cpp,
e.g. ``"slstm"`` for ``slstm_forward`` / ``slstm_backward``) and ``driver_inputs(x, p)``, which returns the
driver's inputs: the projected input for all steps ``xp`` (T, B, X*H) (the one input GEMM, biases folded),
the recurrent weight in the form the cell's ``Rec`` needs, the element-wise parameter vectors (E, H) or
``None``, the number of heads (block-diagonal recurrence) and the cell's option word.  A cell that reads the
layer below (``needs_lower``) declares ``driver_lower_kernel`` and ``driver_lower_inputs(x, p, lower)`` for its
upper layers, ``lower`` being the state rows of the layer below (T, B, ΣS_k).  No dispatch ladder:
:func:`driver_for` reads the declaration of the nearest class in the cell's MRO that has one, provided the
cell has that class's math (a subclass that overrides ``step`` runs on the reference backend).

Options, all inside the driver: recurrent dropout (the (B, H) mask; where it applies is the rule's ``DROP``,
driver.h), zoneout (keep masks drawn here exactly as the reference draws them: one Bernoulli draw in the
reference's order, step, then state part, then row and unit, so a seed gives the same masks; the expectation
in eval) and recording, for a cell that also declares ``driver_records(xp, w, e, prev, new, saved, rec_mask)``:
its recorded gates (the names and values its step emits) from the driver's results.

Where it runs (:func:`run`): in plain eager mode the extension directly, through
:class:`~rnnlab.backends.cpp.generic_ops.DriverFunction` when something needs a gradient; under torch.compile /
export, autocast and torch.func transforms the registered op ``torch.ops.rnnlab.driver_forward``
(generic_ops.py), which carries the same autograd formula and autocast rule (an eager inference call under
autocast casts as that rule does and calls the extension's inference entry directly).  Jit tracing (the legacy
ONNX exporter) gets an error (build with backend='reference').  When a gradient must itself be
differentiated (``create_graph=True``) it is recomputed through the cell's own PyTorch step
(:func:`rnnlab.backends.step_loop.differentiable_loop`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.backends.base import LayerCall, needs_grad, plain_eager
from rnnlab.backends.cpp.generic_loader import generic_failed, load_generic
from rnnlab.backends.cpp.generic_ops import (DriverFuncFunction, DriverFunction, autocast_inputs, cell_spec,
                                             driver_forward, param_names, reduced_inputs)
from rnnlab.backends.step_loop import _ZONEOUT_STATES, zoneout_keep
from rnnlab.cells.base import RecurrentCell, State

_DTYPES = (torch.float32, torch.float64)
#: storage dtypes the cpp backend runs by casting the call to float32 (backend.py)
REDUCED_DTYPES = (torch.bfloat16, torch.float16)
ONNX_ERROR = ("rnnlab: the fused C++ kernels (torch.ops.rnnlab.*) cannot be exported to ONNX; build the model "
              "with backend='reference' (or set RNNLAB_BACKEND=reference) before torch.onnx.export, or use "
              "`rnnlab export`")


def driver_for(cell: RecurrentCell) -> str | None:
    """The generic driver's entry-point prefix for this cell, or ``None`` (not declared, or math changed)."""
    for cls in type(cell).__mro__:
        name = cls.__dict__.get("driver_kernel")
        if name is not None:
            same = all(getattr(type(cell), f) is getattr(cls, f)
                       for f in ("step", "project_input", "sequence", "driver_inputs"))
            if not same or not cell.driver_supported():  # type: ignore[attr-defined]
                return None
            # one class, several rules (GRU's two forms): the instance names its rule
            rule = getattr(cell, "driver_rule", None)
            return rule() if rule is not None else name
    return None


def zoned_parts(cell: RecurrentCell) -> int | None:
    """How many leading state parts zoneout mixes (those named h or c), or ``None`` when such parts are not all
    at the front (the driver's keep masks cover a prefix of the state)."""
    names = cell.state_names
    Z = 0
    while Z < len(names) and names[Z] in _ZONEOUT_STATES:
        Z += 1
    return None if any(n in _ZONEOUT_STATES for n in names[Z:]) else Z


def draw_keep(widths: tuple[int, ...], T: int, B: int, rate: float, training: bool, x: Tensor) -> Tensor:
    """Zoneout's keep weights for the zoned parts of these widths, drawn in the reference's order (step, part,
    row, unit): (T, Z, B, H) when the parts have one width, else (T, B, sum of widths), each row's parts side by
    side (the projected LSTM's h (P) and c (H); driver.h proj_bit)."""
    opts = dict(dtype=x.dtype, device=x.device)
    if len(set(widths)) == 1:
        return zoneout_keep((T, len(widths), B, widths[0]), rate, training, **opts)
    total = sum(widths)
    if not training:
        return torch.full((T, B, total), rate, **opts)
    flat = zoneout_keep((T, B * total), rate, training, **opts)
    parts = flat.split([B * w for w in widths], dim=1)
    return torch.cat([p.view(T, B, w) for p, w in zip(parts, widths)], dim=-1)


def _plain(x: Tensor) -> bool:
    """Plain eager mode without autocast: the extension is called directly (else the registered op)."""
    return plain_eager(x) and not torch.is_autocast_enabled("cpu")


def kernel_name(cell: RecurrentCell, lower: bool) -> str | None:
    """The driver rule for this cell's call: :func:`driver_for`, or with a layer below its
    ``driver_lower_kernel`` (``None`` when it has none)."""
    name = driver_for(cell)
    if name is None or not lower:
        return name
    return getattr(cell, "driver_lower_kernel", None)


def supports(call: LayerCall) -> bool:
    """Whether the generic driver computes this call (the cpp backend has already checked device and dtype; it
    runs a bfloat16 / float16 call in float32)."""
    cell = call.cell
    name = kernel_name(cell, call.lower is not None)
    if name is None or generic_failed() or call.x.dtype not in _DTYPES + REDUCED_DTYPES:
        return False
    if torch.jit.is_tracing():
        return True  # run() raises the clear error (the legacy ONNX exporter has no rule for the op)
    if call.zoneout and zoned_parts(cell) is None:
        return False
    if call.record and not hasattr(cell, "driver_records"):
        return False
    if not _plain(call.x) and cell_spec(cell, name) is None:
        return False  # the registered op needs the cell as a string
    ext = load_generic()
    return ext is not None and hasattr(ext, f"{name}_forward")


def _names(cell: RecurrentCell) -> tuple[str, ...]:
    names = cell.__dict__.get("_rnnlab_param_names")
    if names is None:
        names = cell.__dict__["_rnnlab_param_names"] = param_names(cell)
    return names


def run(cell: RecurrentCell, p, x: Tensor, state: State, lengths: Tensor, rec_mask: Tensor | None = None,
        zoneout: float = 0.0, training: bool = False, record: bool = False, lower: State | None = None,
        want_states: bool = False, bf16_products: bool = False
        ) -> tuple[Tensor, State, State | None, dict[str, Tensor]]:
    """One layer, one direction: x (T, B, I) in processing order, state as the cell's, lengths (B,) int64 or
    empty, rec_mask (B, H) or None, zoneout the keep probability, lower the layer below's states (T, B, S_k)
    each in processing order or None.  Returns the outputs (T, B, H), the final state, with ``want_states``
    every step's state (T, B, S_k) each in processing order (differentiable: the driver takes their gradients),
    and with ``record`` the recorded gates (T, B, H) each, zero at padded steps.  ``bf16_products``: x, p and
    lower are a bf16 model's (state and rec_mask float32): the projection runs in bf16 and the driver's products
    in bf16 (generic_ops.reduced_inputs), its states and outputs in float32."""
    if torch.jit.is_tracing():
        # torch.jit.trace, what torch.onnx.export(dynamo=False) runs: the ONNX exporter has no rule for the op
        raise RuntimeError(ONNX_ERROR)
    name = kernel_name(cell, lower is not None)
    if lower is None:
        below = x.new_empty(0)
        xp, w, e, heads, opt = cell.driver_inputs(x, p)  # type: ignore[attr-defined]
    else:
        below = cell.driver_state(lower)  # (T, B, ΣS_k): the layer below is of the same kind
        xp, w, e, heads, opt = cell.driver_lower_inputs(x, p, below)  # type: ignore[attr-defined]
    if e is None:
        e = x.new_empty(0)
    if bf16_products:
        opt, xp, w, (e,) = reduced_inputs(opt, xp, w, [e], True)
    sizes = cell.state_sizes()
    s0 = cell.driver_state(state)  # (B, S*H)
    T, B = x.shape[0], x.shape[1]
    off = s0.new_empty(0)  # rec_mask / keep "off"
    mask = off if rec_mask is None else rec_mask
    keep = off
    if zoneout:  # in the states' dtype (float32 for a bf16 model, as its reference run draws after casting up)
        keep = draw_keep(sizes[:zoned_parts(cell)], T, B, zoneout, training, s0)
    params = [p[n] for n in _names(cell)]
    direct = plain_eager(x)  # the extension called directly, else the registered op
    if direct and torch.is_autocast_enabled("cpu"):
        # an inference call (nothing for autograd, recording or a layer above) casts as the op's autocast rule
        # does (generic_ops.py) and takes the inference entry below; any other goes through the op and its rule
        direct = not (record or want_states or needs_grad(x, s0, *params))
        if direct:
            opt, xp, w, (e, s0, mask, keep) = autocast_inputs(opt, xp, w, [e, s0, mask, keep])
    if direct:
        if not needs_grad(x, s0, *params):
            # nothing to differentiate: the extension directly (the Function's bookkeeping is most of a small call)
            if not (record or want_states):  # nor anything else reads the steps' states and saved blocks
                out, s_t = getattr(load_generic(), f"{name}_infer")(xp, s0, w, e, lengths, heads, opt, mask, keep)
            else:
                out, states, saved, fresh = getattr(load_generic(), f"{name}_forward")(
                    xp, s0, w, e, lengths, heads, opt, mask, keep)
                s_t = states[-1]
        else:
            out, s_t, states, saved, fresh = DriverFunction.apply(name, heads, opt, cell, xp, w, e, s0, lengths,
                                                                  mask, keep, x, below, *params)
    else:
        spec = cell_spec(cell, name)
        if torch._C._are_functorch_transforms_active():
            out, s_t, states, saved, fresh = DriverFuncFunction.apply(spec, heads, opt, xp, w, e, s0, lengths,
                                                                      mask, keep, x, below, *params)
        else:
            out, s_t, states, saved, fresh = driver_forward(spec, heads, opt, xp, w, e, s0, lengths, mask, keep,
                                                            x, below, params)
    records: dict[str, Tensor] = {}
    if record:
        new = fresh if fresh.dim() == 3 else states[1:]  # the cell's own new states (before zoneout)
        records = cell.driver_records(xp, w, e, states[:-1], new, saved, rec_mask)  # type: ignore[attr-defined]
        if lengths.numel():
            valid = (torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
            records = {k: v.masked_fill(~valid, 0.0) for k, v in records.items()}
    seq = cell.from_driver_state(states[1:]) if want_states else None
    return out, cell.from_driver_state(s_t), seq, records
