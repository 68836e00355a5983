"""Triton rule for the GRU with the reset before the recurrent product (the paper's form): see cells/gru.py.

Two products per step: the driver forms ``[h_r, h_z] = hd W_{r,z}ᵀ``, :func:`_first_fwd` computes r, z and the
operand ``u = r ⊙ hd`` of the second product ``W_hn u``, :func:`_gru_paper_fwd` finishes n and h.  Every bias
adds plainly to a pre-activation, so ``bias_ih + bias_hh`` is folded into the input projection.  Saved per
step: r, z, n (the recorded gates).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.gpu.common import (
    keep_ptrs, lanes, ld, load_blend_grad, row_valid, sigmoid, step_flags, store_blend, tanh,
)
from rnnlab.backends.gpu.driver import BLOCK, Prepared, compute_type, grid


@triton.jit
def _first_fwd(XP, HH, HD, U, SAVED, N, H, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    r = sigmoid(ld(XP + row, m, COMPUTE) + ld(HH + row, m, COMPUTE))
    z = sigmoid(ld(XP + row + H, m, COMPUTE) + ld(HH + row + H, m, COMPUTE))
    srow = b * 3 * H + j
    tl.store(SAVED + srow, r, mask=m)
    tl.store(SAVED + srow + H, z, mask=m)
    tl.store(U + offs, r * ld(HD + offs, m, COMPUTE), mask=m)


@triton.jit
def _gru_paper_fwd(XP, HH, H0, H1, SAVED, VALID, KH, N, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    z = ld(SAVED + row + H, m, COMPUTE)
    n = tanh(ld(XP + row + 2 * H, m, COMPUTE) + ld(HH + row + 2 * H, m, COMPUTE))
    h_prev = ld(H0 + offs, m, COMPUTE)
    h = (1.0 - z) * n + z * h_prev
    tl.store(SAVED + row + 2 * H, n, mask=m)
    valid = row_valid(VALID, b, m)
    store_blend(H1, KH, offs, m, h, h_prev, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _gru_paper_bwd(DH1, SAVED, H0, VALID, KH, DXP, DH0, N, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    z = ld(SAVED + row + H, m, COMPUTE)
    n = ld(SAVED + row + 2 * H, m, COMPUTE)
    h_prev = ld(H0 + offs, m, COMPUTE)
    valid = row_valid(VALID, b, m)
    dh, dh_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    tl.store(DXP + row + H, dh * (h_prev - n) * z * (1.0 - z), mask=m)
    tl.store(DXP + row + 2 * H, dh * (1.0 - z) * (1.0 - n * n), mask=m)
    tl.store(DH0 + offs, dh * z + dh_old, mask=m)


@triton.jit
def _first_bwd(DU, SAVED, HD, DXP, DHD, N, H, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    # u = r ⊙ hd: the gradient of the second product's operand goes to the reset gate and to hd
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    r = ld(SAVED + row, m, COMPUTE)
    du = ld(DU + offs, m, COMPUTE)
    tl.store(DXP + row, du * ld(HD + offs, m, COMPUTE) * r * (1.0 - r), mask=m)
    tl.store(DHD + offs, du * r, mask=m)


class GRUPaperRule:
    """GRU (reset before the product) element-wise steps, around the driver's second product."""

    n_gates = 3
    n_saved = 3
    hh_is_xp = True
    record_names = ("r", "z", "n")

    def __init__(self, H: int) -> None:
        self.second_rows = H  # the n rows of weight_hh multiply u = r ⊙ hd

    def record_blocks(self) -> dict[str, int]:
        return {"r": 0, "z": 1, "n": 2}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        b = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else None
        return Prepared(b, None, p["weight_ih"].new_empty(0, H))

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        return {} if d_b_x is None else {"bias_ih": d_b_x, "bias_hh": d_b_x}

    def forward_first(self, xp, hh, hd, u, olds, saved, consts, valid, keeps, B, H):
        _first_fwd[grid(B, H)](xp, hh, hd.contiguous(), u, saved, B * H, H, COMPUTE=compute_type(saved),
                               BLOCK=BLOCK)

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        _gru_paper_fwd[grid(B, H)](xp, hh, olds[0], news[0], saved, valid, *keep_ptrs(keeps, olds, 1), B * H, H,
                                   **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        _gru_paper_bwd[grid(B, H)](d_news[0], saved, olds[0], valid, *keep_ptrs(keeps, olds, 1), d_xp, d_olds[0], B * H,
                                   H, **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward_first(self, d_u, saved, hd, olds, consts, d_xp, d_hh, d_hd, B, H):
        _first_bwd[grid(B, H)](d_u, saved, hd.contiguous(), d_xp, d_hd, B * H, H, COMPUTE=compute_type(saved),
                               BLOCK=BLOCK)
