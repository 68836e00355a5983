"""Differentiable pure-PyTorch twins of the fused kernels, on the kernels' own inputs (used for second derivatives).

The C++ backward of each kernel is not itself differentiable.  When a gradient is taken with
``create_graph=True`` (a gradient penalty, ``torch.autograd.gradgradcheck``, nested ``torch.func.grad``), the
op's autograd formula re-runs the layer with the twin below under ``torch.enable_grad`` and differentiates that
instead, so second derivatives are exact rather than silently ``None`` or zero.  Each twin computes the same
recurrence as its kernel (see the comments above each kernel in kernels.cpp) from the same arguments:
``xp`` (T, B, G*H) with the folded biases, the initial state, the recurrent weights, ``lengths`` (B,) int64 or
an empty tensor (row b is active at step t iff t < lengths[b]; inactive rows keep their state, output zero).
"""

from __future__ import annotations

import torch
from torch import Tensor

# LSTM kernel flags (kernels.cpp / backend.py)
_HAS_I, _HAS_F, _HAS_O, _COUPLED, _IN_ACT, _OUT_ACT = 1, 2, 4, 8, 16, 32


def _keep(lengths: Tensor, t: int, new: Tensor, old: Tensor) -> Tensor:
    """The new state where row b is active at step t, else the old one."""
    if not lengths.numel():
        return new
    return torch.where((lengths > t).unsqueeze(1), new, old)


def _out(lengths: Tensor, t: int, h: Tensor) -> Tensor:
    return h if not lengths.numel() else h * (lengths > t).unsqueeze(1).to(h.dtype)


def lstm(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, peep: Tensor, w_hr: Tensor, lengths: Tensor,
         flags: int) -> tuple[Tensor, Tensor, Tensor]:
    H = c0.shape[1]
    offsets, k = {}, 0
    for gate, bit in (("i", _HAS_I), ("f", _HAS_F), ("g", 0), ("o", _HAS_O)):
        if bit == 0 or flags & bit:
            offsets[gate] = k * H
            k += 1
    h, c, outs = h0, c0, []
    for t in range(xp.shape[0]):
        pre = xp[t] + h @ w_hh.t()  # (B, G*H)

        def block(gate: str) -> Tensor:
            return pre[:, offsets[gate]:offsets[gate] + H]

        i = torch.sigmoid(block("i") + peep[0] * c) if flags & _HAS_I else torch.ones_like(c)
        if flags & _COUPLED:
            f = 1 - i
        else:
            f = torch.sigmoid(block("f") + peep[1] * c) if flags & _HAS_F else torch.ones_like(c)
        g = torch.tanh(block("g")) if flags & _IN_ACT else block("g")
        cn = f * c + i * g
        o = torch.sigmoid(block("o") + peep[2] * cn) if flags & _HAS_O else torch.ones_like(c)
        m = o * (torch.tanh(cn) if flags & _OUT_ACT else cn)
        hn = m @ w_hr.t() if w_hr.numel() else m
        h, c = _keep(lengths, t, hn, h), _keep(lengths, t, cn, c)
        outs.append(_out(lengths, t, h))
    return torch.stack(outs), h, c
