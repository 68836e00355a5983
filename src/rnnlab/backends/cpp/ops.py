"""The fused kernels as registered PyTorch operators (``torch.ops.rnnlab.*``), visible to compile/export/func/autocast.

One forward and one backward op, ``rnnlab::lstm_forward`` / ``rnnlab::lstm_backward``: kernels.cpp's LSTM, which
runs the LSTM with a projection (``proj_size``), the one cell not yet on the generic driver (every other cell
runs on the driver's op pair, generic_ops.py).  Both are defined with ``torch.library.custom_op`` and given:

- a CPU implementation: the compiled extension (loader.py);
- a fake implementation (output shapes only), so ``torch.compile(fullgraph=True)`` and ``torch.export`` (with a
  dynamic sequence length) trace through them;
- an autograd formula: the forward op's extra outputs (gates, cell states, ...) are what the backward op needs.
  When the gradient itself is being differentiated (``create_graph=True``: the backward runs with grad mode on),
  the layer is re-run with its differentiable twin (twins.py) and differentiated instead, so second derivatives
  are exact, never ``None`` or zero;
- a vmap rule: a loop over the vmapped dimension (each slice is one ordinary kernel call);
- an autocast policy: under ``torch.autocast("cpu", torch.bfloat16 / torch.float16)`` every floating input is cast
  to float32 and the op computes and returns float32 (the kernels take float32 / float64 only; the recurrence
  accumulates over all steps, so its state stays in float32 as ``torch.nn.LSTM``'s oneDNN kernel does);
- under ``torch.jit.trace`` (what ``torch.onnx.export(dynamo=False)`` runs) :func:`run` raises a clear error
  instead of exporting a graph of uninitialised constants (use ``backend="reference"`` or ``rnnlab export``).

Example:
    >>> import torch
    >>> from rnnlab.backends.cpp import ops
    >>> out, h, c = torch.ops.rnnlab.lstm_forward(torch.randn(5, 2, 16), torch.zeros(2, 2), torch.zeros(2, 4),
    ...     torch.randn(16, 2), torch.zeros(3, 4), torch.randn(2, 4), ops.NO_LENGTHS, 63)[:3]  # doctest: +SKIP
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Sequence

import torch
from torch import Tensor

from rnnlab.backends.cpp import twins
from rnnlab.backends.cpp.loader import load_kernels

#: "every sequence is full" (lengths argument of every op)
NO_LENGTHS = torch.empty(0, dtype=torch.int64)

ONNX_ERROR = ("rnnlab: the fused C++ kernels (torch.ops.rnnlab.*) cannot be exported to ONNX; build the model "
              "with backend='reference' (or set RNNLAB_BACKEND=reference) before torch.onnx.export, or use "
              "`rnnlab export`")


def _ext() -> ModuleType:
    ext = load_kernels()
    if ext is None:
        raise RuntimeError("rnnlab: the fused C++ kernels could not be built (see the warning logged by "
                           "rnnlab.backends); use backend='reference'")
    return ext


def plain(t: Tensor) -> bool:
    """A real CPU tensor in plain eager mode: no compile/export tracing (fake tensors), no torch.func transform,
    no jit tracing.  There the extension is called directly (the op dispatch costs tens of µs per call)."""
    return (type(t) is Tensor and not torch._C._are_functorch_transforms_active()
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


def _call(op, name: str, *args):
    """``op(*args)``, or the extension function behind it directly when that is equivalent (plain eager)."""
    if plain(args[0]):
        return tuple(getattr(_ext(), name)(*args))
    return op(*args)


def _z(g: Tensor | None, like: Tensor) -> Tensor:
    """Autograd passes None for an output that was not used; the kernels want zeros."""
    return torch.zeros_like(like) if g is None else g


def _opt(g: Tensor, t: Tensor) -> Tensor | None:
    """Gradient of an optional input passed as an empty tensor when absent."""
    return g if t.numel() else None


def _twin_backward(twin: Callable[..., tuple[Tensor, ...]], args: Sequence[object], grads: Sequence[Tensor | None],
                   needs: Sequence[bool]) -> list[Tensor | None]:
    """Gradients of the differentiable twin (create_graph path): exact and themselves differentiable."""
    with torch.enable_grad():
        outs = twin(*args)
    wrt = [i for i, a in enumerate(args) if needs[i] and isinstance(a, Tensor) and a.requires_grad]
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    result: list[Tensor | None] = [None] * len(args)
    if not wrt or not pairs:
        return result
    got = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wrt], [g for _, g in pairs],  # type: ignore
                              create_graph=True, allow_unused=True)
    for i, g in zip(wrt, got):
        result[i] = g if g is not None else torch.zeros_like(args[i])  # type: ignore[arg-type]
    return result


# --- LSTM -----------------------------------------------------------------------------------------------------
@torch.library.custom_op("rnnlab::lstm_forward", mutates_args=())
def lstm_forward(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, peep: Tensor, w_hr: Tensor, lengths: Tensor,
                 flags: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(_ext().lstm_forward(xp, h0, c0, w_hh, peep, w_hr, lengths, flags))  # type: ignore[return-value]


@lstm_forward.register_fake
def _(xp, h0, c0, w_hh, peep, w_hr, lengths, flags):
    T, B, G = xp.shape
    R, H = h0.shape[1], c0.shape[1]
    ms = xp.new_empty(T, B, H) if w_hr.numel() else xp.new_empty(0)
    return (xp.new_empty(T, B, R), xp.new_empty(B, R), xp.new_empty(B, H), xp.new_empty(T, B, G),
            xp.new_empty(T, B, H), ms)


@torch.library.custom_op("rnnlab::lstm_backward", mutates_args=())
def lstm_backward(gout: Tensor, ghT: Tensor, gcT: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, peep: Tensor,
                  w_hr: Tensor, lengths: Tensor, flags: int, out: Tensor, gates: Tensor, cs: Tensor,
                  ms: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(_ext().lstm_backward(gout, ghT, gcT, h0, c0, w_hh, peep, w_hr, lengths, flags, out, gates,  # type: ignore[return-value]
                                      cs, ms))


@lstm_backward.register_fake
def _(gout, ghT, gcT, h0, c0, w_hh, peep, w_hr, lengths, flags, out, gates, cs, ms):
    return (gates.new_empty(gates.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape), w_hh.new_empty(w_hh.shape),
            peep.new_empty(3, c0.shape[1]), w_hr.new_empty(w_hr.shape) if w_hr.numel() else w_hr.new_empty(0))


def _lstm_setup(ctx, inputs, output):
    xp, h0, c0, w_hh, peep, w_hr, lengths, flags = inputs
    ctx.flags = flags
    ctx.save_for_backward(xp, h0, c0, w_hh, peep, w_hr, lengths, *output)


def _lstm_backward(ctx, gout, ghT, gcT, *_aux):
    xp, h0, c0, w_hh, peep, w_hr, lengths, out, hT, cT, gates, cs, ms = ctx.saved_tensors
    if torch.is_grad_enabled():  # the gradient will be differentiated: use the differentiable twin
        args = (xp, h0, c0, w_hh, peep, w_hr, lengths, ctx.flags)
        return tuple(_twin_backward(twins.lstm, args, (gout, ghT, gcT), ctx.needs_input_grad))
    dxp, dh0, dc0, dw_hh, dpeep, dw_hr = _call(lstm_backward, "lstm_backward", _z(gout, out), _z(ghT, hT), _z(gcT, cT), h0, c0, w_hh, peep,
                                                       w_hr, lengths, ctx.flags, out, gates, cs, ms)
    return dxp, dh0, dc0, dw_hh, dpeep, _opt(dw_hr, w_hr), None, None


lstm_forward.register_autograd(_lstm_backward, setup_context=_lstm_setup)


# --- shared rules: vmap, autocast -----------------------------------------------------------------------------
FORWARD_OPS = (lstm_forward,)
BACKWARD_OPS = (lstm_backward,)


def _vmap_loop(op):
    """A vmap rule for ``op``: one ordinary call per slice of the vmapped dimension, outputs stacked on dim 0."""

    def rule(info, in_dims, *args):
        outs = []
        for k in range(info.batch_size):
            sliced = [a.select(d, k) if d is not None else a for a, d in zip(args, in_dims)]
            outs.append(op(*sliced))
        stacked = tuple(torch.stack([o[j] for o in outs]) for j in range(len(outs[0])))
        return stacked, tuple(0 for _ in stacked)

    return rule


for _op in FORWARD_OPS + BACKWARD_OPS:
    torch.library.register_vmap(_op, _vmap_loop(_op))
    # reduced precision in, float32 compute and out (module docstring)
    torch.library.register_autocast(_op, "cpu", torch.float32)


# --- eager entry point ----------------------------------------------------------------------------------------
def _eager_function(kind: str, setup, backward) -> type[torch.autograd.Function]:
    """The same autograd formula as the op, as a plain autograd.Function calling the extension (eager only)."""
    name = f"{kind}_forward"

    def forward(ctx, *args):
        # classic forward(ctx, ...) form: measured cheaper per call than a separate setup_context
        output = tuple(getattr(_ext(), name)(*args))
        setup(ctx, args, output)
        return output

    return type(f"{kind.title().replace('_', '')}Function", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def _func_function(kind: str, op, setup, backward) -> type[torch.autograd.Function]:
    """The op's autograd formula as an autograd.Function in the form torch.func transforms accept (separate
    setup_context, vmap rule generated from the op's own): the op's built-in autograd wrapper is refused by
    ``torch.func.grad`` / ``jacrev``."""

    def forward(*args):
        return op(*args)

    return type(f"{kind.title().replace('_', '')}FuncFunction", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "setup_context": staticmethod(setup),
                 "backward": staticmethod(backward), "generate_vmap_rule": True})


_KINDS = {"lstm": (lstm_forward, _lstm_setup, _lstm_backward)}
_EAGER = {kind: _eager_function(kind, setup, bwd) for kind, (_, setup, bwd) in _KINDS.items()}
_FUNC = {kind: _func_function(kind, op, setup, bwd) for kind, (op, setup, bwd) in _KINDS.items()}
_OPS = {kind: op for kind, (op, _, _) in _KINDS.items()}
_EXT_NAMES = {kind: f"{kind}_forward" for kind in _KINDS}


def run(kind: str, *args):
    """Run kernel ``kind`` ("lstm", "gru", ...) with the op's arguments; returns all of the op's outputs.

    Plain eager float32/64 calls skip the dispatcher: without autograd the extension is called directly, with
    autograd through an ``autograd.Function`` sharing the op's formula.  Everything else (torch.compile /
    export tracing, torch.func transforms, autocast's reduced-precision inputs, jit tracing) calls the
    registered op, which handles it (under torch.func transforms through an autograd.Function with the same
    formula, the form those transforms accept).
    """
    if torch.jit.is_tracing():
        # torch.jit.trace, what torch.onnx.export(dynamo=False) runs: the ONNX exporter has no rule for these ops
        raise RuntimeError(ONNX_ERROR)
    xp = args[0]
    if plain(xp) and xp.dtype in (torch.float32, torch.float64):
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            return _EAGER[kind].apply(*args)
        return tuple(getattr(_ext(), _EXT_NAMES[kind])(*args))
    if torch._C._are_functorch_transforms_active():
        return _FUNC[kind].apply(*args)
    return _OPS[kind](*args)
