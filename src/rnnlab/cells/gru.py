"""Gated recurrent unit (Cho et al. 2014) in both forms: reset before or after the recurrent matmul."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext


class GRUCell(RecurrentCell):
    r"""Gated recurrent unit (Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder").

    .. math::
        r_t &= σ(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= σ(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t ⊙ (W_{hn} h_{t-1} + b_{hn}))
               \quad \text{(reset\_after=True: cuDNN / torch.nn form)} \\
        n_t &= \tanh(W_{in} x_t + b_{in} + W_{hn} (r_t ⊙ h_{t-1}) + b_{hn})
               \quad \text{(reset\_after=False: the paper's form)} \\
        h_t &= (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    Weight rows are the blocks r, z, n as in ``torch.nn.GRUCell``; with ``reset_after=True`` (default) the
    cell equals ``torch.nn.GRUCell``.  Deviation from the paper: the paper's z weights the *new* state
    (h_t = z ⊙ h_{t-1} + (1 − z) ⊙ h̃ there too, with its z defined as the complement); we follow torch.

    Example:
        >>> h = GRUCell(3, 4, reset_after=False)(torch.randn(2, 3))
        >>> tuple(h.shape)
        (2, 4)
    """

    kind = "gru"
    #: the generic C++ driver's rules (backends/cpp/cells/gru.h): "gru" (reset after), "gru_paper" (before)
    driver_kernel: ClassVar[str] = "gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, reset_after: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after: expected bool, got {reset_after!r}")
        self.reset_after = reset_after
        self._register_params()

    def param_specs(self) -> list[ParamSpec]:
        return self.linear_specs(3 * self.hidden_size, 3 * self.hidden_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")

    def driver_rule(self) -> str:
        """The reset-after form is rule ``gru``; the paper form ``gru_paper`` (a second product, W_hn (r ⊙ h))."""
        return "gru" if self.reset_after else "gru_paper"

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs: xp (T, B, 3H) with b_ih and b_hh's r, z parts folded, W_hh, b_hn (1, H) (it
        sits behind the reset gate) or ``None``, no heads, option BHN = 1 when there is a bias.  The paper form:
        all of b_hh folded (b_hn sits outside the reset there), W_hh (its last H rows the second product)."""
        H = self.hidden_size
        if not self.reset_after:
            b = p["bias_ih"] + p["bias_hh"] if self.bias else None
            return F.linear(x, p["weight_ih"], b), p["weight_hh"], None, 0, 0
        if not self.bias:
            return F.linear(x, p["weight_ih"]), p["weight_hh"], None, 0, 0
        b_hh = p["bias_hh"]
        b = p["bias_ih"] + torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)])
        return F.linear(x, p["weight_ih"], b), p["weight_hh"], b_hh[2 * H:].view(1, H), 0, 1

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits: r, z, n, the first three of the rule's saved blocks (both forms)."""
        r, z, n = saved.chunk(4, dim=-1)[:3]
        return {"r": r, "z": z, "n": n}

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h = state[0]
        H = self.hidden_size
        x_r, x_z, x_n = xp_t.chunk(3, dim=-1)
        w_hh, b_hh = p["weight_hh"], p.get("bias_hh")
        hd = ctx.drop(h)
        if self.reset_after:
            h_r, h_z, h_n = F.linear(hd, w_hh, b_hh).chunk(3, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
        else:
            h_r, h_z = F.linear(hd, w_hh[: 2 * H], None if b_hh is None else b_hh[: 2 * H]).chunk(2, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + F.linear(r * hd, w_hh[2 * H:], None if b_hh is None else b_hh[2 * H:]))
        h_new = (1.0 - z) * n + z * h
        if ctx.record is not None:
            ctx.emit("r", r)
            ctx.emit("z", z)
            ctx.emit("n", n)
        return (h_new,)
