"""Autograd Functions around the C++ recurrences: forward saves gates, backward is the hand-written BPTT.

Cells: LSTM (with options), GRU, Elman, MUT1-3, LN-GRU, LN-LSTM.

Each Function covers only the recurrence; the input projection ``xp = x W_ihᵀ + b`` (T, B, G*H) is one
GEMM done by the caller with ordinary autograd, so ``dW_ih = dxpᵀ x``, ``dx = dxp W_ih`` and the bias
gradients (sums of dxp) are single large operations too.  Gradients that autograd hands over as ``None``
(an output that was not used) are passed to the kernels as zeros.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _zeros_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


class LSTMFunction(torch.autograd.Function):
    """(xp, h0, c0, W_hh, peep (3, H), W_hr or empty) -> (out (T, B, R), h_T, c_T)."""

    @staticmethod
    def forward(ctx, ext: ModuleType, lengths: Tensor | None, flags: int, xp: Tensor, h0: Tensor, c0: Tensor,
                w_hh: Tensor, peep: Tensor, w_hr: Tensor):
        out, hT, cT, gates, cs, ms = ext.lstm_forward(xp, h0, c0, w_hh, peep, w_hr, lengths, flags)
        ctx.ext, ctx.lengths, ctx.flags = ext, lengths, flags
        ctx.save_for_backward(h0, c0, w_hh, peep, w_hr, out, gates, cs, ms)
        return out, hT, cT

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, ghT, gcT):
        h0, c0, w_hh, peep, w_hr, out, gates, cs, ms = ctx.saved_tensors
        gout, ghT, gcT = _zeros_if_none(gout, out), _zeros_if_none(ghT, h0), _zeros_if_none(gcT, c0)
        dxp, dh0, dc0, dw_hh, dpeep, dw_hr = ctx.ext.lstm_backward(
            gout, ghT, gcT, h0, c0, w_hh, peep, w_hr, ctx.lengths, ctx.flags, out, gates, cs, ms)
        return None, None, None, dxp, dh0, dc0, dw_hh, dpeep, (dw_hr if w_hr.numel() else None)


class GRUFunction(torch.autograd.Function):
    """(xp, h0, W_hh, b_hn or empty) -> (out (T, B, H), h_T)."""

    @staticmethod
    def forward(ctx, ext: ModuleType, lengths: Tensor | None, reset_after: bool, xp: Tensor, h0: Tensor,
                w_hh: Tensor, b_hn: Tensor):
        out, hT, gates, aux = ext.gru_forward(xp, h0, w_hh, b_hn, lengths, reset_after)
        ctx.ext, ctx.lengths, ctx.reset_after = ext, lengths, reset_after
        ctx.save_for_backward(h0, w_hh, b_hn, out, gates, aux)
        return out, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, ghT):
        h0, w_hh, b_hn, out, gates, aux = ctx.saved_tensors
        gout, ghT = _zeros_if_none(gout, out), _zeros_if_none(ghT, h0)
        dxp, dh0, dw_hh, db_hn = ctx.ext.gru_backward(gout, ghT, h0, w_hh, ctx.lengths, ctx.reset_after, out,
                                                      gates, aux)
        return None, None, None, dxp, dh0, dw_hh, (db_hn if b_hn.numel() else None)


class ElmanFunction(torch.autograd.Function):
    """(xp, h0, W_hh) -> (out (T, B, H), h_T)."""

    @staticmethod
    def forward(ctx, ext: ModuleType, lengths: Tensor | None, relu: bool, xp: Tensor, h0: Tensor, w_hh: Tensor):
        out, hT = ext.elman_forward(xp, h0, w_hh, lengths, relu)
        ctx.ext, ctx.lengths, ctx.relu = ext, lengths, relu
        ctx.save_for_backward(h0, w_hh, out)
        return out, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, ghT):
        h0, w_hh, out = ctx.saved_tensors
        gout, ghT = _zeros_if_none(gout, out), _zeros_if_none(ghT, h0)
        dxp, dh0, dw_hh = ctx.ext.elman_backward(gout, ghT, h0, w_hh, ctx.lengths, ctx.relu, out)
        return None, None, None, dxp, dh0, dw_hh


class MUTFunction(torch.autograd.Function):
    """(xp with every bias folded in, h0, W_hh) -> (out (T, B, H), h_T); mode 1, 2 or 3 = MUT1/2/3."""

    @staticmethod
    def forward(ctx, ext: ModuleType, lengths: Tensor | None, mode: int, xp: Tensor, h0: Tensor, w_hh: Tensor):
        out, hT, gates, us, ths = ext.mut_forward(xp, h0, w_hh, lengths, mode)
        ctx.ext, ctx.lengths, ctx.mode = ext, lengths, mode
        ctx.save_for_backward(h0, w_hh, out, gates, us, ths)
        return out, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, ghT):
        h0, w_hh, out, gates, us, ths = ctx.saved_tensors
        gout, ghT = _zeros_if_none(gout, out), _zeros_if_none(ghT, h0)
        dxp, dh0, dw_hh = ctx.ext.mut_backward(gout, ghT, h0, w_hh, ctx.lengths, ctx.mode, out, gates, us, ths)
        return None, None, None, dxp, dh0, dw_hh


def _grad_or_none(g: Tensor, t: Tensor) -> Tensor | None:
    """The gradient of an optional parameter passed as an empty tensor when absent."""
    return g if t.numel() else None


class LNGRUFunction(torch.autograd.Function):
    """(xp = LN(W_ih x), h0, W_hh, α_hh, β_hh or empty) -> (out (T, B, H), h_T)."""

    @staticmethod
    def forward(ctx, ext: ModuleType, lengths: Tensor | None, eps: float, xp: Tensor, h0: Tensor, w_hh: Tensor,
                ln_w: Tensor, ln_b: Tensor):
        out, hT, gates, ahs, rs = ext.ln_gru_forward(xp, h0, w_hh, ln_w, ln_b, lengths, eps)
        ctx.ext, ctx.lengths = ext, lengths
        ctx.save_for_backward(h0, w_hh, ln_w, ln_b, out, gates, ahs, rs)
        return out, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, ghT):
        h0, w_hh, ln_w, ln_b, out, gates, ahs, rs = ctx.saved_tensors
        gout, ghT = _zeros_if_none(gout, out), _zeros_if_none(ghT, h0)
        dxp, dh0, dw_hh, dln_w, dln_b = ctx.ext.ln_gru_backward(gout, ghT, h0, w_hh, ln_w, ln_b, ctx.lengths, out,
                                                                gates, ahs, rs)
        return None, None, None, dxp, dh0, dw_hh, dln_w, _grad_or_none(dln_b, ln_b)


class LNLSTMFunction(torch.autograd.Function):
    """(xp = LN(W_ih x), h0, c0, W_hh, α_hh, β_hh, α_c, β_c (β empty when absent)) -> (out, h_T, c_T)."""

    @staticmethod
    def forward(ctx, ext: ModuleType, lengths: Tensor | None, eps: float, xp: Tensor, h0: Tensor, c0: Tensor,
                w_hh: Tensor, lnh_w: Tensor, lnh_b: Tensor, lnc_w: Tensor, lnc_b: Tensor):
        out, hT, cT, *saved = ext.ln_lstm_forward(xp, h0, c0, w_hh, lnh_w, lnh_b, lnc_w, lnc_b, lengths, eps)
        ctx.ext, ctx.lengths = ext, lengths
        ctx.save_for_backward(h0, c0, w_hh, lnh_w, lnh_b, lnc_w, lnc_b, out, *saved)
        return out, hT, cT

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, ghT, gcT):
        h0, c0, w_hh, lnh_w, lnh_b, lnc_w, lnc_b, out, *saved = ctx.saved_tensors
        gout, ghT, gcT = _zeros_if_none(gout, out), _zeros_if_none(ghT, h0), _zeros_if_none(gcT, c0)
        dxp, dh0, dc0, dw_hh, da2, db2, da3, db3 = ctx.ext.ln_lstm_backward(
            gout, ghT, gcT, h0, c0, w_hh, lnh_w, lnh_b, lnc_w, lnc_b, ctx.lengths, out, *saved)
        return (None, None, None, dxp, dh0, dc0, dw_hh, da2, _grad_or_none(db2, lnh_b), da3,
                _grad_or_none(db3, lnc_b))


class ScanFunction(torch.autograd.Function):
    """(a, b (T, B, H), h0) -> (out (T, B, H), h_T) of h_t = a_t ⊙ h_{t-1} + b_t (minGRU / minLSTM)."""

    @staticmethod
    def forward(ctx, ext: ModuleType, lengths: Tensor | None, a: Tensor, b: Tensor, h0: Tensor):
        out, hT = ext.scan_forward(a, b, h0, lengths)
        ctx.ext, ctx.lengths = ext, lengths
        ctx.save_for_backward(a, h0, out)
        return out, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, ghT):
        a, h0, out = ctx.saved_tensors
        gout, ghT = _zeros_if_none(gout, out), _zeros_if_none(ghT, h0)
        da, db, dh0 = ctx.ext.scan_backward(gout, ghT, a, out, h0, ctx.lengths)
        return None, None, da, db, dh0


class ClockworkFunction(torch.autograd.Function):
    """(xp with b_hh folded in, h0, n0 (B, 1), masked W_hh, unit periods (H,)) -> (out, h_T, n_T)."""

    @staticmethod
    def forward(ctx, ext: ModuleType, lengths: Tensor | None, periods: Tensor, xp: Tensor, h0: Tensor, n0: Tensor,
                w_hh: Tensor):
        out, hT, nT, acts, upd = ext.clockwork_forward(xp, h0, n0.reshape(-1), w_hh, periods, lengths)
        ctx.ext, ctx.lengths = ext, lengths
        ctx.save_for_backward(h0, w_hh, out, acts, upd)
        return out, hT, nT.view_as(n0)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, ghT, gnT):
        h0, w_hh, out, acts, upd = ctx.saved_tensors
        gout, ghT = _zeros_if_none(gout, out), _zeros_if_none(ghT, h0)
        dxp, dh0, dw_hh = ctx.ext.clockwork_backward(gout, ghT, h0, w_hh, ctx.lengths, out, acts, upd)
        return None, None, None, dxp, dh0, gnT, dw_hh  # n_T = n_0 + steps: identity for n
