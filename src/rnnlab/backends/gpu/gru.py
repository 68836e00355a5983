"""Triton rule for the GRU with the reset after the recurrent product (torch.nn form): see cells/gru.py.

Blocks r, z, n; ``b_hh`` stays on the recurrent product because ``b_hn`` sits behind the reset gate.  Saved per
step: r, z, n and ``hn = W_hn h_{t-1} + b_hn``.  The paper form (reset before the product) is
:mod:`~rnnlab.backends.gpu.gru_paper`'s rule.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.gpu.common import (
    keep_ptrs, lanes, ld, load_blend_grad, row_valid, sigmoid, step_flags, store_blend, tanh,
)
from rnnlab.backends.gpu.driver import BLOCK, Prepared, grid
from rnnlab.backends.gpu.gru_paper import GRUPaperRule
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.gru import GRUCell


@triton.jit
def _gru_fwd(XP, HH, H0, H1, SAVED, VALID, KH, N, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
              BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    r = sigmoid(ld(XP + row, m, COMPUTE) + ld(HH + row, m, COMPUTE))
    z = sigmoid(ld(XP + row + H, m, COMPUTE) + ld(HH + row + H, m, COMPUTE))
    hn = ld(HH + row + 2 * H, m, COMPUTE)
    n = tanh(ld(XP + row + 2 * H, m, COMPUTE) + r * hn)
    h_prev = ld(H0 + offs, m, COMPUTE)
    h = (1.0 - z) * n + z * h_prev
    srow = b * 4 * H + j
    tl.store(SAVED + srow, r, mask=m)
    tl.store(SAVED + srow + H, z, mask=m)
    tl.store(SAVED + srow + 2 * H, n, mask=m)
    tl.store(SAVED + srow + 3 * H, hn, mask=m)
    valid = row_valid(VALID, b, m)
    store_blend(H1, KH, offs, m, h, h_prev, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _gru_bwd(DH1, SAVED, H0, VALID, KH, DXP, DHH, DH0, N, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
              BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    srow = b * 4 * H + j
    r = ld(SAVED + srow, m, COMPUTE)
    z = ld(SAVED + srow + H, m, COMPUTE)
    n = ld(SAVED + srow + 2 * H, m, COMPUTE)
    hn = ld(SAVED + srow + 3 * H, m, COMPUTE)
    h_prev = ld(H0 + offs, m, COMPUTE)
    valid = row_valid(VALID, b, m)
    dh, dh_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    dzn = dh * (1.0 - z) * (1.0 - n * n)
    dzz = dh * (h_prev - n) * z * (1.0 - z)
    dzr = dzn * hn * r * (1.0 - r)
    row = b * 3 * H + j
    tl.store(DXP + row, dzr, mask=m)
    tl.store(DXP + row + H, dzz, mask=m)
    tl.store(DXP + row + 2 * H, dzn, mask=m)
    tl.store(DHH + row, dzr, mask=m)
    tl.store(DHH + row + H, dzz, mask=m)
    tl.store(DHH + row + 2 * H, dzn * r, mask=m)
    tl.store(DH0 + offs, dh * z + dh_old, mask=m)


class GRURule:
    """GRU (reset after the product) element-wise step."""

    n_gates = 3
    n_saved = 4
    hh_is_xp = False
    record_names = ("r", "z", "n")

    def record_blocks(self) -> dict[str, int]:
        return {"r": 0, "z": 1, "n": 2}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        return Prepared(p.get("bias_ih"), p.get("bias_hh"), p["weight_ih"].new_empty(0, H))

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        return {} if d_b_x is None else {"bias_ih": d_b_x, "bias_hh": d_b_hh}

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        _gru_fwd[grid(B, H)](xp, hh, olds[0], news[0], saved, valid, *keep_ptrs(keeps, olds, 1), B * H, H,
                             **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        _gru_bwd[grid(B, H)](d_news[0], saved, olds[0], valid, *keep_ptrs(keeps, olds, 1), d_xp, d_hh, d_olds[0], B * H,
                             H, **step_flags(saved, keeps), BLOCK=BLOCK)


register_rule(GRUCell, lambda cell: GRURule() if cell.reset_after else GRUPaperRule(cell.hidden_size))
