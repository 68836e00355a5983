"""Triton rule for the clockwork RNN (see cells/clockwork.py): Elman's tanh step, kept where a module is idle.

The driver forms ``hh = hd (W_hh ⊙ M)ᵀ`` from the masked weight (``transform_params``: autograd masks its
gradient); the kernel applies ``a = tanh(xp + hh)``, ``h = a`` where ``round(n) mod T_k = 0`` and the old h
elsewhere, and advances the step counter ``n`` (B, 1) by one at valid steps.  Saved per step: ``a`` and the
0/1 ``active`` map, which are also the recorded values.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.gpu.common import keep_ptrs, lanes, ld, load_blend_grad, row_valid, step_flags, store_blend, tanh
from rnnlab.backends.gpu.driver import BLOCK, Prepared, accumulation_dtype, grid
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.clockwork import ClockworkCell


@triton.jit
def _active(N0, PERIOD, b, j, m, COMPUTE: tl.constexpr):
    """Whether unit j's module updates at this step: round(n) mod T_j == 0 (n a whole number of steps)."""
    n = tl.floor(ld(N0 + b, m, COMPUTE) + 0.5)
    period = tl.load(PERIOD + j, mask=m, other=1.0).to(COMPUTE)  # (1 in idle lanes: no 0 / 0)
    return n - tl.floor(n / period) * period == 0.0


@triton.jit
def _clockwork_fwd(XP, HH, H0, N0, H1, N1, SAVED, PERIOD, VALID, KH, N, H, HAS_KEEP: tl.constexpr,
                   COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    a = tanh(ld(XP + offs, m, COMPUTE) + ld(HH + offs, m, COMPUTE))
    active = _active(N0, PERIOD, b, j, m, COMPUTE)
    h_prev = ld(H0 + offs, m, COMPUTE)
    tl.store(SAVED + b * 2 * H + j, a, mask=m)
    tl.store(SAVED + b * 2 * H + H + j, active.to(COMPUTE), mask=m)
    valid = row_valid(VALID, b, m)
    store_blend(H1, KH, offs, m, tl.where(active, a, h_prev), h_prev, valid, HAS_KEEP, COMPUTE)
    first = m & (j == 0)  # one lane per row advances the row's counter (a padded step leaves it)
    n = ld(N0 + b, first, COMPUTE)
    tl.store(N1 + b, tl.where(valid, n + 1.0, n), mask=first)


@triton.jit
def _clockwork_bwd(DH1, DN1, SAVED, VALID, KH, DXP, DH0, DN0, N, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    a = ld(SAVED + b * 2 * H + j, m, COMPUTE)
    active = ld(SAVED + b * 2 * H + H + j, m, COMPUTE) != 0.0
    valid = row_valid(VALID, b, m)
    dh, dh_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    tl.store(DXP + offs, tl.where(active, dh * (1.0 - a * a), 0.0), mask=m)
    tl.store(DH0 + offs, dh_old + tl.where(active, 0.0, dh), mask=m)
    first = m & (j == 0)  # n + 1 (or n kept): the counter's gradient passes through unchanged
    tl.store(DN0 + b, ld(DN1 + b, first, COMPUTE), mask=first)


class ClockworkRule:
    """Clockwork element-wise step (periods as per-unit constants)."""

    n_gates = 1
    n_saved = 2
    hh_is_xp = True
    record_names = ("a", "active")

    def __init__(self, cell: ClockworkCell) -> None:
        self.cell = cell

    def record_blocks(self) -> dict[str, int]:
        return {"a": 0, "active": 1}

    def transform_params(self, p: dict[str, Tensor]) -> dict[str, Tensor]:
        """``W_hh ⊙ M``, the weights the recurrence uses (entries outside M get no gradient)."""
        w = p["weight_hh"]
        return {**p, "weight_hh": w * self.cell.recurrent_mask(w.dtype, w.device)}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        w = p["weight_ih"]
        b = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else None
        # in the accumulation dtype: a bf16 period above 256 would not be exact
        return Prepared(b, None, self.cell.unit_periods(accumulation_dtype(w.dtype), w.device).view(1, H))

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        return {} if d_b_x is None else {"bias_ih": d_b_x, "bias_hh": d_b_x}  # the periods are not parameters

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        _clockwork_fwd[grid(B, H)](xp, hh, olds[0], olds[1], news[0], news[1], saved, consts, valid,
                                   *keep_ptrs(keeps, olds, 1), B * H, H, **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        _clockwork_bwd[grid(B, H)](d_news[0], d_news[1], saved, valid, *keep_ptrs(keeps, olds, 1), d_xp, d_olds[0],
                                   d_olds[1], B * H, H, **step_flags(saved, keeps), BLOCK=BLOCK)


register_rule(ClockworkCell, ClockworkRule)
