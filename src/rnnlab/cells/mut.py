"""MUT1, MUT2, MUT3: the three evolved GRU-like cells of Jozefowicz, Zaremba & Sutskever (2015)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext


class _MUTCell(RecurrentCell):
    """Shared parameter layout of the MUT cells: input blocks in ``weight_ih``/``bias_ih`` (one GEMM for all
    steps), recurrent blocks in ``weight_hh``/``bias_hh``; blocks in the order z, r, h."""

    #: the gate whose paper equation uses x itself (needs I == H), or None
    _raw_x_block: str | None = None
    #: recurrent blocks (rows of weight_hh)
    _hh_blocks: tuple[str, ...] = ()
    #: the block that passes through tanh after the projection (MUT1's h), its recurrent bias added after that
    _tanh_block: str | None = None

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        # the paper feeds x itself into one term; that needs I == H, otherwise a learned projection stands in
        self.identity_input = self._raw_x_block is not None and input_size == hidden_size
        self._register_params()

    @property
    def _ih_blocks(self) -> tuple[str, ...]:
        """Row blocks of weight_ih: z, r, h without the one that is x itself (I == H)."""
        return tuple(b for b in ("z", "r", "h") if not (self.identity_input and b == self._raw_x_block))

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        return self.linear_specs(len(self._ih_blocks) * H, len(self._hh_blocks) * H)

    def project_input(self, x: Tensor, p: Params) -> Tensor:
        """(..., I) -> (..., 3H), blocks z, r, h; the paper's raw-x term is x itself when I == H."""
        y = F.linear(x, p["weight_ih"], p.get("bias_ih"))
        if not self.identity_input:
            return y
        blocks = dict(zip(self._ih_blocks, y.chunk(len(self._ih_blocks), dim=-1)))
        blocks[self._raw_x_block] = x  # type: ignore[index]
        return torch.cat([blocks["z"], blocks["r"], blocks["h"]], dim=-1)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", input_projection=True" if self._raw_x_block and not self.identity_input
                                       else "")

    def _hh(self, p: Params, k: int, v: Tensor) -> Tensor:
        """Recurrent block k (0-based row block of weight_hh) applied to v."""
        H = self.hidden_size
        b = p.get("bias_hh")
        return F.linear(v, p["weight_hh"][k * H:(k + 1) * H], None if b is None else b[k * H:(k + 1) * H])

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs (backends/cpp/cells/mut.h): xp (T, B, 3H) blocks z, r, h, the cell's projection
        plus every recurrent bias (none sits behind a gate: W_hh (r ⊙ h) + b_h adds b_h outside the reset); W_hh
        (its last H rows the second product, W_hh (r ⊙ h)); no element-wise parameters.  xp is formed in one
        concatenation: bias_hh folded into the projection's bias for the linear blocks, x itself (I == H) and
        MUT1's tanh block taking theirs after.  Against projecting first and adding bias_hh after, training
        steps took 0.86-0.99x the time for MUT1 (0.90 typical), 0.97-0.99x for MUT2 and MUT3 at (T, B, H) =
        (100, 64, 256) and (50, 128, 512) (2 threads, interleaved medians of 7, three runs)."""
        H = self.hidden_size
        b_ih, b_hh = p.get("bias_ih"), p.get("bias_hh")
        hh = dict(zip(self._hh_blocks, b_hh.split(H))) if b_hh is not None else {}
        lin = self._ih_blocks
        folded = [hh.get(k) if k != self._tanh_block else None for k in lin]
        b = b_ih
        if any(f is not None for f in folded):
            extra = torch.cat([f if f is not None else b_hh.new_zeros(H) for f in folded])  # type: ignore[union-attr]
            b = extra if b_ih is None else b_ih + extra
        y = F.linear(x, p["weight_ih"], b)  # (T, B, len(lin) * H)
        if not self.identity_input and self._tanh_block is None:
            return y, p["weight_hh"], None, 0, 0  # blocks z, r, h in order, every bias folded
        blocks = dict(zip(lin, y.split(H, dim=-1)))
        if self.identity_input:
            blocks[self._raw_x_block] = x  # type: ignore[index]
        # the blocks whose recurrent bias was not folded: x itself, and MUT1's after its tanh
        for k in {self._raw_x_block if self.identity_input else None, self._tanh_block} - {None}:
            v = torch.tanh(blocks[k]) if k == self._tanh_block else blocks[k]
            blocks[k] = v + hh[k] if k in hh else v
        return torch.cat([blocks["z"], blocks["r"], blocks["h"]], dim=-1), p["weight_hh"], None, 0, 0

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits: z, r, n, the first three of the rule's saved blocks."""
        z, r, n = saved.chunk(4, dim=-1)[:3]
        return {"z": z, "r": r, "n": n}

    @staticmethod
    def _emit(ctx: StepContext, z: Tensor, r: Tensor, n: Tensor) -> None:
        if ctx.record is not None:
            ctx.emit("z", z)
            ctx.emit("r", r)
            ctx.emit("n", n)


class MUT1Cell(_MUTCell):
    r"""MUT1 (Jozefowicz, Zaremba & Sutskever 2015, "An Empirical Exploration of Recurrent Network Architectures").

    .. math::
        z_t &= σ(W_{xz} x_t + b_z) \\
        r_t &= σ(W_{xr} x_t + W_{hr} h_{t-1} + b_r) \\
        n_t &= \tanh(W_{hh} (r_t ⊙ h_{t-1}) + \tanh(x_t) + b_h) \\
        h_t &= z_t ⊙ n_t + (1 - z_t) ⊙ h_{t-1}

    Parameters: ``weight_ih`` rows z, r (plus h when I ≠ H), ``weight_hh`` rows r, h; biases as in
    ``torch.nn`` (``bias_ih`` and ``bias_hh`` both, their sum is the paper's b).

    Deviation: :math:`\tanh(x_t)` needs I = H; when the sizes differ it becomes
    :math:`\tanh(W_{xh} x_t + b_{xh})` with a learned projection (an extra h block in ``weight_ih``).

    Example:
        >>> h = MUT1Cell(4, 4)(torch.randn(2, 4))
        >>> tuple(h.shape)
        (2, 4)
    """

    kind = "mut1"
    #: the generic C++ driver's rule (backends/cpp/cells/mut.h)
    driver_kernel: ClassVar[str] = "mut1"
    _raw_x_block = "h"
    _hh_blocks = ("r", "h")
    _tanh_block = "h"

    def project_input(self, x: Tensor, p: Params) -> Tensor:
        y = super().project_input(x, p)
        H = self.hidden_size
        # tanh of the raw (or projected) input is applied once for all steps
        return torch.cat([y[..., : 2 * H], torch.tanh(y[..., 2 * H:])], dim=-1)

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h = state[0]
        x_z, x_r, x_h = xp_t.chunk(3, dim=-1)
        hd = ctx.drop(h)
        z = torch.sigmoid(x_z)
        r = torch.sigmoid(x_r + self._hh(p, 0, hd))
        n = torch.tanh(self._hh(p, 1, r * hd) + x_h)
        self._emit(ctx, z, r, n)
        return (z * n + (1.0 - z) * h,)


class MUT2Cell(_MUTCell):
    r"""MUT2 (Jozefowicz, Zaremba & Sutskever 2015, "An Empirical Exploration of Recurrent Network Architectures").

    .. math::
        z_t &= σ(W_{xz} x_t + W_{hz} h_{t-1} + b_z) \\
        r_t &= σ(x_t + W_{hr} h_{t-1} + b_r) \\
        n_t &= \tanh(W_{hh} (r_t ⊙ h_{t-1}) + W_{xh} x_t + b_h) \\
        h_t &= z_t ⊙ n_t + (1 - z_t) ⊙ h_{t-1}

    Parameters: ``weight_ih`` rows z, h (plus r between them when I ≠ H), ``weight_hh`` rows z, r, h.

    Deviation: the raw :math:`x_t` in r needs I = H; when the sizes differ it becomes
    :math:`W_{xr} x_t + b_{xr}` with a learned projection (an r block in ``weight_ih``).
    """

    kind = "mut2"
    #: the generic C++ driver's rule (backends/cpp/cells/mut.h)
    driver_kernel: ClassVar[str] = "mut2"
    _raw_x_block = "r"
    _hh_blocks = ("z", "r", "h")

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h = state[0]
        H = self.hidden_size
        x_z, x_r, x_h = xp_t.chunk(3, dim=-1)
        hd = ctx.drop(h)
        b = p.get("bias_hh")
        h_z, h_r = F.linear(hd, p["weight_hh"][: 2 * H], None if b is None else b[: 2 * H]).chunk(2, dim=-1)
        z = torch.sigmoid(x_z + h_z)
        r = torch.sigmoid(x_r + h_r)
        n = torch.tanh(self._hh(p, 2, r * hd) + x_h)
        self._emit(ctx, z, r, n)
        return (z * n + (1.0 - z) * h,)


class MUT3Cell(_MUTCell):
    r"""MUT3 (Jozefowicz, Zaremba & Sutskever 2015, "An Empirical Exploration of Recurrent Network Architectures").

    .. math::
        z_t &= σ(W_{xz} x_t + W_{hz} \tanh(h_{t-1}) + b_z) \\
        r_t &= σ(W_{xr} x_t + W_{hr} h_{t-1} + b_r) \\
        n_t &= \tanh(W_{hh} (r_t ⊙ h_{t-1}) + W_{xh} x_t + b_h) \\
        h_t &= z_t ⊙ n_t + (1 - z_t) ⊙ h_{t-1}

    Parameters: ``weight_ih`` and ``weight_hh`` rows z, r, h.  Any input size (no raw-x term).
    """

    kind = "mut3"
    #: the generic C++ driver's rule (backends/cpp/cells/mut.h)
    driver_kernel: ClassVar[str] = "mut3"
    _raw_x_block = None
    _hh_blocks = ("z", "r", "h")

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h = state[0]
        x_z, x_r, x_h = xp_t.chunk(3, dim=-1)
        hd = ctx.drop(h)
        z = torch.sigmoid(x_z + self._hh(p, 0, ctx.drop(torch.tanh(h))))
        r = torch.sigmoid(x_r + self._hh(p, 1, hd))
        n = torch.tanh(self._hh(p, 2, r * hd) + x_h)
        self._emit(ctx, z, r, n)
        return (z * n + (1.0 - z) * h,)
