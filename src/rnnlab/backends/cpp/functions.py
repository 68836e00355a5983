"""Autograd Functions around the C++ recurrences: forward saves gates, backward is the hand-written BPTT.

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
