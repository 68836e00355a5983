"""Triton rules for minGRU and minLSTM (see cells/minimal.py): h = a ⊙ h_{t-1} + b, gates from the projection only.

No recurrent matrix (``recurrence = None``: recurrent dropout has nothing to act on, as in the cell).  The
driver's projection ``xp = x W_ihᵀ + b_ih`` holds the blocks z, h (minGRU) or f, i, h (minLSTM); the kernels
form the gates.  minLSTM's normalised gates are formed as the cell's scan forms them,
δ = softplus(-k_f) - softplus(-k_i), f' = σ(-δ) = exp(-softplus(δ)), i' = σ(δ): never 0/0 whatever the
magnitudes.  Saved per step: the recorded values (z, h̃ / f', i', h̃) and what the backward needs besides
(g'(k_h); σ(-k_f), σ(-k_i)).

The rule runs where the cell itself runs its element-wise loop: ``scan="sequential"``, or ``"auto"`` on a CPU
(the interpreter).  ``scan="log"``, and ``"auto"`` on a GPU, are the cell's log-space parallel scan, which
rounds differently: those calls go to the reference.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from rnnlab.backends.base import LayerCall
from rnnlab.backends.gpu.common import (
    keep_ptrs, lanes, ld, load_blend_grad, row_valid, sigmoid, step_flags, store_blend,
)
from rnnlab.backends.gpu.driver import BLOCK, Prepared, grid
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.minimal import MinGRUCell, MinLSTMCell, _MinimalCell, _use_log_scan


@triton.jit
def _g(v):
    # the candidate map: v + 0.5 for v >= 0, σ(v) below (continuous at 0)
    return tl.where(v >= 0, v + 0.5, sigmoid(v))


@triton.jit
def _dg(v):
    # its derivative, the branch taken (torch.where's gradient rule)
    s = sigmoid(v)
    return tl.where(v >= 0, 1.0, s * (1.0 - s))


@triton.jit
def _softplus(u):
    # max(u, 0) + log(1 + exp(-|u|)): finite for finite u, u itself at +inf
    return tl.maximum(u, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(u)))


@triton.jit
def _mingru_fwd(XP, H0, H1, SAVED, VALID, KH, N, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
                BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 2 * H + j
    z = sigmoid(ld(XP + row, m, COMPUTE))
    k = ld(XP + row + H, m, COMPUTE)
    ht = _g(k)
    h_prev = ld(H0 + offs, m, COMPUTE)
    h = (1.0 - z) * h_prev + z * ht
    srow = b * 3 * H + j
    tl.store(SAVED + srow, z, mask=m)
    tl.store(SAVED + srow + H, ht, mask=m)
    tl.store(SAVED + srow + 2 * H, _dg(k), mask=m)
    valid = row_valid(VALID, b, m)
    store_blend(H1, KH, offs, m, h, h_prev, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _mingru_bwd(DH1, SAVED, H0, VALID, KH, DXP, DH0, N, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
                BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    srow = b * 3 * H + j
    z = ld(SAVED + srow, m, COMPUTE)
    ht = ld(SAVED + srow + H, m, COMPUTE)
    dg = ld(SAVED + srow + 2 * H, m, COMPUTE)
    h_prev = ld(H0 + offs, m, COMPUTE)
    valid = row_valid(VALID, b, m)
    d, d_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    row = b * 2 * H + j
    tl.store(DXP + row, d * (ht - h_prev) * z * (1.0 - z), mask=m)
    tl.store(DXP + row + H, d * z * dg, mask=m)
    tl.store(DH0 + offs, d * (1.0 - z) + d_old, mask=m)


@triton.jit
def _minlstm_fwd(XP, H0, H1, SAVED, VALID, KH, N, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    row = b * 3 * H + j
    kf = ld(XP + row, m, COMPUTE)
    ki = ld(XP + row + H, m, COMPUTE)
    k = ld(XP + row + 2 * H, m, COMPUTE)
    delta = _softplus(-kf) - _softplus(-ki)  # log(i / f)
    fn = tl.exp(-_softplus(delta))
    i_n = tl.exp(-_softplus(-delta))
    ht = _g(k)
    h_prev = ld(H0 + offs, m, COMPUTE)
    h = fn * h_prev + i_n * ht
    srow = b * 6 * H + j
    tl.store(SAVED + srow, fn, mask=m)
    tl.store(SAVED + srow + H, i_n, mask=m)
    tl.store(SAVED + srow + 2 * H, ht, mask=m)
    tl.store(SAVED + srow + 3 * H, sigmoid(-kf), mask=m)
    tl.store(SAVED + srow + 4 * H, sigmoid(-ki), mask=m)
    tl.store(SAVED + srow + 5 * H, _dg(k), mask=m)
    valid = row_valid(VALID, b, m)
    store_blend(H1, KH, offs, m, h, h_prev, valid, HAS_KEEP, COMPUTE)


@triton.jit
def _minlstm_bwd(DH1, SAVED, H0, VALID, KH, DXP, DH0, N, H, HAS_KEEP: tl.constexpr, COMPUTE: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs, m, b, j = lanes(N, H, BLOCK)
    srow = b * 6 * H + j
    fn = ld(SAVED + srow, m, COMPUTE)
    i_n = ld(SAVED + srow + H, m, COMPUTE)
    ht = ld(SAVED + srow + 2 * H, m, COMPUTE)
    s_f = ld(SAVED + srow + 3 * H, m, COMPUTE)
    s_i = ld(SAVED + srow + 4 * H, m, COMPUTE)
    dg = ld(SAVED + srow + 5 * H, m, COMPUTE)
    h_prev = ld(H0 + offs, m, COMPUTE)
    valid = row_valid(VALID, b, m)
    d, d_old = load_blend_grad(DH1, KH, offs, m, valid, HAS_KEEP, COMPUTE)
    # f' = σ(-δ), i' = σ(δ): df'/dδ = -f' i', di'/dδ = i' f'; dδ/dk_f = -σ(-k_f), dδ/dk_i = σ(-k_i)
    ddelta = d * fn * i_n * (ht - h_prev)
    row = b * 3 * H + j
    tl.store(DXP + row, -ddelta * s_f, mask=m)
    tl.store(DXP + row + H, ddelta * s_i, mask=m)
    tl.store(DXP + row + 2 * H, d * i_n * dg, mask=m)
    tl.store(DH0 + offs, d * fn + d_old, mask=m)


class _MinimalRule:
    """The shared part of both rules: no recurrence, the cell's single bias on the projection."""

    hh_is_xp = False
    recurrence = None

    def __init__(self, cell: _MinimalCell) -> None:
        self.cell = cell

    def accepts(self, call: LayerCall) -> bool:
        """Only where the cell's own sequence runs the element-wise loop (the log scan rounds differently)."""
        return not _use_log_scan(self.cell.scan, call.x)

    def record_blocks(self) -> dict[str, int]:
        return {n: k for k, n in enumerate(self.record_names)}

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        return Prepared(p.get("bias_ih"), None, p["weight_ih"].new_empty(0, H))

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        return {} if d_b_x is None else {"bias_ih": d_b_x}

    def forward(self, xp, hh, olds, news, saved, consts, valid, keeps, B, H):
        self._fwd[grid(B, H)](xp, olds[0], news[0], saved, valid, *keep_ptrs(keeps, olds, 1), B * H, H,
                              **step_flags(saved, keeps), BLOCK=BLOCK)

    def backward(self, d_news, saved, olds, consts, valid, keeps, d_xp, d_hh, d_olds, d_consts, B, H):
        self._bwd[grid(B, H)](d_news[0], saved, olds[0], valid, *keep_ptrs(keeps, olds, 1), d_xp, d_olds[0], B * H, H,
                              **step_flags(saved, keeps), BLOCK=BLOCK)


class MinGRURule(_MinimalRule):
    """minGRU: h = (1 - z) h_{t-1} + z g(k_h)."""

    n_gates = 2
    n_saved = 3
    record_names = ("z", "h_tilde")
    _fwd, _bwd = staticmethod(_mingru_fwd), staticmethod(_mingru_bwd)


class MinLSTMRule(_MinimalRule):
    """minLSTM: h = f' h_{t-1} + i' g(k_h)."""

    n_gates = 3
    n_saved = 6
    record_names = ("f", "i", "h_tilde")
    _fwd, _bwd = staticmethod(_minlstm_fwd), staticmethod(_minlstm_bwd)


register_rule(MinGRUCell, MinGRURule)
register_rule(MinLSTMCell, MinLSTMRule)
