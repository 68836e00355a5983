"""Triton rule for the LSTM family (peepholes, coupled gates, removed gates/activations): see cells/lstm.py.

The equations are :class:`rnnlab.cells.LSTMCell`'s.  Gate blocks of ``xp`` / ``hh`` are the present gates in
the order i, f, g, o; saved per step: i, f, g, o, c (pre-blend), which are also the recorded gates.
Covered: every option.  With ``proj_size`` the kernel leaves ``m = o ⊙ act(c)`` unblended and the driver's
output projection forms ``h = W_hr m`` and blends it (``out_proj``).  With Greff's full gate recurrence (FGR) the
driver adds ``a_{t-1} W_ggᵀ`` to the i, f, o blocks of ``hh`` (``part_product``) and the kernels write the new
state part ``a = [i, f, o]`` (1 for an absent gate) and take its gradient back into the gates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.gpu.common import (
    keep_ptrs, lanes, ld, load_blend_grad, row_valid, sigmoid, step_flags, store_blend, tanh,
)
from rnnlab.backends.gpu.driver import BLOCK, PartProduct, Prepared, grid
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.lstm import LSTMCell


@triton.jit
def _lstm_fwd(XP, HH, H0, C0, A0, H1, C1, A1, SAVED, PEEP, VALID, KH, KC, KA, N, H,
              HAS_I: tl.constexpr, HAS_F: tl.constexpr, HAS_O: tl.constexpr, COUPLED: tl.constexpr,
              IN_ACT: tl.constexpr, OUT_ACT: tl.constexpr, PEEP_I: tl.constexpr, PEEP_F: tl.constexpr,
              PEEP_O: tl.constexpr, PROJ: tl.constexpr, FGR: tl.constexpr, HAS_KEEP: tl.constexpr,
              COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    G: tl.constexpr = HAS_I + HAS_F + 1 + HAS_O
    row = b * G * H + j
    c_prev = ld(C0 + offs, m, COMPUTE)
    one = tl.full([BLOCK], 1.0, c_prev.dtype)
    i = one
    if HAS_I:
        zi = ld(XP + row, m, COMPUTE) + ld(HH + row, m, COMPUTE)
        if PEEP_I:
            zi += ld(PEEP + j, m, COMPUTE) * c_prev
        i = sigmoid(zi)
    f = one
    if COUPLED:
        f = 1.0 - i
    if HAS_F:
        k = HAS_I * H
        zf = ld(XP + row + k, m, COMPUTE) + ld(HH + row + k, m, COMPUTE)
        if PEEP_F:
            zf += ld(PEEP + H + j, m, COMPUTE) * c_prev
        f = sigmoid(zf)
    kg = (HAS_I + HAS_F) * H
    g = ld(XP + row + kg, m, COMPUTE) + ld(HH + row + kg, m, COMPUTE)
    if IN_ACT:
        g = tanh(g)
    c = f * c_prev + i * g
    o = one
    if HAS_O:
        ko = (HAS_I + HAS_F + 1) * H
        zo = ld(XP + row + ko, m, COMPUTE) + ld(HH + row + ko, m, COMPUTE)
        if PEEP_O:
            zo += ld(PEEP + 2 * H + j, m, COMPUTE) * c
        o = sigmoid(zo)
    a = c
    if OUT_ACT:
        a = tanh(c)
    h = o * a
    srow = b * 5 * H + j
    tl.store(SAVED + srow, i, mask=m)
    tl.store(SAVED + srow + H, f, mask=m)
    tl.store(SAVED + srow + 2 * H, g, mask=m)
    tl.store(SAVED + srow + 3 * H, o, mask=m)
    tl.store(SAVED + srow + 4 * H, c, mask=m)
    valid = row_valid(VALID, b, m)
    if PROJ:  # m = o ⊙ act(c) for the driver's projection, which blends h itself (h is P wide: KH is not read)
        tl.store(H1 + offs, h, mask=m)
    else:
        store_blend(H1, KH, offs, m, h, ld(H0 + offs, m, COMPUTE), valid, HAS_KEEP, COMPUTE)
    store_blend(C1, KC, offs, m, c, c_prev, valid, HAS_KEEP, COMPUTE)
    if FGR:  # the state part a = [i, f, o] (B, 3H) the next step's gates read through W_gg
        arow = b * 3 * H + j
        store_blend(A1 + arow, KA + arow, 0, m, i, ld(A0 + arow, m, COMPUTE), valid, HAS_KEEP, COMPUTE)
        store_blend(A1 + arow + H, KA + arow + H, 0, m, f, ld(A0 + arow + H, m, COMPUTE), valid, HAS_KEEP,
                    COMPUTE)
        store_blend(A1 + arow + 2 * H, KA + arow + 2 * H, 0, m, o, ld(A0 + arow + 2 * H, m, COMPUTE), valid,
                    HAS_KEEP, COMPUTE)


@triton.jit
def _lstm_bwd(DH1, DC1, DA1, SAVED, C0, PEEP, VALID, KH, KC, KA, DXP, DH0, DC0, DA0, DPEEP, N, H,
              HAS_I: tl.constexpr, HAS_F: tl.constexpr, HAS_O: tl.constexpr, COUPLED: tl.constexpr,
              IN_ACT: tl.constexpr, OUT_ACT: tl.constexpr, PEEP_I: tl.constexpr, PEEP_F: tl.constexpr,
              PEEP_O: tl.constexpr, PROJ: tl.constexpr, FGR: tl.constexpr, HAS_KEEP: tl.constexpr,
              COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    G: tl.constexpr = HAS_I + HAS_F + 1 + HAS_O
    row = b * G * H + j
    srow = b * 5 * H + j
    i = ld(SAVED + srow, m, COMPUTE)
    f = ld(SAVED + srow + H, m, COMPUTE)
    g = ld(SAVED + srow + 2 * H, m, COMPUTE)
    o = ld(SAVED + srow + 3 * H, m, COMPUTE)
    c = ld(SAVED + srow + 4 * H, m, COMPUTE)
    c_prev = ld(C0 + offs, m, COMPUTE)
    valid = row_valid(VALID, b, m)
    if PROJ:  # DH1 is the gradient of m, already through the driver's blend and projection
        dh = ld(DH1 + offs, m, COMPUTE)
    else:
        dh, dh_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    dc, dc_old = load_blend_grad(DC1, KC, offs, m, valid, HAS_KEEP, COMPUTE)
    # FGR: the gradient reaching the values of i, f, o through the state part a (exact zeros without FGR: a
    # product 0 * c would be NaN where c overflowed)
    da_i = tl.full([BLOCK], 0.0, c.dtype)
    da_f = da_i
    da_o = da_i
    if FGR:
        arow = b * 3 * H + j
        da_i, da_i_old = load_blend_grad(DA1 + arow, KA + arow, 0, m, valid, HAS_KEEP, COMPUTE)
        da_f, da_f_old = load_blend_grad(DA1 + arow + H, KA + arow + H, 0, m, valid, HAS_KEEP, COMPUTE)
        da_o, da_o_old = load_blend_grad(DA1 + arow + 2 * H, KA + arow + 2 * H, 0, m, valid, HAS_KEEP, COMPUTE)
        tl.store(DA0 + arow, da_i_old, mask=m)
        tl.store(DA0 + arow + H, da_f_old, mask=m)
        tl.store(DA0 + arow + 2 * H, da_o_old, mask=m)
    a = c
    if OUT_ACT:
        a = tanh(c)
        dc += dh * o * (1.0 - a * a)
    else:
        dc += dh * o
    if HAS_O:
        dzo = (dh * a + da_o) * o * (1.0 - o)
        if PEEP_O:
            dc += dzo * ld(PEEP + 2 * H + j, m, COMPUTE)
            tl.store(DPEEP + b * 3 * H + 2 * H + j, dzo * c, mask=m)
        tl.store(DXP + row + (HAS_I + HAS_F + 1) * H, dzo, mask=m)
    df = dc * c_prev + da_f
    di = dc * g + da_i
    dg = dc * i
    dc_prev = dc * f
    if IN_ACT:
        dg = dg * (1.0 - g * g)
    tl.store(DXP + row + (HAS_I + HAS_F) * H, dg, mask=m)
    if COUPLED:
        di -= df
    if HAS_F:
        dzf = df * f * (1.0 - f)
        if PEEP_F:
            dc_prev += dzf * ld(PEEP + H + j, m, COMPUTE)
            tl.store(DPEEP + b * 3 * H + H + j, dzf * c_prev, mask=m)
        tl.store(DXP + row + HAS_I * H, dzf, mask=m)
    if HAS_I:
        dzi = di * i * (1.0 - i)
        if PEEP_I:
            dc_prev += dzi * ld(PEEP + j, m, COMPUTE)
            tl.store(DPEEP + b * 3 * H + j, dzi * c_prev, mask=m)
        tl.store(DXP + row, dzi, mask=m)
    if not PROJ:  # (with the projection the driver's blend gives h_{t-1} its share)
        tl.store(DH0 + offs, dh_old, mask=m)
    tl.store(DC0 + offs, dc_prev + dc_old, mask=m)


class LSTMRule:
    """The LSTM family's element-wise step (flags from the cell's options)."""

    n_saved = 5
    hh_is_xp = True

    def __init__(self, cell: LSTMCell) -> None:
        self.cell = cell
        self.n_gates = cell.num_gates
        present = set(cell.gates) | ({"f"} if cell.coupled else set())
        self.record_names = tuple(n for n in ("i", "f", "g", "o") if n in present) + ("c",)
        flags = dict(HAS_I="i" in cell.gates, HAS_F="f" in cell.gates, HAS_O="o" in cell.gates,
                     COUPLED=cell.coupled, IN_ACT=cell.input_activation, OUT_ACT=cell.output_activation,
                     PEEP_I="i" in cell.peepholes, PEEP_F="f" in cell.peepholes, PEEP_O="o" in cell.peepholes,
                     PROJ=bool(cell.proj_size), FGR=cell.full_gate_recurrence)
        self.flags = {k: int(v) for k, v in flags.items()}  # ints: the kernels do offset arithmetic with them
        self.out_proj = "weight_hr" if cell.proj_size else None  # h = W_hr m: the driver's output projection
        if cell.full_gate_recurrence:  # a_{t-1} W_ggᵀ: its blocks i, f, o join the present gates' blocks of hh
            blocks = tuple(cell.gates.index(g) if g in cell.gates else None for g in ("i", "f", "o"))
            self.part_product = PartProduct(2, "weight_gg", blocks)

    def record_blocks(self) -> dict[str, int]:
        return {n: "ifgoc".index(n) for n in self.record_names}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        b = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else None
        peeps = self.cell.peepholes
        if peeps:
            ref = p["weight_ih"]
            consts = torch.stack([p[f"weight_c{g}"] if g in peeps else ref.new_zeros(H) for g in "ifo"])
        else:
            consts = p["weight_ih"].new_empty(0, H)
        return Prepared(b, None, consts.contiguous())

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        grads = {}
        if d_b_x is not None:
            grads["bias_ih"] = grads["bias_hh"] = d_b_x
        for k, g in enumerate("ifo"):
            if g in self.cell.peepholes:
                grads[f"weight_c{g}"] = d_consts[k]
        return grads

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        _lstm_fwd[grid(B, H)](xp, hh, *_hca(olds), *_hca(news), saved, consts, valid,
                              *_hca(keep_ptrs(keeps, olds, len(olds))), B * H, H, **step_flags(saved, keeps),
                              BLOCK=BLOCK, **self.flags)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        _lstm_bwd[grid(B, H)](*_hca(d_news), saved, olds[1], consts, valid, *_hca(keep_ptrs(keeps, olds, len(olds))),
                              d_xp, *_hca(d_olds), d_consts, B * H, H, **step_flags(saved, keeps), BLOCK=BLOCK,
                              **self.flags)


def _hca(parts: list[Tensor]) -> list[Tensor]:
    """The kernels' h, c, a pointers of a state-shaped list; without FGR's part a, c stands in (never touched)."""
    return [parts[0], parts[1], parts[2] if len(parts) > 2 else parts[1]]


register_rule(LSTMCell, LSTMRule)
