"""Elman recurrent network cell (Elman 1990) with tanh or ReLU."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext

_NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


class ElmanCell(RecurrentCell):
    r"""Elman RNN cell (Elman 1990, "Finding Structure in Time").

    .. math::
        h_t = φ(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \qquad φ ∈ \{\tanh, \mathrm{ReLU}\}

    Equals ``torch.nn.RNNCell`` with the same ``nonlinearity``.

    Example:
        >>> h = ElmanCell(3, 4, nonlinearity="relu")(torch.randn(2, 3))
        >>> bool((h >= 0).all())
        True
    """

    kind = "rnn"
    #: the generic C++ driver's rule (backends/cpp/cells/elman.h)
    driver_kernel: ClassVar[str] = "elman"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self._register_params()

    def param_specs(self) -> list[ParamSpec]:
        return self.linear_specs(self.hidden_size, self.hidden_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs: xp (T, B, H) with both biases folded, W_hh, no element-wise vectors, no heads,
        option 1 = tanh, 0 = ReLU (cells/indrnn.h)."""
        b = p["bias_ih"] + p["bias_hh"] if self.bias else None
        return F.linear(x, p["weight_ih"], b), p["weight_hh"], None, 0, int(self.nonlinearity == "tanh")

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits: ``pre`` = xp + W_hh drop(h_{t-1}), recomputed as one product over all steps
        (the rule saves nothing; xp holds both biases)."""
        h = prev[..., : self.hidden_size]
        return {"pre": xp + (h if rec_mask is None else h * rec_mask) @ w.t()}

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        pre = xp_t + F.linear(ctx.drop(state[0]), p["weight_hh"], p.get("bias_hh"))
        h = _NONLINEARITIES[self.nonlinearity](pre)
        if ctx.record is not None:
            ctx.emit("pre", pre)
        return (h,)
