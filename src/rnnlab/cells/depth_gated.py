"""Depth-gated LSTM (Yao et al. 2015): an LSTM whose memory cell also reads the cell state of the layer below."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext


class DepthGatedLSTMCell(RecurrentCell):
    r"""Depth-gated LSTM (Yao, Cohn, Vylomova, Duh & Dyer 2015, "Depth-Gated LSTM").

    Layer l at step t, with :math:`c^{l-1}_t` the memory cell of the layer below at the same step:

    .. math::
        i_t &= σ(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi} + w_{ci} ⊙ c_{t-1}) \\
        f_t &= σ(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf} + w_{cf} ⊙ c_{t-1}) \\
        g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        d_t &= σ(W_{id} x_t + b_{id} + w_{cd} ⊙ c_{t-1} + w_{ld} ⊙ c^{l-1}_t) \\
        c_t &= f_t ⊙ c_{t-1} + i_t ⊙ g_t + d_t ⊙ c^{l-1}_t \\
        o_t &= σ(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho} + w_{co} ⊙ c_t) \\
        h_t &= o_t ⊙ \tanh(c_t)

    Parameters: ``weight_ih`` (5H, I) rows i, f, g, o, d; ``weight_hh`` (4H, H) rows i, f, g, o (the depth
    gate has no recurrent weights, as in the paper); ``bias_ih`` (5H,), ``bias_hh`` (4H,); the diagonal
    peepholes ``weight_ci``, ``weight_cf``, ``weight_co`` and the depth-gate diagonals ``weight_cd``,
    ``weight_ld`` (H,).

    Used in :class:`rnnlab.Recurrent` (``needs_lower``) the wrapper passes the state of the layer below at
    this step in ``ctx.lower``; each direction of a bidirectional stack reads the same direction below.
    On the first layer (and for a cell used on its own) ``ctx.lower`` is ``None``: there is no lower memory
    cell, the depth term :math:`d_t ⊙ c^{l-1}_t` is absent and the cell is a peephole LSTM (``weight_id``,
    ``weight_cd``, ``weight_ld`` are then unused and get zero gradient).  The layers must all have the same
    hidden size (they do in ``Recurrent``).

    Args:
        peepholes: keep the paper's peepholes w_ci, w_cf, w_co (default ``True``); ``False`` drops them.
        forget_bias: initial value of the forget-gate slice of ``bias_ih`` (``bias_hh``'s slice is zeroed).

    Example:
        >>> from rnnlab import Recurrent
        >>> rnn = Recurrent("depth_gated", 3, 4, num_layers=2)
        >>> out, (h, c) = rnn(torch.randn(5, 2, 3))
        >>> tuple(out.shape), tuple(c.shape)
        ((5, 2, 4), (2, 2, 4))
    """

    kind = "depth_gated"
    state_names: ClassVar[tuple[str, ...]] = ("h", "c")
    needs_lower: ClassVar[bool] = True
    #: on the first layer (no layer below) the cell is a peephole LSTM: the generic C++ driver's LSTM rule
    #: (backends/cpp/cells/lstm.h); above it the depth-gated rule (backends/cpp/cells/depth_gated.h)
    driver_kernel: ClassVar[str] = "lstm"
    driver_lower_kernel: ClassVar[str] = "depth_gated"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, peepholes: bool = True,
                 forget_bias: float | None = None, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        if not isinstance(peepholes, bool):
            raise TypeError(f"peepholes: expected bool, got {type(peepholes).__name__} {peepholes!r}")
        if forget_bias is not None and (isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float))):
            raise TypeError(f"forget_bias: expected a float or None, got {forget_bias!r}")
        self.peepholes = peepholes
        self.forget_bias = forget_bias
        self._register_params()

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        specs = self.linear_specs(5 * H, 4 * H)  # the depth gate d reads x only: 5 input blocks, 4 recurrent
        if self.peepholes:
            specs += [ParamSpec(f"weight_c{g}", (H,)) for g in "ifo"]
        specs += [ParamSpec("weight_cd", (H,)), ParamSpec("weight_ld", (H,))]
        return specs

    def init_parameters(self, p: Params) -> None:
        super().init_parameters(p)
        if self.forget_bias is not None and self.bias:
            H = self.hidden_size
            with torch.no_grad():
                p["bias_ih"][H:2 * H].fill_(self.forget_bias)
                p["bias_hh"][H:2 * H].zero_()

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.peepholes else ", peepholes=False")

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs of the first layer, an LSTM with peepholes i, f on c_{t-1} and o on c_t:
        xp (T, B, 4H) from the i, f, g, o rows with both biases folded (b_hh sits outside every gate), W_hh,
        the peepholes (3, H) or ``None``, no heads, option PEEP (64) of cells/lstm.h or 0."""
        H = self.hidden_size
        b = p["bias_ih"][: 4 * H] + p["bias_hh"] if self.bias else None
        xp = F.linear(x, p["weight_ih"][: 4 * H], b)
        if not self.peepholes:
            return xp, p["weight_hh"], None, 0, 0
        return xp, p["weight_hh"], torch.stack([p["weight_ci"], p["weight_cf"], p["weight_co"]]), 0, 64

    def driver_lower_inputs(self, x: Tensor, p: Params, lower: Tensor):
        """Generic driver inputs above the first layer (``lower``: the layer below's state rows [h, c],
        (T, B, 2H)): xp (T, B, 6H) = the i, f, g, o blocks with both biases folded, the depth block d (its own
        bias only) and the layer below's c as a sixth block; W_hh; e = (w_ci, w_cf, w_co, w_cd, w_ld) with zero
        rows for absent peepholes; no heads or options (cells/depth_gated.h)."""
        H = self.hidden_size
        b = torch.cat([p["bias_ih"][: 4 * H] + p["bias_hh"], p["bias_ih"][4 * H:]]) if self.bias else None
        xp = torch.cat([F.linear(x, p["weight_ih"], b), lower[..., H:]], dim=-1)  # (T, B, 5H) + c below (T, B, H)
        zero = x.new_zeros(H)
        peeps = [p[f"weight_c{g}"] if self.peepholes else zero for g in "ifo"]
        return xp, p["weight_hh"], torch.stack([*peeps, p["weight_cd"], p["weight_ld"]]), 0, 0

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits: i, f, g, o (and above the first layer d: the rules' saved blocks) and the
        new cell state c."""
        blocks = saved.chunk(saved.shape[-1] // self.hidden_size, dim=-1)
        records = dict(zip("ifgo", blocks))
        records["c"] = new[..., self.hidden_size:]
        if len(blocks) == 5:  # the step emits d after c
            records["d"] = blocks[4]
        return records

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h, c = state[0], state[1]
        H = self.hidden_size
        pre = xp_t[..., : 4 * H] + F.linear(ctx.drop(h), p["weight_hh"], p.get("bias_hh"))
        z_i, z_f, z_g, z_o = pre.chunk(4, dim=-1)
        if self.peepholes:
            z_i = z_i + p["weight_ci"] * c
            z_f = z_f + p["weight_cf"] * c
        i, f, g = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g)
        c_new = f * c + i * g
        d = None
        if ctx.lower is not None:
            c_low = ctx.lower[1]  # the layer below is the same cell type: state (h, c)
            d = torch.sigmoid(xp_t[..., 4 * H:] + p["weight_cd"] * c + p["weight_ld"] * c_low)
            c_new = c_new + d * c_low
        o = torch.sigmoid(z_o + p["weight_co"] * c_new) if self.peepholes else torch.sigmoid(z_o)
        h_new = o * torch.tanh(c_new)
        if ctx.record is not None:
            for name, v in (("i", i), ("f", f), ("g", g), ("o", o), ("c", c_new)):
                ctx.emit(name, v)
            if d is not None:
                ctx.emit("d", d)
        return h_new, c_new
