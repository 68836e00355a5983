"""Triton rules for the layer-normalised GRU and LSTM (see cells/layernorm.py): LN over each row of W_hh h.

The projection is the cell's own (``LN(W_ih x)``, differentiated by autograd); the driver forms
``hh = (h ⊙ m) W_hhᵀ`` (G·H values per batch row, no bias: LN would cancel it) and the kernels normalise it.
A layer norm needs the statistics of a whole row, so these kernels run one program per batch row holding
the row's G gate blocks of ``BLOCK_H = next_pow2(H)`` lanes each (masked past H); the LN-LSTM's norm over c
(H values) fits the same program.  That caps the hidden size at :data:`MAX_HIDDEN` (row width G·H ≤ 8192 for
the LSTM): wider rows would spill registers, so :meth:`_LayerNormRule.accepts` refuses them with one logged
warning naming the cell, the size and the device, and the call runs on the next backend.

Per-unit constants (the rows of ``consts``, in the accumulation dtype so that ε is exact): α₂ (G rows),
β₂ (G rows, zeros without bias), for the LSTM α₃ and β₃ of LN(c), and ε (one row).  Saved per step, GRU:
r, z, n, â (3 blocks), rstd; LSTM: i, f, g, o, â (4 blocks), ĉ, c (pre-blend), rstd of â, rstd of ĉ.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.base import LayerCall
from rnnlab.backends.gpu.common import keep_ptrs, ld, load_blend_grad, sigmoid, step_flags, store_blend, tanh
from rnnlab.backends.gpu.driver import Prepared, accumulation_dtype
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.layernorm import LayerNormGRUCell, LayerNormLSTMCell

log = logging.getLogger("rnnlab.backends")

#: the widest hidden size one program per batch row takes (each gate block is next_pow2(H) lanes)
MAX_HIDDEN = 2048
_warned: set[tuple[str, int, str]] = set()


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _msum(v, m):
    # a sum over the valid lanes only (masked loads leave the others undefined); tl.reduce with our own
    # combine rather than tl.sum: Triton's interpreter cannot call tl.sum when triton was imported before
    # TRITON_INTERPRET=1 was set (it is then a compiled-only function)
    return tl.reduce(tl.where(m, v, 0.0), 0, _add)


@triton.jit
def _row_lanes(H, BLOCK_H: tl.constexpr):
    """This program's batch row (one program per row): (offsets into the (B, H) state, unit mask, row, unit)."""
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK_H)
    return b * H + j, j < H, b, j


@triton.jit
def _ln_gru_fwd(XP, HH, H0, H1, SAVED, C, VALID, KH, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
                BLOCK_H: tl.constexpr):
    offs, m, b, j = _row_lanes(H, BLOCK_H)
    row = b * 3 * H + j
    a_r = ld(HH + row, m, COMPUTE)
    a_z = ld(HH + row + H, m, COMPUTE)
    a_n = ld(HH + row + 2 * H, m, COMPUTE)
    n_row = 3 * H
    mu = (_msum(a_r, m) + _msum(a_z, m) + _msum(a_n, m)) / n_row
    d_r = tl.where(m, a_r - mu, 0.0)
    d_z = tl.where(m, a_z - mu, 0.0)
    d_n = tl.where(m, a_n - mu, 0.0)
    var = (_msum(d_r * d_r, m) + _msum(d_z * d_z, m) + _msum(d_n * d_n, m)) / n_row
    eps = tl.load(C + 6 * H).to(COMPUTE)
    rstd = 1.0 / tl.sqrt(var + eps)
    ah_r = d_r * rstd
    ah_z = d_z * rstd
    ah_n = d_n * rstd
    r = sigmoid(ld(XP + row, m, COMPUTE) + ld(C + j, m, COMPUTE) * ah_r + ld(C + 3 * H + j, m, COMPUTE))
    z = sigmoid(ld(XP + row + H, m, COMPUTE) + ld(C + H + j, m, COMPUTE) * ah_z + ld(C + 4 * H + j, m, COMPUTE))
    hn = ld(C + 2 * H + j, m, COMPUTE) * ah_n + ld(C + 5 * H + j, m, COMPUTE)
    n = tanh(ld(XP + row + 2 * H, m, COMPUTE) + r * hn)
    h_prev = ld(H0 + offs, m, COMPUTE)
    h = (1.0 - z) * n + z * h_prev
    srow = b * 7 * H + j
    tl.store(SAVED + srow, r, mask=m)
    tl.store(SAVED + srow + H, z, mask=m)
    tl.store(SAVED + srow + 2 * H, n, mask=m)
    tl.store(SAVED + srow + 3 * H, ah_r, mask=m)
    tl.store(SAVED + srow + 4 * H, ah_z, mask=m)
    tl.store(SAVED + srow + 5 * H, ah_n, mask=m)
    tl.store(SAVED + srow + 6 * H, rstd + 0.0 * h, mask=m)  # broadcast over the block
    valid = tl.load(VALID + b) != 0
    store_blend(H1, KH, offs, m, h, h_prev, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _ln_gru_bwd(DH1, SAVED, H0, C, VALID, KH, DXP, DHH, DH0, DC, H, HAS_KEEP: tl.constexpr,
                COMPUTE: tl.constexpr, BLOCK_H: tl.constexpr):
    offs, m, b, j = _row_lanes(H, BLOCK_H)
    srow = b * 7 * H + j
    r = ld(SAVED + srow, m, COMPUTE)
    z = ld(SAVED + srow + H, m, COMPUTE)
    n = ld(SAVED + srow + 2 * H, m, COMPUTE)
    ah_r = ld(SAVED + srow + 3 * H, m, COMPUTE)
    ah_z = ld(SAVED + srow + 4 * H, m, COMPUTE)
    ah_n = ld(SAVED + srow + 5 * H, m, COMPUTE)
    rstd = tl.load(SAVED + b * 7 * H + 6 * H).to(COMPUTE)
    h_prev = ld(H0 + offs, m, COMPUTE)
    valid = tl.load(VALID + b) != 0
    d, d_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    al_r = ld(C + j, m, COMPUTE)
    al_z = ld(C + H + j, m, COMPUTE)
    al_n = ld(C + 2 * H + j, m, COMPUTE)
    hn = al_n * ah_n + ld(C + 5 * H + j, m, COMPUTE)
    dzn = d * (1.0 - z) * (1.0 - n * n)
    dzz = d * (h_prev - n) * z * (1.0 - z)
    dzr = dzn * hn * r * (1.0 - r)
    dln_n = dzn * r  # the gradients reaching LN(W_hh h), block by block
    row = b * 3 * H + j
    tl.store(DXP + row, dzr, mask=m)
    tl.store(DXP + row + H, dzz, mask=m)
    tl.store(DXP + row + 2 * H, dzn, mask=m)
    crow = b * 7 * H + j  # this row's share of d consts: dα₂ = dln ⊙ â, dβ₂ = dln
    tl.store(DC + crow, dzr * ah_r, mask=m)
    tl.store(DC + crow + H, dzz * ah_z, mask=m)
    tl.store(DC + crow + 2 * H, dln_n * ah_n, mask=m)
    tl.store(DC + crow + 3 * H, dzr, mask=m)
    tl.store(DC + crow + 4 * H, dzz, mask=m)
    tl.store(DC + crow + 5 * H, dln_n, mask=m)
    tl.store(DC + crow + 6 * H, 0.0 * d, mask=m)  # ε is no parameter
    # through the normalisation: da = rstd (dâ - mean(dâ) - â mean(dâ ⊙ â)) over the whole 3H row
    g_r = dzr * al_r
    g_z = dzz * al_z
    g_n = dln_n * al_n
    n_row = 3 * H
    m1 = (_msum(g_r, m) + _msum(g_z, m) + _msum(g_n, m)) / n_row
    m2 = (_msum(g_r * ah_r, m) + _msum(g_z * ah_z, m) + _msum(g_n * ah_n, m)) / n_row
    tl.store(DHH + row, rstd * (g_r - m1 - ah_r * m2), mask=m)
    tl.store(DHH + row + H, rstd * (g_z - m1 - ah_z * m2), mask=m)
    tl.store(DHH + row + 2 * H, rstd * (g_n - m1 - ah_n * m2), mask=m)
    tl.store(DH0 + offs, d * z + d_old, mask=m)


@triton.jit
def _ln_lstm_fwd(XP, HH, H0, C0, H1, C1, SAVED, C, VALID, KH, KC, H, HAS_KEEP: tl.constexpr,
                 COMPUTE: tl.constexpr, BLOCK_H: tl.constexpr):
    offs, m, b, j = _row_lanes(H, BLOCK_H)
    row = b * 4 * H + j
    a_i = ld(HH + row, m, COMPUTE)
    a_f = ld(HH + row + H, m, COMPUTE)
    a_g = ld(HH + row + 2 * H, m, COMPUTE)
    a_o = ld(HH + row + 3 * H, m, COMPUTE)
    n_row = 4 * H
    mu = (_msum(a_i, m) + _msum(a_f, m) + _msum(a_g, m) + _msum(a_o, m)) / n_row
    d_i = tl.where(m, a_i - mu, 0.0)
    d_f = tl.where(m, a_f - mu, 0.0)
    d_g = tl.where(m, a_g - mu, 0.0)
    d_o = tl.where(m, a_o - mu, 0.0)
    var = (_msum(d_i * d_i, m) + _msum(d_f * d_f, m) + _msum(d_g * d_g, m) + _msum(d_o * d_o, m)) / n_row
    eps = tl.load(C + 10 * H).to(COMPUTE)
    rstd = 1.0 / tl.sqrt(var + eps)
    ah_i = d_i * rstd
    ah_f = d_f * rstd
    ah_g = d_g * rstd
    ah_o = d_o * rstd
    i = sigmoid(ld(XP + row, m, COMPUTE) + ld(C + j, m, COMPUTE) * ah_i + ld(C + 4 * H + j, m, COMPUTE))
    f = sigmoid(ld(XP + row + H, m, COMPUTE) + ld(C + H + j, m, COMPUTE) * ah_f + ld(C + 5 * H + j, m, COMPUTE))
    g = tanh(ld(XP + row + 2 * H, m, COMPUTE) + ld(C + 2 * H + j, m, COMPUTE) * ah_g
             + ld(C + 6 * H + j, m, COMPUTE))
    o = sigmoid(ld(XP + row + 3 * H, m, COMPUTE) + ld(C + 3 * H + j, m, COMPUTE) * ah_o
                + ld(C + 7 * H + j, m, COMPUTE))
    c_prev = ld(C0 + offs, m, COMPUTE)
    c = f * c_prev + i * g
    mu_c = _msum(c, m) / H
    d_c = tl.where(m, c - mu_c, 0.0)
    rstd_c = 1.0 / tl.sqrt(_msum(d_c * d_c, m) / H + eps)
    ch = d_c * rstd_c
    h = o * tanh(ld(C + 8 * H + j, m, COMPUTE) * ch + ld(C + 9 * H + j, m, COMPUTE))
    srow = b * 12 * H + j
    tl.store(SAVED + srow, i, mask=m)
    tl.store(SAVED + srow + H, f, mask=m)
    tl.store(SAVED + srow + 2 * H, g, mask=m)
    tl.store(SAVED + srow + 3 * H, o, mask=m)
    tl.store(SAVED + srow + 4 * H, ah_i, mask=m)
    tl.store(SAVED + srow + 5 * H, ah_f, mask=m)
    tl.store(SAVED + srow + 6 * H, ah_g, mask=m)
    tl.store(SAVED + srow + 7 * H, ah_o, mask=m)
    tl.store(SAVED + srow + 8 * H, ch, mask=m)
    tl.store(SAVED + srow + 9 * H, c, mask=m)
    tl.store(SAVED + srow + 10 * H, rstd + 0.0 * c, mask=m)  # broadcast over the block
    tl.store(SAVED + srow + 11 * H, rstd_c + 0.0 * c, mask=m)
    valid = tl.load(VALID + b) != 0
    store_blend(H1, KH, offs, m, h, ld(H0 + offs, m, COMPUTE), valid, HAS_KEEP, COMPUTE)
    store_blend(C1, KC, offs, m, c, c_prev, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _ln_lstm_bwd(DH1, DC1, SAVED, C0, C, VALID, KH, KC, DXP, DHH, DH0, DC0, DC, H, HAS_KEEP: tl.constexpr,
                 COMPUTE: tl.constexpr, BLOCK_H: tl.constexpr):
    offs, m, b, j = _row_lanes(H, BLOCK_H)
    srow = b * 12 * H + j
    i = ld(SAVED + srow, m, COMPUTE)
    f = ld(SAVED + srow + H, m, COMPUTE)
    g = ld(SAVED + srow + 2 * H, m, COMPUTE)
    o = ld(SAVED + srow + 3 * H, m, COMPUTE)
    ah_i = ld(SAVED + srow + 4 * H, m, COMPUTE)
    ah_f = ld(SAVED + srow + 5 * H, m, COMPUTE)
    ah_g = ld(SAVED + srow + 6 * H, m, COMPUTE)
    ah_o = ld(SAVED + srow + 7 * H, m, COMPUTE)
    ch = ld(SAVED + srow + 8 * H, m, COMPUTE)
    rstd = tl.load(SAVED + b * 12 * H + 10 * H).to(COMPUTE)
    rstd_c = tl.load(SAVED + b * 12 * H + 11 * H).to(COMPUTE)
    c_prev = ld(C0 + offs, m, COMPUTE)
    valid = tl.load(VALID + b) != 0
    dh, dh_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    dc, dc_old = load_blend_grad(DC1, KC, offs, m, valid, HAS_KEEP, COMPUTE)
    al_c = ld(C + 8 * H + j, m, COMPUTE)
    act = tanh(al_c * ch + ld(C + 9 * H + j, m, COMPUTE))
    dy = dh * o * (1.0 - act * act)
    dzo = dh * act * o * (1.0 - o)
    # through LN(c) over the H units of the row
    g_c = dy * al_c
    dc += rstd_c * (g_c - _msum(g_c, m) / H - ch * (_msum(g_c * ch, m) / H))
    dzi = dc * g * i * (1.0 - i)
    dzf = dc * c_prev * f * (1.0 - f)
    dzg = dc * i * (1.0 - g * g)
    row = b * 4 * H + j
    tl.store(DXP + row, dzi, mask=m)
    tl.store(DXP + row + H, dzf, mask=m)
    tl.store(DXP + row + 2 * H, dzg, mask=m)
    tl.store(DXP + row + 3 * H, dzo, mask=m)
    crow = b * 11 * H + j  # this row's share of d consts: α₂, β₂ (4 rows each), α₃, β₃, ε
    tl.store(DC + crow, dzi * ah_i, mask=m)
    tl.store(DC + crow + H, dzf * ah_f, mask=m)
    tl.store(DC + crow + 2 * H, dzg * ah_g, mask=m)
    tl.store(DC + crow + 3 * H, dzo * ah_o, mask=m)
    tl.store(DC + crow + 4 * H, dzi, mask=m)
    tl.store(DC + crow + 5 * H, dzf, mask=m)
    tl.store(DC + crow + 6 * H, dzg, mask=m)
    tl.store(DC + crow + 7 * H, dzo, mask=m)
    tl.store(DC + crow + 8 * H, dy * ch, mask=m)
    tl.store(DC + crow + 9 * H, dy, mask=m)
    tl.store(DC + crow + 10 * H, 0.0 * dy, mask=m)  # ε is no parameter
    # through LN(W_hh h) over the whole 4H row (the gates add xp and the normalised product plainly)
    g_i = dzi * ld(C + j, m, COMPUTE)
    g_f = dzf * ld(C + H + j, m, COMPUTE)
    g_g = dzg * ld(C + 2 * H + j, m, COMPUTE)
    g_o = dzo * ld(C + 3 * H + j, m, COMPUTE)
    n_row = 4 * H
    m1 = (_msum(g_i, m) + _msum(g_f, m) + _msum(g_g, m) + _msum(g_o, m)) / n_row
    m2 = (_msum(g_i * ah_i, m) + _msum(g_f * ah_f, m) + _msum(g_g * ah_g, m) + _msum(g_o * ah_o, m)) / n_row
    tl.store(DHH + row, rstd * (g_i - m1 - ah_i * m2), mask=m)
    tl.store(DHH + row + H, rstd * (g_f - m1 - ah_f * m2), mask=m)
    tl.store(DHH + row + 2 * H, rstd * (g_g - m1 - ah_g * m2), mask=m)
    tl.store(DHH + row + 3 * H, rstd * (g_o - m1 - ah_o * m2), mask=m)
    tl.store(DH0 + offs, dh_old, mask=m)  # h_{t-1} enters only through the product (the driver adds it)
    tl.store(DC0 + offs, dc * f + dc_old, mask=m)


def _row_launch(H: int) -> tuple[int, int]:
    """(BLOCK_H, num_warps) of a one-program-per-row kernel."""
    block = triton.next_power_of_2(H)
    return block, 4 if block <= 1024 else 8


class _LayerNormRule:
    """The shared part: the cell's own projection, W_hh without bias, the LN rows as constants."""

    hh_is_xp = False
    own_projection = True

    def __init__(self, cell) -> None:
        self.cell = cell

    def accepts(self, call: LayerCall) -> bool:
        """Rows up to :data:`MAX_HIDDEN` units per gate block; wider ones go on (warned once per size/device)."""
        H = self.cell.hidden_size
        if H <= MAX_HIDDEN:
            return True
        key = (self.cell.kind, H, str(call.x.device))
        if key not in _warned:
            _warned.add(key)
            log.warning("rnnlab: triton backend: %s with hidden_size=%d exceeds the layer-norm row limit "
                        "(hidden_size <= %d, one program per batch row) on %s; using the next backend instead",
                        *key[:2], MAX_HIDDEN, key[2])
        return False

    def record_blocks(self) -> dict[str, int]:
        return dict(zip(self.record_names, self._record_at))

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        G = self.n_gates
        acc = accumulation_dtype(p["weight_hh"].dtype)
        alpha = p["weight_ln_hh"].view(G, H)
        beta = p["bias_ln_hh"].view(G, H) if "bias_ln_hh" in p else torch.zeros_like(alpha)
        rows = [alpha, beta, *self._extra_rows(p, H), torch.full_like(alpha[:1], self.cell.eps)]
        return Prepared(None, None, torch.cat([r.to(acc) for r in rows]).contiguous())

    def _extra_rows(self, p: dict[str, Tensor], H: int) -> list[Tensor]:
        return []

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        G = self.n_gates
        grads = {"weight_ln_hh": d_consts[:G].reshape(-1)}
        if "bias_ln_hh" in p:
            grads["bias_ln_hh"] = d_consts[G:2 * G].reshape(-1)
        return grads


class LayerNormGRURule(_LayerNormRule):
    """LN-GRU (reset after the normalised product)."""

    n_gates = 3
    n_saved = 7
    record_names = ("r", "z", "n")
    _record_at = (0, 1, 2)

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        block, warps = _row_launch(H)
        _ln_gru_fwd[(B,)](xp, hh, olds[0], news[0], saved, consts, valid, *keep_ptrs(keeps, olds, 1), H,
                          **step_flags(saved, keeps), BLOCK_H=block, num_warps=warps)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        block, warps = _row_launch(H)
        _ln_gru_bwd[(B,)](d_news[0], saved, olds[0], consts, valid, *keep_ptrs(keeps, olds, 1), d_xp, d_hh, d_olds[0],
                          d_consts, H, **step_flags(saved, keeps), BLOCK_H=block, num_warps=warps)


class LayerNormLSTMRule(_LayerNormRule):
    """LN-LSTM: LN over the 4H recurrent row and over c."""

    n_gates = 4
    n_saved = 12
    record_names = ("i", "f", "g", "o", "c")
    _record_at = (0, 1, 2, 3, 9)

    def _extra_rows(self, p: dict[str, Tensor], H: int) -> list[Tensor]:
        alpha = p["weight_ln_c"].view(1, H)
        return [alpha, p["bias_ln_c"].view(1, H) if "bias_ln_c" in p else torch.zeros_like(alpha)]

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        grads = super().param_grads(p, d_b_x, d_b_hh, d_consts)
        grads["weight_ln_c"] = d_consts[8]
        if "bias_ln_c" in p:
            grads["bias_ln_c"] = d_consts[9]
        return grads

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        block, warps = _row_launch(H)
        _ln_lstm_fwd[(B,)](xp, hh, olds[0], olds[1], news[0], news[1], saved, consts, valid, *keep_ptrs(keeps, olds, 2),
                           H, **step_flags(saved, keeps), BLOCK_H=block, num_warps=warps)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        block, warps = _row_launch(H)
        _ln_lstm_bwd[(B,)](d_news[0], d_news[1], saved, olds[1], consts, valid, *keep_ptrs(keeps, olds, 2), d_xp, d_hh,
                           d_olds[0], d_olds[1], d_consts, H, **step_flags(saved, keeps), BLOCK_H=block,
                           num_warps=warps)


register_rule(LayerNormGRUCell, LayerNormGRURule)
register_rule(LayerNormLSTMCell, LayerNormLSTMRule)
