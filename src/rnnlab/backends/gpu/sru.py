"""Triton rule for the SRU (see cells/sru.py): no recurrent matrix, the gates read c_{t-1} element-wise.

The projection is the cell's own (bias on two blocks, the identity highway when I == H); the driver hands the
kernel ``hh = c_{t-1} ⊙ m`` (the dropout-masked c, :class:`~rnnlab.backends.gpu.driver.Identity`) and takes
its gradient back in ``d_hh``.  ``v_f, v_r`` (``weight_hh``) are the per-unit constants.  Saved per step:
f, r, c (pre-blend), the candidate W x and the highway x' (the recorded values), and the masked c_{t-1}
(the gradient of v_f, v_r).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.gpu.common import (
    keep_ptrs, lanes, ld, load_blend_grad, row_valid, sigmoid, step_flags, store_blend,
)
from rnnlab.backends.gpu.driver import BLOCK, Identity, Prepared, grid
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.sru import SRUCell


@triton.jit
def _sru_fwd(XP, CD, H0, C0, H1, C1, SAVED, V, VALID, KH, KC, N, H, HAS_KEEP: tl.constexpr,
             COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 4 * H + j
    cd = ld(CD + offs, m, COMPUTE)
    c_prev = ld(C0 + offs, m, COMPUTE)
    f = sigmoid(ld(XP + row, m, COMPUTE) + ld(V + j, m, COMPUTE) * cd)
    r = sigmoid(ld(XP + row + H, m, COMPUTE) + ld(V + H + j, m, COMPUTE) * cd)
    xc = ld(XP + row + 2 * H, m, COMPUTE)
    xh = ld(XP + row + 3 * H, m, COMPUTE)
    c = f * c_prev + (1.0 - f) * xc
    h = r * c + (1.0 - r) * xh
    srow = b * 6 * H + j
    tl.store(SAVED + srow, f, mask=m)
    tl.store(SAVED + srow + H, r, mask=m)
    tl.store(SAVED + srow + 2 * H, c, mask=m)
    tl.store(SAVED + srow + 3 * H, xc, mask=m)
    tl.store(SAVED + srow + 4 * H, xh, mask=m)
    tl.store(SAVED + srow + 5 * H, cd, mask=m)
    valid = row_valid(VALID, b, m)
    store_blend(H1, KH, offs, m, h, ld(H0 + offs, m, COMPUTE), valid, HAS_KEEP, COMPUTE)
    store_blend(C1, KC, offs, m, c, c_prev, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _sru_bwd(DH1, DC1, SAVED, C0, V, VALID, KH, KC, DXP, DCD, DH0, DC0, DV, N, H, HAS_KEEP: tl.constexpr,
             COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    srow = b * 6 * H + j
    f = ld(SAVED + srow, m, COMPUTE)
    r = ld(SAVED + srow + H, m, COMPUTE)
    c = ld(SAVED + srow + 2 * H, m, COMPUTE)
    xc = ld(SAVED + srow + 3 * H, m, COMPUTE)
    xh = ld(SAVED + srow + 4 * H, m, COMPUTE)
    c_prev = ld(C0 + offs, m, COMPUTE)
    cd = ld(SAVED + srow + 5 * H, m, COMPUTE)
    valid = row_valid(VALID, b, m)
    dh, dh_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    dc, dc_old = load_blend_grad(DC1, KC, offs, m, valid, HAS_KEEP, COMPUTE)
    dc += dh * r
    dzf = dc * (c_prev - xc) * f * (1.0 - f)
    dzr = dh * (c - xh) * r * (1.0 - r)
    row = b * 4 * H + j
    tl.store(DXP + row, dzf, mask=m)
    tl.store(DXP + row + H, dzr, mask=m)
    tl.store(DXP + row + 2 * H, dc * (1.0 - f), mask=m)
    tl.store(DXP + row + 3 * H, dh * (1.0 - r), mask=m)
    tl.store(DCD + offs, dzf * ld(V + j, m, COMPUTE) + dzr * ld(V + H + j, m, COMPUTE), mask=m)
    tl.store(DV + b * 2 * H + j, dzf * cd, mask=m)
    tl.store(DV + b * 2 * H + H + j, dzr * cd, mask=m)
    tl.store(DH0 + offs, dh_old, mask=m)  # h_{t-1} is not read
    tl.store(DC0 + offs, dc * f + dc_old, mask=m)  # the driver adds the gates' path through d_hh


class SRURule:
    """SRU element-wise step on the masked c the driver provides."""

    n_gates = 4
    n_saved = 6
    hh_is_xp = False
    recurrence = Identity
    operand = 1  # the recurrent dropout mask acts on c where it enters the gates
    own_projection = True
    record_names = ("f", "r", "c", "candidate", "highway")

    def record_blocks(self) -> dict[str, int]:
        return {n: k for k, n in enumerate(self.record_names)}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        return Prepared(None, None, p["weight_hh"].view(2, H).contiguous())

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        return {"weight_hh": d_consts.reshape(-1)}

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        _sru_fwd[grid(B, H)](xp, hh, olds[0], olds[1], news[0], news[1], saved, consts, valid,
                             *keep_ptrs(keeps, olds, 2), B * H, H, **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        _sru_bwd[grid(B, H)](d_news[0], d_news[1], saved, olds[1], consts, valid, *keep_ptrs(keeps, olds, 2), d_xp,
                             d_hh, d_olds[0], d_olds[1], d_consts, B * H, H, **step_flags(saved, keeps), BLOCK=BLOCK)


register_rule(SRUCell, lambda cell: SRURule())
