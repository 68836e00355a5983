"""Simple recurrent unit (SRU, Lei et al. 2018): element-wise recurrence on c, highway output."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext


class SRUCell(RecurrentCell):
    r"""Simple recurrent unit (Lei, Zhang, Wang, Dai & Artzi 2018, "Simple Recurrent Units for Highly
    Parallelizable Recurrence").

    .. math::
        f_t &= σ(W_f x_t + v_f ⊙ c_{t-1} + b_f) \\
        r_t &= σ(W_r x_t + v_r ⊙ c_{t-1} + b_r) \\
        c_t &= f_t ⊙ c_{t-1} + (1 - f_t) ⊙ (W x_t) \\
        h_t &= r_t ⊙ c_t + (1 - r_t) ⊙ x'_t

    with :math:`x'_t = x_t` when I = H (the paper's highway connection) and :math:`x'_t = W' x_t` otherwise.
    State (h, c); only c recurs, element-wise, so all matrix products are over the input and run for all steps
    at once.  Parameters: ``weight_ih`` (3H or 4H, I) with the blocks W_f, W_r, W (, W'), ``weight_hh`` (2H,)
    holding v_f, v_r (the only recurrent weights), ``bias_ih`` (2H,) holding b_f, b_r.
    Fused on the CPU by the generic driver (``backends/cpp/cells/sru.h``, no recurrent product).

    Deviations: none in the equations; the paper's scaling of the highway term (SRU++ / the √3 correction of
    its appendix) and its layer normalisation are not applied.  Recurrent dropout masks c_{t-1} where it enters
    the gates.

    Example:
        >>> h, c = SRUCell(4, 4)(torch.randn(2, 4))
        >>> tuple(h.shape), tuple(c.shape)
        ((2, 4), (2, 4))
    """

    kind = "sru"
    state_names: ClassVar[tuple[str, ...]] = ("h", "c")
    #: entry points of the generic C++ driver (generic.cpp): sru_forward / sru_backward
    driver_kernel: ClassVar[str] = "sru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self._register_params()

    @property
    def highway_projected(self) -> bool:
        """x' is W' x (I ≠ H) rather than x itself."""
        return self.input_size != self.hidden_size

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        blocks = 4 if self.highway_projected else 3
        specs = [ParamSpec("weight_ih", (blocks * H, self.input_size)), ParamSpec("weight_hh", (2 * H,))]
        return specs + ([ParamSpec("bias_ih", (2 * H,))] if self.bias else [])

    def project_input(self, x: Tensor, p: Params) -> Tensor:
        """(..., I) -> (..., 4H): blocks W_f x + b_f, W_r x + b_r, W x, x'."""
        xp = F.linear(x, p["weight_ih"])  # (..., 3H or 4H)
        if "bias_ih" in p:
            b = p["bias_ih"]
            xp = xp + torch.cat([b, b.new_zeros(xp.shape[-1] - b.shape[0])])
        return xp if self.highway_projected else torch.cat([xp, x], dim=-1)

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        c = state[1]
        x_f, x_r, x_c, x_h = xp_t.chunk(4, dim=-1)
        v_f, v_r = p["weight_hh"].chunk(2)
        cd = ctx.drop(c)
        f = torch.sigmoid(x_f + v_f * cd)
        r = torch.sigmoid(x_r + v_r * cd)
        c_new = f * c + (1 - f) * x_c
        h_new = r * c_new + (1 - r) * x_h
        if ctx.record is not None:
            ctx.emit("f", f)
            ctx.emit("r", r)
            ctx.emit("c", c_new)
            ctx.emit("candidate", x_c)  # W x_t
            ctx.emit("highway", x_h)  # x'_t
        return h_new, c_new

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs: xp (T, B, 4H), no recurrent matrix, (v_f, v_r) as (2, H), no heads/options."""
        return self.project_input(x, p), x.new_empty(0), p["weight_hh"].view(2, self.hidden_size), 0, 0

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits, from the generic driver's results (all (T, B, ·)): f, r are the rule's saved
        blocks (cells/sru.h), c the new cell state, candidate and highway blocks 2 and 3 of xp."""
        f, r = saved.chunk(2, dim=-1)
        x_c, x_h = xp.chunk(4, dim=-1)[2:]
        return {"f": f, "r": r, "c": new[..., self.hidden_size:], "candidate": x_c, "highway": x_h}
