"""Input checks with errors that name the argument, the expected and the received value."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from rnnlab.cells.base import RecurrentCell, State


class ShapeError(ValueError, RuntimeError):
    """A tensor of the wrong rank or size.

    ``torch.nn`` raises ``RuntimeError`` for these (``ValueError`` for a wrong input rank); this subclasses both
    so code written against either rnnlab or ``torch.nn`` catches it.
    """


class DtypeError(TypeError, ValueError, RuntimeError):
    """A tensor or module of the wrong dtype.

    ``torch.nn`` raises ``ValueError`` for an input/weight dtype mismatch and ``RuntimeError`` for a mismatched
    ``hx`` or an integer ``dtype=``; rnnlab raised ``TypeError``: this subclasses all three.
    """


class DeviceError(ValueError, RuntimeError):
    """A tensor on another device than the parameters (``torch.nn``: ``RuntimeError``)."""


class OptionError(TypeError, ValueError):
    """An option the module or cell does not have (``torch.nn``: ``TypeError``, or ``ValueError`` for
    ``proj_size`` on RNN/GRU)."""


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def check_float_like(name: str, t: Tensor, ref: Tensor | None) -> None:
    """``t`` must be floating point and, when ``ref`` (a parameter) is given, of its dtype and device."""
    if not t.is_floating_point():
        raise DtypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype} "
                        "(convert with .float(); token ids need an nn.Embedding first)")
    if ref is None:
        return
    if t.dtype != ref.dtype:
        raise DtypeError(f"{name}: dtype {t.dtype} does not match the parameters' dtype {ref.dtype} "
                        f"(convert the input or the module, e.g. module.to({t.dtype}))")
    if t.device != ref.device:
        raise DeviceError(f"{name}: on device {t.device} but the parameters are on {ref.device}")


def check_finite(name: str, t: Tensor) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or ±inf (the trainer calls this before it learns from data)."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN or inf) out of {t.numel()}")


def check_input(input: Tensor, input_size: int, batch_first: bool, ref: Tensor | None) -> tuple[Tensor, bool]:
    """Validate a sequence input; return it time-major and batched (T, B, I) and whether it was unbatched.

    An empty batch (B = 0) is valid, as in ``torch.nn``; zero time steps is not.
    """
    check_tensor("input", input)
    if input.dim() not in (2, 3):
        raise ShapeError(f"input: expected a 2-D (T, input_size) or 3-D "
                         f"({'B, T' if batch_first else 'T, B'}, input_size) tensor, got shape {_shape(input)}")
    check_float_like("input", input, ref)
    if input.shape[-1] != input_size:
        raise ShapeError(f"input: expected input_size={input_size} features in the last dim, "
                         f"got shape {_shape(input)}")
    unbatched = input.dim() == 2
    x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if batch_first else input)
    if x.shape[0] == 0:
        raise ShapeError(f"input: empty sequence (0 time steps), got shape {_shape(input)}")
    return x, unbatched


def check_lengths(lengths: object, batch: int, T: int) -> Tensor:
    """Lengths as (B,) int64 on the CPU, each in [1, T]; any order is accepted."""
    if isinstance(lengths, Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths: expected integer lengths, got dtype {lengths.dtype}")
        lens = lengths.detach().to("cpu", torch.int64)
    elif isinstance(lengths, Sequence) and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                               for v in lengths):
        lens = torch.tensor([int(v) for v in lengths], dtype=torch.int64)
    else:
        shown = repr(lengths) if len(repr(lengths)) <= 80 else repr(lengths)[:77] + "..."
        raise TypeError(f"lengths: expected a 1-D integer tensor or a list of ints, "
                        f"got {type(lengths).__name__} {shown}")
    if lens.dim() != 1 or lens.shape[0] != batch:
        raise ShapeError(f"lengths: expected shape ({batch},) (one length per sequence), got {tuple(lens.shape)}")
    if lens.numel() == 0:  # an empty batch has no lengths to range-check
        return lens
    if torch.compiler.is_compiling():
        # reading the values would break the graph: the check stays in it and raises when it runs
        torch._assert_async(((lens >= 1) & (lens <= T)).all(),
                            f"lengths: each length must be in [1, {T}] (the padded length)")
        return lens
    lo, hi = int(lens.min()), int(lens.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths: each length must be in [1, {T}] (the padded length), got min {lo}, max {hi}")
    return lens


def check_state(name: str, hx: object, expected: Sequence[tuple[int, ...]], ref: Tensor,
                names: Sequence[str]) -> tuple[Tensor, ...]:
    """``hx`` is one tensor (single-component states) or a tuple/list matching ``expected`` shapes."""
    single = len(expected) == 1
    if isinstance(hx, Tensor):
        if not single:
            raise TypeError(f"{name}: this cell's state has {len(expected)} parts {tuple(names)}; "
                            f"pass a tuple of {len(expected)} tensors, got a single tensor")
        parts: tuple = (hx,)
    elif isinstance(hx, (tuple, list)):
        parts = tuple(hx)
        if len(parts) != len(expected):
            raise ValueError(f"{name}: expected {len(expected)} tensor(s) {tuple(names)}, got {len(parts)}")
    else:
        raise TypeError(f"{name}: expected a tensor or a tuple of tensors, got {type(hx).__name__}")
    for k, (part, shape) in enumerate(zip(parts, expected)):
        label = name if single else f"{name}[{k}] ({names[k]})"
        check_tensor(label, part)
        check_float_like(label, part, ref)
        if tuple(part.shape) != tuple(shape):
            raise ShapeError(f"{label}: expected shape {tuple(shape)}, got {_shape(part)}")
    return parts


def check_cell_call(cell: "RecurrentCell", input: Tensor, hx) -> tuple[Tensor, "State", bool]:
    """Validate a single-step cell call; return (B, I) input, the batched state and whether unbatched."""
    ref = next(iter(cell.cell_params().values()), None)  # its own weights, or its layer's in a wrapper
    check_tensor("input", input)
    if input.dim() not in (1, 2):
        raise ShapeError(f"input: expected a 1-D (input_size,) or 2-D (B, input_size) tensor for one step, "
                         f"got shape {_shape(input)}")
    check_float_like("input", input, ref)
    if input.shape[-1] != cell.input_size:
        raise ShapeError(f"input: expected input_size={cell.input_size} features, got shape {_shape(input)}")
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    B = x.shape[0]
    if hx is None:
        return x, cell.init_state(B, dtype=x.dtype, device=x.device), unbatched
    sizes = cell.state_sizes()
    expected = [(s,) if unbatched else (B, s) for s in sizes]
    parts = check_state("hx", hx, expected, ref if ref is not None else x, cell.state_names)
    if unbatched:
        parts = tuple(p.unsqueeze(0) for p in parts)
    return x, parts, unbatched
