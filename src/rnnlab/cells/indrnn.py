"""Independently recurrent neural network cell (IndRNN, Li et al. 2018): a diagonal recurrence u ⊙ h."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext

_NONLINEARITIES = {"relu": torch.relu, "tanh": torch.tanh}


class IndRNNCell(RecurrentCell):
    r"""IndRNN cell (Li, Li, Cook, Zhu & Gao 2018, "Independently Recurrent Neural Network (IndRNN): Building A
    Longer and Deeper RNN").

    .. math::
        h_t = φ(W x_t + u ⊙ h_{t-1} + b), \qquad φ ∈ \{\mathrm{ReLU}, \tanh\}

    Each unit sees only its own past: the recurrent weight ``weight_hh`` is a vector u (H,), not a matrix.
    Parameters: ``weight_ih`` (H, I), ``weight_hh`` (H,), ``bias_ih`` (H,) (the paper's single b).
    Fused on the CPU by the generic driver (``backends/cpp/cells/indrnn.h``, diagonal recurrence).

    Deviation: u is initialised U(-1/√H, 1/√H) like every other weight here; the paper constrains |u| (for
    instance to ``[0, 2^{1/T}]`` for ReLU) per task, which is left to the user (e.g. clamp after each step).

    Example:
        >>> h = IndRNNCell(3, 4)(torch.randn(2, 3))
        >>> bool((h >= 0).all())
        True
    """

    kind = "indrnn"
    #: entry points of the generic C++ driver (generic.cpp): indrnn_forward / indrnn_backward
    driver_kernel: ClassVar[str] = "indrnn"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, nonlinearity: str = "relu",
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected 'relu' or 'tanh', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self._register_params()

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        specs = [ParamSpec("weight_ih", (H, self.input_size)), ParamSpec("weight_hh", (H,))]
        return specs + ([ParamSpec("bias_ih", (H,))] if self.bias else [])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        pre = xp_t + p["weight_hh"] * ctx.drop(state[0])
        if ctx.record is not None:
            ctx.emit("pre", pre)
        return (_NONLINEARITIES[self.nonlinearity](pre),)

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs: xp (T, B, H), u (H,), no element-wise vectors, no heads, φ (0 ReLU, 1 tanh)."""
        return F.linear(x, p["weight_ih"], p.get("bias_ih")), p["weight_hh"], None, 0, int(
            self.nonlinearity == "tanh")

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits, from the generic driver's results (all (T, B, ·), prev / new the states
        before / after each step): ``pre`` = xp + u ⊙ drop(h_{t-1}), recomputed (the rule saves nothing)."""
        h = prev[..., : self.hidden_size]  # (T, B, H)
        return {"pre": xp + w * (h if rec_mask is None else h * rec_mask)}
