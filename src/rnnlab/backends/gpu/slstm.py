"""Triton rule for the sLSTM of xLSTM (see cells/slstm.py): exponential gating with the stabiliser m.

The head-wise (block-diagonal) recurrent product is the driver's :class:`~rnnlab.backends.gpu.driver.Heads`;
gate blocks z̃, ĩ, f̃, õ add plainly to the input projection.  The backward is autograd's through every
operation of the cell's step, including ``m = max(log σ(f̃) + m_{t-1}, ĩ)`` (torch.maximum's rule: half the
gradient to each side on a tie, all of it to both when one is NaN), as in ``backends/cpp/cells/slstm.h``.
Saved per step: z, o, i', f', σ(-f̃), a = log σ(f̃) + m_{t-1}, ĩ, and the new c, n, m before the blend.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.gpu.common import (
    keep_ptrs, lanes, ld, load_blend_grad, row_valid, sigmoid, step_flags, store_blend, tanh,
)
from rnnlab.backends.gpu.driver import BLOCK, Heads, Prepared, grid
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.slstm import SLSTMCell


@triton.jit
def _slstm_fwd(XP, HH, H0, C0, N0, M0, H1, C1, N1, M1, SAVED, VALID, KH, KC, KN, KM, N, H,
               HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, msk, b, j = lanes(N, H, BLOCK)
    row = b * 4 * H + j
    zt = ld(XP + row, msk, COMPUTE) + ld(HH + row, msk, COMPUTE)
    it = ld(XP + row + H, msk, COMPUTE) + ld(HH + row + H, msk, COMPUTE)
    ft = ld(XP + row + 2 * H, msk, COMPUTE) + ld(HH + row + 2 * H, msk, COMPUTE)
    ot = ld(XP + row + 3 * H, msk, COMPUTE) + ld(HH + row + 3 * H, msk, COMPUTE)
    c0 = ld(C0 + offs, msk, COMPUTE)
    n0 = ld(N0 + offs, msk, COMPUTE)
    m0 = ld(M0 + offs, msk, COMPUTE)
    # log σ(f̃) = min(f̃, 0) - log(1 + exp(-|f̃|)): exp of a non-positive number only
    a = tl.minimum(ft, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(ft))) + m0
    m = tl.where((a > it) | (a != a), a, it)  # torch.maximum propagates NaN from either side
    m = tl.where(it != it, it, m)
    ip = tl.exp(it - m)
    fp = tl.exp(a - m)
    z = tanh(zt)
    o = sigmoid(ot)
    c = fp * c0 + ip * z
    n = fp * n0 + ip
    h = o * c / tl.where(msk, n, 1.0)  # lanes past the end loaded zeros: no 0/0 there
    srow = b * 10 * H + j
    tl.store(SAVED + srow, z, mask=msk)
    tl.store(SAVED + srow + H, o, mask=msk)
    tl.store(SAVED + srow + 2 * H, ip, mask=msk)
    tl.store(SAVED + srow + 3 * H, fp, mask=msk)
    tl.store(SAVED + srow + 4 * H, sigmoid(-ft), mask=msk)
    tl.store(SAVED + srow + 5 * H, a, mask=msk)
    tl.store(SAVED + srow + 6 * H, it, mask=msk)
    tl.store(SAVED + srow + 7 * H, c, mask=msk)
    tl.store(SAVED + srow + 8 * H, n, mask=msk)
    tl.store(SAVED + srow + 9 * H, m, mask=msk)
    valid = row_valid(VALID, b, msk)
    # the backend's keeps for n and m are 0: only h and c zone out
    store_blend(H1, KH, offs, msk, h, ld(H0 + offs, msk, COMPUTE), valid, HAS_KEEP, COMPUTE)
    store_blend(C1, KC, offs, msk, c, c0, valid, HAS_KEEP, COMPUTE)
    store_blend(N1, KN, offs, msk, n, n0, valid, HAS_KEEP, COMPUTE)
    store_blend(M1, KM, offs, msk, m, m0, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _slstm_bwd(DH1, DC1, DN1, DM1, SAVED, C0, N0, VALID, KH, KC, KN, KM, DXP, DH0, DC0, DN0, DM0, N, H,
               HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, msk, b, j = lanes(N, H, BLOCK)
    srow = b * 10 * H + j
    z = ld(SAVED + srow, msk, COMPUTE)
    o = ld(SAVED + srow + H, msk, COMPUTE)
    ip = ld(SAVED + srow + 2 * H, msk, COMPUTE)
    fp = ld(SAVED + srow + 3 * H, msk, COMPUTE)
    sf = ld(SAVED + srow + 4 * H, msk, COMPUTE)
    a = ld(SAVED + srow + 5 * H, msk, COMPUTE)
    it = ld(SAVED + srow + 6 * H, msk, COMPUTE)
    c = ld(SAVED + srow + 7 * H, msk, COMPUTE)
    n = tl.where(msk, ld(SAVED + srow + 8 * H, msk, COMPUTE), 1.0)  # lanes past the end: no 0/0
    c0 = ld(C0 + offs, msk, COMPUTE)
    n0 = ld(N0 + offs, msk, COMPUTE)
    valid = row_valid(VALID, b, msk)
    dh, dh_old = load_blend_grad(DH1, KH, offs, msk, valid, HAS_KEEP, COMPUTE)
    dc, dc_old = load_blend_grad(DC1, KC, offs, msk, valid, HAS_KEEP, COMPUTE)
    dn, dn_old = load_blend_grad(DN1, KN, offs, msk, valid, HAS_KEEP, COMPUTE)
    dm, dm_old = load_blend_grad(DM1, KM, offs, msk, valid, HAS_KEEP, COMPUTE)
    # h = (o c) / n: torch's division rule (no n² that could overflow)
    dq = dh / n
    dn -= dh * ((o * c / n) / n)
    dout = dq * c
    dc += dq * o
    # c = f' c0 + i' z,  n = f' n0 + i',  i' = exp(ĩ - m),  f' = exp(a - m)
    dfp = dc * c0 + dn * n0
    dip = dc * z + dn
    da = dfp * fp
    dit = dip * ip
    dm = dm - dfp * fp - dip * ip
    half = dm * 0.5
    da += tl.where(a == it, half, tl.where(a < it, 0.0, dm))
    dit += tl.where(a == it, half, tl.where(a > it, 0.0, dm))
    row = b * 4 * H + j
    tl.store(DXP + row, dc * ip * (1.0 - z * z), mask=msk)
    tl.store(DXP + row + H, dit, mask=msk)
    tl.store(DXP + row + 2 * H, da * sf, mask=msk)  # d log σ(f̃) / d f̃ = σ(-f̃)
    tl.store(DXP + row + 3 * H, dout * (1.0 - o) * o, mask=msk)
    tl.store(DH0 + offs, dh_old, mask=msk)  # h_{t-1} enters only through R (the driver adds it)
    tl.store(DC0 + offs, dc * fp + dc_old, mask=msk)
    tl.store(DN0 + offs, dn * fp + dn_old, mask=msk)
    tl.store(DM0 + offs, da + dm_old, mask=msk)  # a = log σ(f̃) + m_{t-1}


class SLSTMRule:
    """sLSTM element-wise step after the driver's head-wise product."""

    n_gates = 4
    n_saved = 10
    hh_is_xp = True
    recurrence = Heads(4)
    record_names = ("i", "f", "z", "o", "c", "n", "m")

    def record_blocks(self) -> dict[str, int]:
        return {"z": 0, "o": 1, "i": 2, "f": 3, "c": 7, "n": 8, "m": 9}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        return Prepared(p.get("bias_ih"), None, p["weight_ih"].new_empty(0, H))

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        return {} if d_b_x is None else {"bias_ih": d_b_x}

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        _slstm_fwd[grid(B, H)](xp, hh, *olds, *news, saved, valid, *keep_ptrs(keeps, olds, 4), B * H, H,
                               **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        _slstm_bwd[grid(B, H)](*d_news, saved, olds[1], olds[2], valid, *keep_ptrs(keeps, olds, 4), d_xp, *d_olds,
                               B * H, H, **step_flags(saved, keeps), BLOCK=BLOCK)


register_rule(SLSTMCell, lambda cell: SLSTMRule())
