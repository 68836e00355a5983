"""Triton rules for the depth-gated LSTM (see cells/depth_gated.py): a peephole LSTM on the first layer, the
depth gate reading the layer below's memory cell above it.

First layer (no layer below): the LSTM family's kernels with the paper's peepholes, on the i, f, g, o rows of
``weight_ih`` (the rule's own projection, so the depth rows get their zero gradient through autograd).
Upper layers (:attr:`DepthGatedRule.upper`): ``xp`` (B, 5H) holds i, f, g, o, d; ``hh`` (B, 4H) the
recurrent product with ``b_hh``; the kernel reads ``c^{l-1}_t`` from the layer below's state sequence
(``lower_part``, which the driver returns with its gradient under ``want_states``) and writes its gradient.
Saved per step: i, f, g, o, c (and d above the first layer), which are also the recorded values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.nn import functional as F

from rnnlab.backends.gpu.common import (
    keep_ptrs, lanes, ld, load_blend_grad, row_valid, sigmoid, step_flags, store_blend, tanh,
)
from rnnlab.backends.gpu.driver import BLOCK, Prepared, grid
from rnnlab.backends.gpu.lstm import LSTMRule
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.depth_gated import DepthGatedLSTMCell


@triton.jit
def _depth_fwd(XP, HH, H0, C0, H1, C1, SAVED, E, VALID, KH, KC, LOW, N, H, HAS_KEEP: tl.constexpr,
               COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    x_row, h_row = b * 5 * H + j, b * 4 * H + j
    c_prev = ld(C0 + offs, m, COMPUTE)
    c_low = ld(LOW + offs, m, COMPUTE)
    i = sigmoid(ld(XP + x_row, m, COMPUTE) + ld(HH + h_row, m, COMPUTE) + ld(E + j, m, COMPUTE) * c_prev)
    f = sigmoid(ld(XP + x_row + H, m, COMPUTE) + ld(HH + h_row + H, m, COMPUTE) + ld(E + H + j, m, COMPUTE) * c_prev)
    g = tanh(ld(XP + x_row + 2 * H, m, COMPUTE) + ld(HH + h_row + 2 * H, m, COMPUTE))
    d = sigmoid(ld(XP + x_row + 4 * H, m, COMPUTE) + ld(E + 3 * H + j, m, COMPUTE) * c_prev
                + ld(E + 4 * H + j, m, COMPUTE) * c_low)
    c = f * c_prev + i * g + d * c_low
    o = sigmoid(ld(XP + x_row + 3 * H, m, COMPUTE) + ld(HH + h_row + 3 * H, m, COMPUTE)
                + ld(E + 2 * H + j, m, COMPUTE) * c)
    h = o * tanh(c)
    srow = b * 6 * H + j
    tl.store(SAVED + srow, i, mask=m)
    tl.store(SAVED + srow + H, f, mask=m)
    tl.store(SAVED + srow + 2 * H, g, mask=m)
    tl.store(SAVED + srow + 3 * H, o, mask=m)
    tl.store(SAVED + srow + 4 * H, c, mask=m)
    tl.store(SAVED + srow + 5 * H, d, mask=m)
    valid = row_valid(VALID, b, m)
    store_blend(H1, KH, offs, m, h, ld(H0 + offs, m, COMPUTE), valid, HAS_KEEP, COMPUTE)
    store_blend(C1, KC, offs, m, c, c_prev, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _depth_bwd(DH1, DC1, SAVED, C0, E, VALID, KH, KC, LOW, DXP, DHH, DH0, DC0, DE, DLOW, N, H,
               HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    srow = b * 6 * H + j
    i = ld(SAVED + srow, m, COMPUTE)
    f = ld(SAVED + srow + H, m, COMPUTE)
    g = ld(SAVED + srow + 2 * H, m, COMPUTE)
    o = ld(SAVED + srow + 3 * H, m, COMPUTE)
    c = ld(SAVED + srow + 4 * H, m, COMPUTE)
    d = ld(SAVED + srow + 5 * H, m, COMPUTE)
    c_prev = ld(C0 + offs, m, COMPUTE)
    c_low = ld(LOW + offs, m, COMPUTE)
    valid = row_valid(VALID, b, m)
    dh, dh_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    dc, dc_old = load_blend_grad(DC1, KC, offs, m, valid, HAS_KEEP, COMPUTE)
    a = tanh(c)
    dzo = dh * a * o * (1.0 - o)
    dc += dh * o * (1.0 - a * a) + dzo * ld(E + 2 * H + j, m, COMPUTE)
    dzi = dc * g * i * (1.0 - i)
    dzf = dc * c_prev * f * (1.0 - f)
    dzg = dc * i * (1.0 - g * g)
    dzd = dc * c_low * d * (1.0 - d)
    x_row, h_row = b * 5 * H + j, b * 4 * H + j
    tl.store(DXP + x_row, dzi, mask=m)
    tl.store(DXP + x_row + H, dzf, mask=m)
    tl.store(DXP + x_row + 2 * H, dzg, mask=m)
    tl.store(DXP + x_row + 3 * H, dzo, mask=m)
    tl.store(DXP + x_row + 4 * H, dzd, mask=m)
    tl.store(DHH + h_row, dzi, mask=m)
    tl.store(DHH + h_row + H, dzf, mask=m)
    tl.store(DHH + h_row + 2 * H, dzg, mask=m)
    tl.store(DHH + h_row + 3 * H, dzo, mask=m)
    e_row = b * 5 * H + j  # per-row peephole / depth-diagonal gradients, summed over rows by the driver
    tl.store(DE + e_row, dzi * c_prev, mask=m)
    tl.store(DE + e_row + H, dzf * c_prev, mask=m)
    tl.store(DE + e_row + 2 * H, dzo * c, mask=m)
    tl.store(DE + e_row + 3 * H, dzd * c_prev, mask=m)
    tl.store(DE + e_row + 4 * H, dzd * c_low, mask=m)
    tl.store(DLOW + offs, dc * d + dzd * ld(E + 4 * H + j, m, COMPUTE), mask=m)
    dc_prev = dc * f + dzi * ld(E + j, m, COMPUTE) + dzf * ld(E + H + j, m, COMPUTE) \
        + dzd * ld(E + 3 * H + j, m, COMPUTE)
    tl.store(DH0 + offs, dh_old, mask=m)
    tl.store(DC0 + offs, dc_prev + dc_old, mask=m)


def _peepholes(cell: DepthGatedLSTMCell, p: dict[str, Tensor], H: int) -> list[Tensor]:
    zero = p["weight_ih"].new_zeros(H)
    return [p[f"weight_c{g}"] if cell.peepholes else zero for g in "ifo"]


class DepthGatedUpperRule:
    """The depth-gated step above the first layer."""

    n_gates = 4
    n_saved = 6
    hh_is_xp = False  # xp has the depth block d, which the recurrent product lacks
    own_projection = True
    lower_part = 1  # c of the layer below (its state is (h, c))
    record_names = ("i", "f", "g", "o", "c", "d")

    def __init__(self, cell: DepthGatedLSTMCell) -> None:
        self.cell = cell

    def record_blocks(self) -> dict[str, int]:
        return {n: k for k, n in enumerate(self.record_names)}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        consts = torch.stack([*_peepholes(self.cell, p, H), p["weight_cd"], p["weight_ld"]])  # (5, H)
        return Prepared(None, p.get("bias_hh"), consts.contiguous())

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        grads = {"weight_cd": d_consts[3], "weight_ld": d_consts[4]}
        if self.cell.peepholes:
            grads.update({f"weight_c{g}": d_consts[k] for k, g in enumerate("ifo")})
        if d_b_hh is not None:
            grads["bias_hh"] = d_b_hh
        return grads

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H, lower):
        _depth_fwd[grid(B, H)](xp, hh, olds[0], olds[1], news[0], news[1], saved, consts, valid,
                               *keep_ptrs(keeps, olds, 2), lower, B * H, H, **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H, lower,
                 d_lower):
        _depth_bwd[grid(B, H)](d_news[0], d_news[1], saved, olds[1], consts, valid, *keep_ptrs(keeps, olds, 2), lower,
                               d_xp, d_hh, d_olds[0], d_olds[1], d_consts, d_lower, B * H, H,
                               **step_flags(saved, keeps), BLOCK=BLOCK)


class DepthGatedRule(LSTMRule):
    """The first layer: a peephole LSTM (or a plain one with ``peepholes=False``) on the i, f, g, o rows, with
    ``b_hh`` in the recurrent product as the cell's step has it; :attr:`upper` serves the layers above."""

    own_projection = True

    def __init__(self, cell: DepthGatedLSTMCell) -> None:
        self.cell = cell
        self.n_gates = 4
        self.record_names = ("i", "f", "g", "o", "c")
        peep = int(cell.peepholes)
        self.flags = dict(HAS_I=1, HAS_F=1, HAS_O=1, COUPLED=0, IN_ACT=1, OUT_ACT=1, PEEP_I=peep, PEEP_F=peep,
                          PEEP_O=peep, PROJ=0, FGR=0)
        self.out_proj = None
        self.upper = DepthGatedUpperRule(cell)

    def project_input(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        H = self.cell.hidden_size
        b = p.get("bias_ih")
        return F.linear(x, p["weight_ih"][:4 * H], None if b is None else b[:4 * H])  # (T, B, 4H)

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        consts = torch.stack(_peepholes(self.cell, p, H)) if self.cell.peepholes else p["weight_ih"].new_empty(0, H)
        return Prepared(None, p.get("bias_hh"), consts.contiguous())

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        grads = {} if d_b_hh is None else {"bias_hh": d_b_hh}
        if self.cell.peepholes:
            grads.update({f"weight_c{g}": d_consts[k] for k, g in enumerate("ifo")})
        return grads


register_rule(DepthGatedLSTMCell, DepthGatedRule)
