"""sLSTM from xLSTM (Beck et al. 2024): exponential gating, normaliser and stabiliser states, head-wise recurrence."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext, check_positive_int


class SLSTMCell(RecurrentCell):
    r"""sLSTM cell (Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter & Hochreiter 2024,
    "xLSTM: Extended Long Short-Term Memory"), sigmoid forget-gate variant, stabilised.

    .. math::
        [\tilde z_t, \tilde ı_t, \tilde f_t, \tilde o_t] &= W x_t + R h_{t-1} + b
            \qquad (R \text{ block-diagonal over } n_h \text{ heads}) \\
        m_t &= \max(\log σ(\tilde f_t) + m_{t-1},\ \tilde ı_t) \\
        i'_t &= \exp(\tilde ı_t - m_t), \qquad f'_t = \exp(\log σ(\tilde f_t) + m_{t-1} - m_t) \\
        c_t &= f'_t ⊙ c_{t-1} + i'_t ⊙ \tanh(\tilde z_t) \\
        n_t &= f'_t ⊙ n_{t-1} + i'_t \\
        h_t &= σ(\tilde o_t) ⊙ c_t / n_t

    State (h, c, n, m).  These are the paper's equations (its eqs. 8-17 with the stabiliser of eqs. 15-17):
    i_t = exp(ĩ_t), f_t = σ(f̃_t) (the paper allows σ or exp; this cell takes σ), z_t = tanh(z̃_t),
    o_t = σ(õ_t); c and n are the paper's c and n scaled by exp(−m_t), which cancels in h_t.
    Parameters: ``weight_ih`` (4H, I) and ``bias_ih`` (4H,) with the blocks z, i, f, o; ``weight_hh``
    (4H, H/n_h): row ``g·H + k·d + j`` (gate g, head k, unit j, d = H/n_h) is that unit's recurrent row over
    the d units of head k.  Fused on the CPU by the generic driver (``backends/cpp/cells/slstm.h``,
    block-diagonal recurrence, one batched product per step).

    Deviations: one bias b (the paper's b_z, b_i, b_f, b_o) and no extra bias on R h; initial state zero
    (m_0 = 0, n_0 = 0) and plain U(-1/√H, 1/√H) initialisation (the paper's power-law forget-bias init and its
    pre-/post-up-projection block structure belong to the xLSTM block, not to the cell).  Gradients flow
    through m as autograd computes them (the official kernels treat m the same way up to rounding).
    With n_0 = 0 and ĩ_1 ≪ log σ(f̃_1) (beyond about -100 in float64) n_1 underflows to 0 and h_1 = 0/0 is NaN,
    as in the paper's equations.

    Example:
        >>> h, c, n, m = SLSTMCell(3, 4, num_heads=2)(torch.randn(2, 3))
        >>> tuple(n.shape)
        (2, 4)
    """

    kind = "slstm"
    state_names: ClassVar[tuple[str, ...]] = ("h", "c", "n", "m")
    #: entry points of the generic C++ driver (generic.cpp): slstm_forward / slstm_backward
    driver_kernel: ClassVar[str] = "slstm"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, num_heads: int = 1,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if hidden_size % num_heads:
            raise ValueError(f"num_heads: must divide hidden_size={hidden_size}, got {num_heads}")
        self._register_params()

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        specs = [ParamSpec("weight_ih", (4 * H, self.input_size)), ParamSpec("weight_hh", (4 * H, self.head_size))]
        return specs + ([ParamSpec("bias_ih", (4 * H,))] if self.bias else [])

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", num_heads={self.num_heads}" if self.num_heads != 1 else "")

    def recurrent(self, h: Tensor, w: Tensor) -> Tensor:
        """R h for the block-diagonal R: h (B, H), w (4H, d) -> (B, 4H)."""
        nh, d = self.num_heads, self.head_size
        w4 = w.view(4, nh, d, d)  # (gate, head, unit, unit of the same head)
        return torch.einsum("gkjl,bkl->bgkj", w4, h.reshape(-1, nh, d)).reshape(h.shape[0], 4 * self.hidden_size)

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h, c, n, m = state
        pre = xp_t + self.recurrent(ctx.drop(h), p["weight_hh"])
        z_t, i_t, f_t, o_t = pre.chunk(4, dim=-1)
        a = F.logsigmoid(f_t) + m
        m_new = torch.maximum(a, i_t)
        i = torch.exp(i_t - m_new)
        f = torch.exp(a - m_new)
        z = torch.tanh(z_t)
        o = torch.sigmoid(o_t)
        c_new = f * c + i * z
        n_new = f * n + i
        h_new = o * c_new / n_new
        if ctx.record is not None:
            for name, v in (("i", i), ("f", f), ("z", z), ("o", o), ("c", c_new), ("n", n_new), ("m", m_new)):
                ctx.emit(name, v)
        return h_new, c_new, n_new, m_new

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs: xp (T, B, 4H), R (4H, d) head-wise, no element-wise vectors, n_h heads."""
        return F.linear(x, p["weight_ih"], p.get("bias_ih")), p["weight_hh"], None, self.num_heads, 0

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits, from the generic driver's results (all (T, B, ·)): i', f', z, o from the
        rule's saved blocks (z, o, i', f', ... in cells/slstm.h), c, n, m the new state."""
        z, o, i, f = saved.chunk(7, dim=-1)[:4]
        _, c, n, m = new.chunk(4, dim=-1)
        return {"i": i, "f": f, "z": z, "o": o, "c": c, "n": n, "m": m}
