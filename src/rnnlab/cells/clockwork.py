"""Clockwork RNN (Koutník et al. 2014): hidden modules that update only every T_i steps."""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext


def _default_periods(hidden_size: int) -> tuple[int, ...]:
    # 1, 2, 4, 8: four modules (fewer when H < 4, a module needs at least one unit)
    return tuple(2 ** k for k in range(min(4, hidden_size)))


class ClockworkCell(RecurrentCell):
    r"""Clockwork RNN (Koutník, Greff, Gomez & Schmidhuber 2014, "A Clockwork RNN").

    The H hidden units form g modules with periods :math:`T_1, …, T_g`; module k is active at step t when
    :math:`t \bmod T_k = 0`:

    .. math::
        a_t &= \tanh(W_{ih} x_t + b_{ih} + (W_{hh} ⊙ M) h_{t-1} + b_{hh}) \\
        h_t^{(k)} &= a_t^{(k)} \ \text{if}\ t \bmod T_k = 0, \quad \text{else}\ h_{t-1}^{(k)}

    where the mask M is block-triangular: :math:`M_{uv} = 1` iff the period of unit v is at least the period
    of unit u, i.e. a module reads itself and the slower modules (the paper's upper-triangular
    :math:`W_H` with modules sorted by period).  Weights outside M are kept at 0 (and get no gradient).

    The state is ``(h, n)``: ``n`` (B, 1) is the step counter t, so stateful chunking continues the clock and
    padded steps (which keep the state) do not advance it.  Conventions: t counts from 0, so every module
    updates at the first step (the paper does not fix the origin); biases as in ``torch.nn.RNNCell``
    (the paper's equations have none); ``n`` is compared after rounding, it gets no gradient through the
    update rule.

    Args:
        periods: the module periods (positive ints); default 1, 2, 4, 8 (fewer when H < 4).  The units are
            split into ``len(periods)`` contiguous modules as evenly as possible, the first ones taking the
            extra units.

    Example:
        >>> cell = ClockworkCell(3, 8, periods=(1, 4))
        >>> h, n = cell(torch.randn(2, 3))
        >>> n.tolist()
        [[1.0], [1.0]]
    """

    kind = "clockwork"
    state_names: ClassVar[tuple[str, ...]] = ("h", "n")
    #: the generic C++ driver's rule (backends/cpp/cells/clockwork.h)
    driver_kernel: ClassVar[str] = "clockwork"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 periods: Sequence[int] | None = None, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        if periods is None:
            periods = _default_periods(hidden_size)
        if isinstance(periods, (str, bytes)) or not isinstance(periods, Sequence) or not periods or any(
                isinstance(T, bool) or not isinstance(T, int) or T < 1 for T in periods):
            raise ValueError(f"periods: expected a non-empty sequence of positive ints, got {periods!r}")
        if len(periods) > hidden_size:
            raise ValueError(f"periods: {len(periods)} modules need hidden_size >= {len(periods)}, "
                             f"got hidden_size={hidden_size}")
        self.periods = tuple(periods)
        g = len(self.periods)
        self.module_sizes = tuple(hidden_size // g + (1 if k < hidden_size % g else 0) for k in range(g))
        # period of every hidden unit (H,)
        self._unit_periods = torch.tensor([T for T, s in zip(self.periods, self.module_sizes) for _ in range(s)])
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}
        self._register_params()

    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size, 1)

    def param_specs(self) -> list[ParamSpec]:
        return self.linear_specs(self.hidden_size, self.hidden_size)

    def recurrent_mask(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """(H, H) 0/1 mask of the allowed recurrent connections (row: receiving unit, column: source)."""
        return self._constants(torch.device(device), dtype)[0]

    def unit_periods(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """(H,) the period of every hidden unit's module."""
        return self._constants(torch.device(device), dtype)[1]

    def _constants(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # cells hold no buffers (the wrapper moves only parameters), so these are built per device/dtype
        key = (device, dtype)
        if key not in self._cache:
            P = self._unit_periods
            mask = (P.unsqueeze(0) >= P.unsqueeze(1)).to(device=device, dtype=dtype)  # (H, H)
            self._cache[key] = (mask, P.to(device=device, dtype=dtype))
        return self._cache[key]

    def init_parameters(self, p: Params) -> None:
        super().init_parameters(p)
        w = p["weight_hh"]
        with torch.no_grad():
            w.mul_(self._constants(w.device, w.dtype)[0])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", periods={self.periods}"

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs: xp (T, B, H) with b_hh folded, W_hh ⊙ M (autograd masks its gradient), the
        unit periods (1, H), no heads or options."""
        mask, periods = self._constants(x.device, x.dtype)
        b = p["bias_ih"] + p["bias_hh"] if self.bias else None
        return F.linear(x, p["weight_ih"], b), p["weight_hh"] * mask, periods.view(1, -1), 0, 0

    def driver_state(self, state: State) -> Tensor:
        """(h, n) -> (..., 2H): the counter n (..., 1) repeated in every lane of its block."""
        h, n = state
        return torch.cat([h.contiguous(), n.expand(*n.shape[:-1], self.hidden_size)], dim=-1)

    def from_driver_state(self, s: Tensor) -> State:
        H = self.hidden_size
        return s[..., :H], s[..., H:H + 1]

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits: ``a`` (the rule saves it) and ``active`` from each step's counter."""
        H = self.hidden_size
        n = prev[..., H:H + 1]  # (T, B, 1)
        active = torch.remainder(n.round(), e.view(-1)) == 0  # (T, B, H)
        return {"a": saved, "active": active.to(saved.dtype)}

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h, n = state[0], state[1]
        w_hh = p["weight_hh"]
        mask, periods = self._constants(w_hh.device, w_hh.dtype)
        a = torch.tanh(xp_t + F.linear(ctx.drop(h), w_hh * mask, p.get("bias_hh")))
        active = torch.remainder(n.detach().round(), periods) == 0  # (B, 1) vs (H,) -> (B, H)
        h_new = torch.where(active, a, h)
        if ctx.record is not None:
            ctx.emit("a", a)
            ctx.emit("active", active.to(h.dtype))
        return h_new, n + 1.0
