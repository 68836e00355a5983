"""Triton rules for MUT1, MUT2 and MUT3 (see cells/mut.py): like the paper GRU, two products per step.

The driver forms the first product (MUT1: the r rows of ``weight_hh``; MUT2: z and r), :func:`_mut_first_fwd`
computes the gates and ``u = r ⊙ hd``, the driver multiplies ``u`` by the h rows, :func:`_mut_fwd` finishes.
The projection is the cell's own (raw or tanh'd x for I == H); ``bias_hh`` stays on the products.  Saved per
step: z, r, n (the recorded gates).  MUT3 is MUT2's kernels with the z rows of ``weight_hh`` reading
``tanh(h)`` (the driver's mapped rows).
"""

from __future__ import annotations

import triton
import triton.language as tl
import torch
from torch import Tensor

from rnnlab.backends.gpu.common import (
    keep_ptrs, lanes, ld, load_blend_grad, row_valid, sigmoid, step_flags, store_blend, tanh,
)
from rnnlab.backends.gpu.driver import BLOCK, Prepared, compute_type, grid
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.mut import MUT1Cell, MUT2Cell, MUT3Cell


@triton.jit
def _mut_first_fwd(XP, HH, HD, U, SAVED, N, H, HAS_HZ: tl.constexpr, COMPUTE: tl.constexpr,
                   BLOCK: tl.constexpr):
    # hh blocks: (r, n) for MUT1, (z, r, n) for MUT2 (HAS_HZ)
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    hrow = b * (2 + HAS_HZ) * H + j
    zt = ld(XP + row, m, COMPUTE)
    if HAS_HZ:
        zt += ld(HH + hrow, m, COMPUTE)
    z = sigmoid(zt)
    r = sigmoid(ld(XP + row + H, m, COMPUTE) + ld(HH + hrow + HAS_HZ * H, m, COMPUTE))
    tl.store(SAVED + row, z, mask=m)
    tl.store(SAVED + row + H, r, mask=m)
    tl.store(U + offs, r * ld(HD + offs, m, COMPUTE), mask=m)


@triton.jit
def _mut_fwd(XP, HH, H0, H1, SAVED, VALID, KH, N, H, HAS_HZ: tl.constexpr, HAS_KEEP: tl.constexpr,
             COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    hrow = b * (2 + HAS_HZ) * H + j
    z = ld(SAVED + row, m, COMPUTE)
    n = tanh(ld(HH + hrow + (1 + HAS_HZ) * H, m, COMPUTE) + ld(XP + row + 2 * H, m, COMPUTE))
    h_prev = ld(H0 + offs, m, COMPUTE)
    h = z * n + (1.0 - z) * h_prev
    tl.store(SAVED + row + 2 * H, n, mask=m)
    valid = row_valid(VALID, b, m)
    store_blend(H1, KH, offs, m, h, h_prev, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _mut_bwd(DH1, SAVED, H0, VALID, KH, DXP, DHH, DH0, N, H, HAS_HZ: tl.constexpr, HAS_KEEP: tl.constexpr,
             COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    hrow = b * (2 + HAS_HZ) * H + j
    z = ld(SAVED + row, m, COMPUTE)
    n = ld(SAVED + row + 2 * H, m, COMPUTE)
    h_prev = ld(H0 + offs, m, COMPUTE)
    valid = row_valid(VALID, b, m)
    dh, dh_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    dzn = dh * z * (1.0 - n * n)
    dzz = dh * (n - h_prev) * z * (1.0 - z)
    tl.store(DXP + row, dzz, mask=m)
    tl.store(DXP + row + 2 * H, dzn, mask=m)
    if HAS_HZ:
        tl.store(DHH + hrow, dzz, mask=m)
    tl.store(DHH + hrow + (1 + HAS_HZ) * H, dzn, mask=m)
    tl.store(DH0 + offs, dh * (1.0 - z) + dh_old, mask=m)


@triton.jit
def _mut_first_bwd(DU, SAVED, HD, DXP, DHH, DHD, N, H, HAS_HZ: tl.constexpr, COMPUTE: tl.constexpr,
                   BLOCK: tl.constexpr):
    # u = r ⊙ hd: the second product's operand gradient goes to the reset gate and to hd
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    r = ld(SAVED + row + H, m, COMPUTE)
    du = ld(DU + offs, m, COMPUTE)
    dzr = du * ld(HD + offs, m, COMPUTE) * r * (1.0 - r)
    tl.store(DXP + row + H, dzr, mask=m)
    tl.store(DHH + b * (2 + HAS_HZ) * H + j + HAS_HZ * H, dzr, mask=m)
    tl.store(DHD + offs, du * r, mask=m)


class MUTRule:
    """MUT1 / MUT2 element-wise steps around the driver's second product."""

    n_gates = 3
    n_saved = 3
    hh_is_xp = False
    own_projection = True
    record_names = ("z", "r", "n")

    def __init__(self, cell) -> None:
        self.has_hz = int("z" in cell._hh_blocks)  # MUT2: z also reads h
        self.second_rows = cell.hidden_size  # the h rows of weight_hh multiply u = r ⊙ hd

    def record_blocks(self) -> dict[str, int]:
        return {"z": 0, "r": 1, "n": 2}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        return Prepared(None, p.get("bias_hh"), p["weight_ih"].new_empty(0, H))

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        return {} if d_b_hh is None else {"bias_hh": d_b_hh}

    def forward_first(self, xp, hh, hd, u, olds, saved, consts, valid, keeps, B, H):
        _mut_first_fwd[grid(B, H)](xp, hh, hd.contiguous(), u, saved, B * H, H, HAS_HZ=self.has_hz,
                                   COMPUTE=compute_type(saved), BLOCK=BLOCK)

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        _mut_fwd[grid(B, H)](xp, hh, olds[0], news[0], saved, valid, *keep_ptrs(keeps, olds, 1), B * H, H,
                             HAS_HZ=self.has_hz, **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        _mut_bwd[grid(B, H)](d_news[0], saved, olds[0], valid, *keep_ptrs(keeps, olds, 1), d_xp, d_hh, d_olds[0], B * H,
                             H, HAS_HZ=self.has_hz, **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward_first(self, d_u, saved, hd, olds, consts, d_xp, d_hh, d_hd, B, H):
        _mut_first_bwd[grid(B, H)](d_u, saved, hd.contiguous(), d_xp, d_hh, d_hd, B * H, H, HAS_HZ=self.has_hz,
                                   COMPUTE=compute_type(saved), BLOCK=BLOCK)


class MUT3Rule(MUTRule):
    """MUT2's element-wise steps; the z rows of ``weight_hh`` multiply ``tanh(h) ⊙ m`` instead of ``h ⊙ m``."""

    def __init__(self, cell) -> None:
        super().__init__(cell)
        self.mapped_rows = cell.hidden_size  # the z block comes first in weight_hh

    @staticmethod
    def operand_map(h: Tensor) -> Tensor:
        return torch.tanh(h)

    @staticmethod
    def operand_map_grad(h: Tensor, d: Tensor) -> Tensor:
        t = torch.tanh(h)
        return d * (1.0 - t * t)


register_rule(MUT1Cell, MUTRule)
register_rule(MUT2Cell, MUTRule)
register_rule(MUT3Cell, MUT3Rule)
