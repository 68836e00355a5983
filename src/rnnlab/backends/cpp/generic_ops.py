"""The generic C++ driver as one registered operator pair for every cell on it: ``torch.ops.rnnlab.driver_*``.

``rnnlab::driver_forward(spec, heads, opt, xp, w, e, s0, lengths, rec_mask, keep, x, lower, params)`` runs the
driver (driver.h) for the cell that ``spec`` names and returns ``(out, s_T, states, saved, fresh)``;
``rnnlab::driver_backward`` is its BPTT, for ``out``, ``s_T`` and every row of ``states`` (a layer above may read
them: the depth-gated LSTM).  ``spec`` is a JSON string naming the driver rule, the cell's class and
the arguments it was constructed with (:func:`cell_spec`): a custom op cannot take a Python object, and the
string rebuilds an equivalent cell (:func:`cell_from_spec`, cached, parameters on the meta device) wherever the
cell's own step is needed.  Nothing here is per cell: a cell that joins the driver (``driver_kernel`` +
``driver_inputs``) gets all of this with no registration.

The pair has:

- a CPU implementation (the extension) and a fake one: output shapes from the rule's block counts
  (``<rule>_sizes(opt)``; with the rule's output projection on, h is P = w.shape[1] wide), so
  ``torch.compile(fullgraph=True)`` and ``torch.export`` with a dynamic T trace it;
- an autograd formula: the driver's backward gives the gradients of xp, w, e, s0 (autograd carries those of
  xp, w, e on to x and the parameters through ``driver_inputs``, which runs outside the op); when the gradient
  is itself differentiated (grad mode on in backward: ``create_graph=True``, ``torch.func.grad``) the layer is
  recomputed through the rebuilt cell's own step (step_loop.differentiable_loop) and the whole gradient goes to
  x, s0 and the parameters directly instead, so second derivatives are exact;
- a vmap rule (a loop over the vmapped dimension) and an autocast rule: ``xp`` goes on as autocast's
  projection made it (bf16 / fp16, or float32; the driver reads it as float32), every other floating input in
  float32, and under bf16 autocast on a CPU with native bf16 GEMMs (AVX-512 BF16, AMX) the option word asks for
  bf16 products (:data:`BF16_PRODUCTS_BIT`) when the rule forms products: the driver's per-step products and
  weight gradients then run in bf16 with float32 accumulation (gemm.h ReducedProducts) while its element-wise
  rules, states and outputs stay float32 (the recurrence accumulates over every step; the weights are read
  exact).  Elsewhere, under fp16 autocast, and for rules without a product (SRU, IndRNN, minGRU / minLSTM) the
  driver computes in float32.  :data:`BF16_PRODUCTS` switches the bf16 products off.

``x``, ``lower`` (the layer below's state rows (T, B, ΣS_k) for a cell that reads them, else empty) and ``params``
are inputs of the op only for that second-derivative path; the driver does not read them.
In plain eager mode :class:`DriverFunction` calls the extension directly with the same formula (the dispatcher
costs tens of µs per call); under torch.func transforms :class:`DriverFuncFunction` wraps the op in the form
those transforms accept.

Example:
    >>> from rnnlab.cells.indrnn import IndRNNCell
    >>> spec = cell_spec(IndRNNCell(3, 4, nonlinearity="tanh"), "indrnn")
    >>> cell_from_spec(spec).nonlinearity
    'tanh'
"""

from __future__ import annotations

import functools
import importlib
import json
from types import ModuleType

import torch
from torch import Tensor

from rnnlab.backends.cpp.generic_loader import load_generic
from rnnlab.backends.step_loop import differentiable_loop
from rnnlab.cells.base import RecurrentCell

_SKIP_INIT = ("device", "dtype")
_JSON_TYPES = (bool, int, float, str, type(None))


def _ext() -> ModuleType:
    ext = load_generic()
    if ext is None:
        raise RuntimeError("rnnlab: the generic C++ driver could not be built (see the warning logged by "
                           "rnnlab.backends); use backend='reference'")
    return ext


@functools.lru_cache(maxsize=None)
def sizes(kernel: str, opt: int) -> tuple[int, int, int, int, int, int]:
    """The rule's block counts (X, G, S, A, E) for this option word (driver.h), then its projection bit."""
    return tuple(getattr(_ext(), f"{kernel}_sizes")(opt))  # type: ignore[return-value]


def widths(kernel: str, opt: int, xp: Tensor, w: Tensor) -> tuple[int, int]:
    """(state row width, output width) of a driver call: S*H and H, or with the rule's output projection on
    (driver.h proj_bit; w = [W; W_rᵀ] with P columns) S*H + P and P."""
    X, _, S, _, _, proj = sizes(kernel, opt)
    H = xp.shape[2] // X
    if opt & proj:
        return S * H + w.shape[1], w.shape[1]
    return S * H, H


# --- the cell as a string ---------------------------------------------------------------------------------
def _plain_json(v: object) -> object:
    """``v`` with tuples as lists if it is made of JSON scalars, lists, tuples and str-keyed dicts; else raise."""
    if isinstance(v, _JSON_TYPES):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain_json(a) for a in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {k: _plain_json(a) for k, a in v.items()}
    raise TypeError(f"not plain JSON: {type(v).__name__}")


# torch.compile evaluates this at trace time and keeps the string as a constant (json is not traceable)
@torch.compiler.assume_constant_result
def cell_spec(cell: RecurrentCell, kernel: str) -> str | None:
    """A JSON string that rebuilds an equivalent cell: ``kernel`` (the driver rule), the cell's class (one of
    rnnlab's own) and the arguments it was constructed with (RecurrentCell.__new__ keeps them; device and
    dtype dropped).  ``None`` when that is not possible (a class outside rnnlab, an argument that is not plain
    JSON, a rebuilt cell that differs): the call then stays off the registered op.  Cached on the cell."""
    cached = cell.__dict__.get("_rnnlab_driver_spec")
    if cached is not None and cached[0] == kernel:
        return cached[1]
    cls = type(cell)
    init = cell.__dict__.get("_init_args")
    if init is None or not cls.__module__.startswith("rnnlab."):
        return None
    args, kwargs = init
    try:
        plain = _plain_json([list(args), {k: v for k, v in kwargs.items() if k not in _SKIP_INIT}])
    except TypeError:
        return None
    spec = json.dumps({"kernel": kernel, "class": f"{cls.__module__}:{cls.__qualname__}", "args": plain[0],
                       "kwargs": plain[1]}, sort_keys=True)
    try:
        rebuilt = cell_from_spec(spec)
    except (TypeError, ValueError):
        return None
    if type(rebuilt) is not cls or rebuilt.extra_repr() != cell.extra_repr():
        return None
    cell.__dict__["_rnnlab_driver_spec"] = (kernel, spec)
    return spec


@functools.lru_cache(maxsize=256)
def cell_from_spec(spec: str) -> RecurrentCell:
    """The cell a :func:`cell_spec` string describes (parameters on the meta device: only its step is used,
    with the op's own parameter tensors).  Only rnnlab's own cell classes are looked up (the string may come
    from a loaded exported program)."""
    d = json.loads(spec)
    module, _, qualname = d["class"].partition(":")
    if not module.startswith("rnnlab.cells."):
        raise ValueError(f"cell spec: {d['class']!r} is not one of rnnlab's cells")
    cls = getattr(importlib.import_module(module), qualname, None)
    if not (isinstance(cls, type) and issubclass(cls, RecurrentCell)):
        raise ValueError(f"cell spec: {d['class']!r} is not a RecurrentCell")
    return cls(*d["args"], **d["kwargs"], device="meta")


@functools.lru_cache(maxsize=256)
def _kernel_of(spec: str) -> str:
    return json.loads(spec)["kernel"]


def param_names(cell: RecurrentCell) -> tuple[str, ...]:
    """The order in which the parameters are passed to the op (the cell's ParamSpec order)."""
    return tuple(s.name for s in cell.param_specs())


# --- the two ops ------------------------------------------------------------------------------------------
@torch.library.custom_op("rnnlab::driver_forward", mutates_args=())
def driver_forward(spec: str, heads: int, opt: int, xp: Tensor, w: Tensor, e: Tensor, s0: Tensor, lengths: Tensor,
                   rec_mask: Tensor, keep: Tensor, x: Tensor, lower: Tensor,
                   params: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out (T, B, H), s_T (B, S*H), states (T+1, B, S*H), saved (T, B, A*H), fresh (T, B, S*H) or empty)."""
    out, states, saved, fresh = getattr(_ext(), f"{_kernel_of(spec)}_forward")(
        xp, s0, w, e, lengths, heads, opt, rec_mask, keep)
    return out, states[-1].clone(), states, saved, fresh


@driver_forward.register_fake
def _(spec, heads, opt, xp, w, e, s0, lengths, rec_mask, keep, x, lower, params):
    X, _, _, A, _, _ = sizes(_kernel_of(spec), opt)
    T, B = xp.shape[0], xp.shape[1]
    H = xp.shape[2] // X
    SW, HW = widths(_kernel_of(spec), opt, xp, w)
    # everything in the states' dtype (xp may be bf16 with float32 states: the bf16 products)
    fresh = s0.new_empty(T, B, SW) if keep.dim() > 1 else s0.new_empty(0)
    return (s0.new_empty(T, B, HW), s0.new_empty(B, SW), s0.new_empty(T + 1, B, SW),
            s0.new_empty(T, B, A * H), fresh)


@torch.library.custom_op("rnnlab::driver_backward", mutates_args=())
def driver_backward(kernel: str, heads: int, opt: int, dout: Tensor, ds_t: Tensor, xp: Tensor, w: Tensor, e: Tensor,
                    lengths: Tensor, rec_mask: Tensor, keep: Tensor, states: Tensor, saved: Tensor,
                    fresh: Tensor, dstates: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dxp, ds0, dw, de) of the forward op's (out, s_T, states); ``dstates`` empty when no state row was read."""
    return tuple(getattr(_ext(), f"{kernel}_backward")(  # type: ignore[return-value]
        dout, ds_t, xp, w, e, lengths, heads, opt, rec_mask, keep, states, saved, fresh, dstates))


@driver_backward.register_fake
def _(kernel, heads, opt, dout, ds_t, xp, w, e, lengths, rec_mask, keep, states, saved, fresh, dstates):
    E = sizes(kernel, opt)[4]
    return (xp.new_empty(xp.shape), ds_t.new_empty(ds_t.shape), w.new_empty(w.shape),
            ds_t.new_empty(E, xp.shape[2] // sizes(kernel, opt)[0]))


# --- the autograd formula, shared by the op, the eager Function and the torch.func Function ----------------
def _valid(lengths: Tensor, T: int, B: int) -> Tensor:
    """(T, B) bool: the steps each row computes."""
    if lengths.numel():
        return torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)
    return torch.ones(T, B, dtype=torch.bool)


def keep_parts(cell: RecurrentCell, keep: Tensor) -> tuple[Tensor, ...] | None:
    """The driver's zoneout keep weights as the reference loop takes them: one (T, B, S_k) tensor per zoned part.
    (T, Z, B, H) when the zoned parts have one width, else (T, B, sum of widths), parts side by side."""
    if keep.dim() == 4:
        return tuple(keep.unbind(1))
    if keep.dim() == 3:
        parts, total = [], 0
        for width in cell.state_sizes():
            if total == keep.shape[-1]:
                break
            parts.append(width)
            total += width
        return tuple(keep.split(parts, dim=-1))
    return None


def differentiable_grads(cell: RecurrentCell, x: Tensor, s0: Tensor, params: list[Tensor], lengths: Tensor,
                         rec_mask: Tensor, keep: Tensor, lower: Tensor, dout: Tensor | None, ds_t: Tensor | None,
                         dstates: Tensor | None):
    """Gradients of (out, s_T, states) for x, s0, lower and the parameters through the cell's own step, recorded
    (so they can be differentiated again).  ``lower``: the layer below's state rows (the same cell kind) or
    empty.  Returns (d x, d s0, d lower, d params)."""
    T, B = x.shape[0], x.shape[1]
    state = cell.from_driver_state(s0)
    keeps = keep_parts(cell, keep)
    below = cell.from_driver_state(lower) if lower.numel() else None
    with torch.enable_grad():
        out, final, seq = differentiable_loop(cell, dict(zip(param_names(cell), params)), x, _valid(lengths, T, B),
                                              rec_mask if rec_mask.numel() else None, keeps, state, lower=below,
                                              want_states=dstates is not None)
        outs, grads = [], []
        rows = None if seq is None else torch.cat([s0.unsqueeze(0), cell.driver_state(seq)])  # (T+1, B, SW)
        for o, g in ((out, dout), (cell.driver_state(final), ds_t), (rows, dstates)):
            if g is not None:
                outs.append(o)
                grads.append(g)
        inputs = [x, s0, lower, *params]
        wanted = [t for t in inputs if t.requires_grad]
        got: list[Tensor | None] = [None] * len(inputs)
        if wanted and outs:
            found = iter(torch.autograd.grad(outs, wanted, grads, create_graph=True, allow_unused=True))
            got = [next(found) if t.requires_grad else None for t in inputs]
    return got[0], got[1], got[2], list(got[3:])


def _z(g: Tensor | None, shape, like: Tensor) -> Tensor:
    """Autograd passes None for an output that was not used; the driver wants zeros."""
    return like.new_zeros(shape) if g is None else g.contiguous()


def _save(ctx, kernel: str, heads: int, opt: int, cell_of, inputs: tuple, states: Tensor, saved: Tensor,
          fresh: Tensor) -> None:
    xp, w, e, s0, lengths, rec_mask, keep, x, lower, params = inputs
    ctx.meta = (kernel, heads, opt, cell_of, len(params))
    # an output nobody read gets None, not zeros: the state rows' gradient is (T+1, B, SW) and rarely wanted
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(xp, w, e, s0, lengths, rec_mask, keep, x, lower, states, saved, fresh, *params)


def _grads(ctx, dout: Tensor | None, ds_t: Tensor | None, dstates: Tensor | None, backward_op) -> tuple:
    """(d xp, d w, d e, d s0, d x, d lower, d params): either the driver's (xp, w, e, s0) or the recomputed (x,
    s0, lower, params) set, never both, so that every input gets its total gradient once (the driver's d lower
    reaches the layer below through xp, where its cell's ``driver_lower_inputs`` put it)."""
    kernel, heads, opt, cell_of, n = ctx.meta
    xp, w, e, s0, lengths, rec_mask, keep, x, lower, states, saved, fresh, *params = ctx.saved_tensors
    if torch.is_grad_enabled():  # the gradient will be differentiated: through the cell's own step
        d_x, d_s0, d_lower, d_params = differentiable_grads(cell_of(), x, s0, params, lengths, rec_mask, keep,
                                                            lower, dout, ds_t, dstates)
        return None, None, None, d_s0, d_x, d_lower, d_params
    T, B = xp.shape[0], xp.shape[1]
    dout = _z(dout, (T, B, widths(kernel, opt, xp, w)[1]), s0)  # the states' dtype (xp may be bf16)
    ds_t = _z(ds_t, s0.shape, s0)
    dstates = s0.new_empty(0) if dstates is None else dstates.contiguous()
    dxp, ds0, dw, de = backward_op(kernel, heads, opt, dout, ds_t, xp, w, e, lengths, rec_mask, keep, states,
                                   saved, fresh, dstates)
    return dxp, (dw if w.numel() else None), (de if e.numel() else None), ds0, None, None, [None] * n


def _op_setup(ctx, inputs, output) -> None:
    spec, heads, opt, xp, w, e, s0, lengths, rec_mask, keep, x, lower, params = inputs
    _save(ctx, _kernel_of(spec), heads, opt, functools.partial(cell_from_spec, spec),
          (xp, w, e, s0, lengths, rec_mask, keep, x, lower, list(params)), *output[2:])
    ctx.mark_non_differentiable(*output[3:])


def _op_backward(ctx, dout, ds_t, dstates, *_aux):
    dxp, dw, de, ds0, dx, dlower, dparams = _grads(ctx, dout, ds_t, dstates, driver_backward)
    return None, None, None, dxp, dw, de, ds0, None, None, None, dx, dlower, dparams


driver_forward.register_autograd(_op_backward, setup_context=_op_setup)


def _ext_backward(kernel, heads, opt, *args):
    # args: dout, ds_t, xp, w, e, lengths | rec_mask, keep, states, saved, fresh, dstates (the extension's order)
    return tuple(getattr(_ext(), f"{kernel}_backward")(*args[:6], heads, opt, *args[6:]))


def _vmap_loop(op, tensor_args: range):
    """A vmap rule: one ordinary call per slice of the vmapped dimension, outputs stacked on dim 0.  Tensor
    list arguments get a list of dims."""

    def pick(a, d, k):
        if isinstance(a, (list, tuple)):
            return [pick(ai, di, k) for ai, di in zip(a, d if isinstance(d, (list, tuple)) else [d] * len(a))]
        return a.select(d, k) if d is not None else a

    def rule(info, in_dims, *args):
        outs = [op(*[pick(a, d, k) if i in tensor_args else a for i, (a, d) in enumerate(zip(args, in_dims))])
                for k in range(info.batch_size)]
        stacked = tuple(torch.stack([o[j] for o in outs]) for j in range(len(outs[0])))
        return stacked, tuple(0 for _ in stacked)

    return rule


torch.library.register_vmap(driver_forward, _vmap_loop(driver_forward, range(3, 13)))
torch.library.register_vmap(driver_backward, _vmap_loop(driver_backward, range(3, 15)))

# --- autocast ---------------------------------------------------------------------------------------------
#: under bf16 CPU autocast, run the driver's products in bf16 where the CPU has native bf16 GEMMs (module
#: docstring); False: float32 products (benchmarks compare both in one process)
BF16_PRODUCTS = True
#: the bit of a call's option word that asks the driver for bf16 products (driver.h kBf16Products; the
#: extension's ``BF16_PRODUCTS``); the cell's own option bits are all below it
BF16_PRODUCTS_BIT = 1 << 62
_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
_autocast_lib = torch.library.Library("rnnlab", "IMPL")


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """This CPU runs oneDNN's bf16 GEMMs natively (AVX-512 BF16 or AMX), so bf16 products pay."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def products_dtype() -> torch.dtype:
    """The dtype of the driver's products under the current CPU autocast: bf16 or float32."""
    if BF16_PRODUCTS and torch.get_autocast_dtype("cpu") == torch.bfloat16 and native_bf16():
        return torch.bfloat16
    return torch.float32


def autocast_cast(value, dtype: torch.dtype = torch.float32):
    """``value`` (a tensor or a list of them) with its reduced-precision / float32 floating tensors in ``dtype``
    (float64 stays: autocast leaves it alone)."""
    if isinstance(value, (list, tuple)):
        return [autocast_cast(v, dtype) for v in value]
    if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.to(dtype)
    return value


def reduced_inputs(opt: int, xp: Tensor, w: Tensor, rest: list, bf16: bool) -> tuple[int, Tensor, Tensor, list]:
    """A call's option word and tensors for the driver with xp in reduced precision: xp as it comes (bf16 / fp16,
    or float32; the driver reads it as float32 and keeps it at that size for backward), every other floating
    tensor in float32, and with ``bf16`` the option word asking for bf16 products (:data:`BF16_PRODUCTS_BIT`)
    when the rule forms products (its recurrent weight ``w`` is a matrix: not SRU, minGRU / minLSTM or IndRNN's
    diagonal)."""
    if bf16 and w.dim() == 2:
        opt |= BF16_PRODUCTS_BIT
    return opt, xp, autocast_cast(w), autocast_cast(rest)


def autocast_inputs(opt: int, xp: Tensor, w: Tensor, rest: list) -> tuple[int, Tensor, Tensor, list]:
    """The forward op's option word and tensors as its autocast rule passes them on (:func:`reduced_inputs`, bf16
    products where :func:`products_dtype` says so)."""
    return reduced_inputs(opt, xp, w, rest, products_dtype() == torch.bfloat16)


def bf16_storage_products() -> bool:
    """A model stored in bf16 runs its projection in bf16 and the driver's products in bf16 (backend.py): on a CPU
    with native bf16 GEMMs, unless :data:`BF16_PRODUCTS` is off."""
    return BF16_PRODUCTS and native_bf16()


def _forward_autocast(_keyset, spec, heads, opt, xp, w, *rest):
    opt, xp, w, rest = autocast_inputs(opt, xp, w, list(rest))
    with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
        return torch.ops.rnnlab.driver_forward.default(spec, heads, opt, xp, w, *rest)


def _backward_autocast(_keyset, kernel, heads, opt, dout, ds_t, xp, *rest):
    # xp keeps the dtype the forward had (a saved tensor); opt already says what the forward's products were
    with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
        return torch.ops.rnnlab.driver_backward.default(kernel, heads, opt, autocast_cast(dout), autocast_cast(ds_t),
                                                        xp, *autocast_cast(list(rest)))


_autocast_lib.impl("driver_forward", _forward_autocast, "AutocastCPU", with_keyset=True)
_autocast_lib.impl("driver_backward", _backward_autocast, "AutocastCPU", with_keyset=True)


# --- the eager and torch.func entry points ----------------------------------------------------------------
class DriverFunction(torch.autograd.Function):
    """The op's formula calling the extension directly (plain eager): apply(kernel, heads, opt, cell, xp, w, e,
    s0, lengths, rec_mask, keep, x, lower, *params) -> (out, s_T, states, saved, fresh)."""

    @staticmethod
    def forward(ctx, kernel: str, heads: int, opt: int, cell: RecurrentCell, xp: Tensor, w: Tensor, e: Tensor,
                s0: Tensor, lengths: Tensor, rec_mask: Tensor, keep: Tensor, x: Tensor, lower: Tensor,
                *params: Tensor):
        out, states, saved, fresh = getattr(_ext(), f"{kernel}_forward")(
            xp, s0, w, e, lengths, heads, opt, rec_mask, keep)
        _save(ctx, kernel, heads, opt, lambda: cell, (xp, w, e, s0, lengths, rec_mask, keep, x, lower, params),
              states, saved, fresh)
        ctx.mark_non_differentiable(saved, fresh)
        return out, states[-1].clone(), states, saved, fresh

    @staticmethod
    def backward(ctx, dout, ds_t, dstates, *_aux):
        dxp, dw, de, ds0, dx, dlower, dparams = _grads(ctx, dout, ds_t, dstates, _ext_backward)
        return (None,) * 4 + (dxp, dw, de, ds0, None, None, None, dx, dlower, *dparams)


class DriverFuncFunction(torch.autograd.Function):
    """The op under torch.func transforms (which refuse the op's own autograd wrapper): apply(spec, heads, opt,
    xp, w, e, s0, lengths, rec_mask, keep, x, lower, *params)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(spec, heads, opt, xp, w, e, s0, lengths, rec_mask, keep, x, lower, *params):
        return driver_forward(spec, heads, opt, xp, w, e, s0, lengths, rec_mask, keep, x, lower, list(params))

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, heads, opt, xp, w, e, s0, lengths, rec_mask, keep, x, lower, *params = inputs
        _save(ctx, _kernel_of(spec), heads, opt, functools.partial(cell_from_spec, spec),
              (xp, w, e, s0, lengths, rec_mask, keep, x, lower, params), *output[2:])
        ctx.mark_non_differentiable(*output[3:])

    @staticmethod
    def backward(ctx, dout, ds_t, dstates, *_aux):
        dxp, dw, de, ds0, dx, dlower, dparams = _grads(ctx, dout, ds_t, dstates, driver_backward)
        return (None,) * 3 + (dxp, dw, de, ds0, None, None, None, dx, dlower, *dparams)
