"""Triton rule for the Elman RNN (tanh or ReLU): see cells/elman.py.  Saved per step: the pre-activation."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.gpu.common import keep_ptrs, lanes, ld, load_blend_grad, row_valid, step_flags, store_blend, tanh
from rnnlab.backends.gpu.driver import BLOCK, Prepared, grid
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.elman import ElmanCell


@triton.jit
def _elman_fwd(XP, HH, H0, H1, SAVED, VALID, KH, N, H, RELU: tl.constexpr, HAS_KEEP: tl.constexpr,
               COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, _ = lanes(N, H, BLOCK)
    pre = ld(XP + offs, m, COMPUTE) + ld(HH + offs, m, COMPUTE)
    if RELU:
        h = tl.maximum(pre, 0.0)
    else:
        h = tanh(pre)
    tl.store(SAVED + offs, pre, mask=m)
    valid = row_valid(VALID, b, m)
    store_blend(H1, KH, offs, m, h, ld(H0 + offs, m, COMPUTE), valid, HAS_KEEP, COMPUTE)


@triton.jit
def _elman_bwd(DH1, SAVED, VALID, KH, DXP, DH0, N, H, RELU: tl.constexpr, HAS_KEEP: tl.constexpr,
               COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, _ = lanes(N, H, BLOCK)
    pre = ld(SAVED + offs, m, COMPUTE)
    valid = row_valid(VALID, b, m)
    dh, dh_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    if RELU:
        dpre = tl.where(pre > 0.0, dh, 0.0)
    else:
        t = tanh(pre)
        dpre = dh * (1.0 - t * t)
    tl.store(DXP + offs, dpre, mask=m)
    tl.store(DH0 + offs, dh_old, mask=m)


class ElmanRule:
    """Elman element-wise step."""

    n_gates = 1
    n_saved = 1
    hh_is_xp = True
    record_names = ("pre",)

    def __init__(self, cell: ElmanCell) -> None:
        self.relu = int(cell.nonlinearity == "relu")

    def record_blocks(self) -> dict[str, int]:
        return {"pre": 0}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        b = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else None
        return Prepared(b, None, p["weight_ih"].new_empty(0, H))

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        return {} if d_b_x is None else {"bias_ih": d_b_x, "bias_hh": d_b_x}

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        _elman_fwd[grid(B, H)](xp, hh, olds[0], news[0], saved, valid, *keep_ptrs(keeps, olds, 1), B * H, H,
                               RELU=self.relu, **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        _elman_bwd[grid(B, H)](d_news[0], saved, valid, *keep_ptrs(keeps, olds, 1), d_xp, d_olds[0], B * H, H,
                               RELU=self.relu, **step_flags(saved, keeps), BLOCK=BLOCK)


register_rule(ElmanCell, lambda cell: ElmanRule(cell))
