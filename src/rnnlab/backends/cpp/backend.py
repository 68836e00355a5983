"""The ``"cpp"`` backend: fused C++ recurrences (LSTM with its options, GRU both forms, Elman) on the CPU.

``supports`` accepts exactly what the kernels implement: an unmodified :class:`~rnnlab.cells.LSTMCell`
(any of its options except ``full_gate_recurrence``, including the peephole / CIFG / Greff subclasses that
only set options), :class:`~rnnlab.cells.GRUCell`, :class:`~rnnlab.cells.ElmanCell`; float32 or float64
CPU tensors; no recording, recurrent dropout, zoneout, layer-below input or per-step states.  Everything else
goes to the next backend (the reference).  ``RNNLAB_BACKEND=reference`` in the environment switches it off.

Example:
    >>> import torch, rnnlab
    >>> lstm = rnnlab.Recurrent("lstm", 3, 8)           # doctest: +SKIP
    >>> y, (h, c) = lstm(torch.randn(5, 2, 3))          # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.backends.base import LayerCall, LayerResult
from rnnlab.backends.cpp.functions import ElmanFunction, GRUFunction, LSTMFunction
from rnnlab.backends.cpp.loader import kernels_failed, load_kernels
from rnnlab.cells.base import RecurrentCell
from rnnlab.cells.elman import ElmanCell
from rnnlab.cells.gru import GRUCell
from rnnlab.cells.lstm import LSTMCell
from rnnlab.sequence import reverse_within_lengths

# LSTM kernel flags (must match kernels.cpp)
_HAS_I, _HAS_F, _HAS_O, _COUPLED, _IN_ACT, _OUT_ACT = 1, 2, 4, 8, 16, 32
_DTYPES = (torch.float32, torch.float64)


def _same_math(cell: RecurrentCell, base: type[RecurrentCell]) -> bool:
    """The cell is ``base`` or a subclass that only changes options (same step and projection code)."""
    cls = type(cell)
    return (isinstance(cell, base) and cls.step is base.step and cls.project_input is base.project_input
            and cls.sequence is base.sequence)


def kernel_for(cell: RecurrentCell) -> str | None:
    """Which fused kernel computes this cell exactly: ``"lstm"``, ``"gru"``, ``"elman"`` or ``None``."""
    if _same_math(cell, LSTMCell):
        return None if cell.full_gate_recurrence else "lstm"  # type: ignore[attr-defined]
    if _same_math(cell, GRUCell):
        return "gru"
    if _same_math(cell, ElmanCell):
        return "elman"
    return None


def lstm_flags(cell: LSTMCell) -> int:
    flags = 0
    flags |= _HAS_I if "i" in cell.gates else 0
    flags |= _HAS_F if "f" in cell.gates else 0
    flags |= _HAS_O if "o" in cell.gates else 0
    flags |= _COUPLED if cell.coupled else 0
    flags |= _IN_ACT if cell.input_activation else 0
    flags |= _OUT_ACT if cell.output_activation else 0
    return flags


class CppBackend:
    """Fused CPU kernels with hand-written BPTT; built on first use, refuses everything when the build failed."""

    name = "cpp"

    def supports(self, call: LayerCall) -> bool:
        if os.environ.get("RNNLAB_BACKEND", "").strip().lower() == "reference" or kernels_failed():
            return False
        if (call.record or call.want_states or call.rec_mask is not None or call.zoneout != 0.0
                or call.lower is not None):
            return False
        x = call.x
        if x.device.type != "cpu" or x.dtype not in _DTYPES or x.dim() != 3:
            return False
        if any(p.device.type != "cpu" or p.dtype != x.dtype for p in call.params.values()):
            return False
        if any(s.dtype != x.dtype or s.device.type != "cpu" for s in call.state):
            return False
        if kernel_for(call.cell) is None:
            return False
        return load_kernels() is not None  # first use builds the extension (once per machine)

    def run(self, call: LayerCall) -> LayerResult:
        ext = load_kernels()
        if ext is None:  # pragma: no cover - supports() said yes, so the build succeeded
            raise RuntimeError("cpp backend: kernels are not available")
        cell, p, lengths = call.cell, call.params, call.lengths
        x = reverse_within_lengths(call.x, lengths) if call.reverse else call.x
        lens = torch.empty(0, dtype=torch.int64) if lengths is None else lengths.to(torch.int64).contiguous()
        kind = kernel_for(cell)
        if kind == "lstm":
            out, state = self._lstm(ext, cell, p, x, call.state, lens)  # type: ignore[arg-type]
        elif kind == "gru":
            out, state = self._gru(ext, cell, p, x, call.state, lens)  # type: ignore[arg-type]
        else:
            out, state = self._elman(ext, cell, p, x, call.state, lens)  # type: ignore[arg-type]
        if call.reverse:
            out = reverse_within_lengths(out, lengths)
        return LayerResult(out, state)

    # Biases that are simply added to a pre-activation are folded into the single input GEMM.
    @staticmethod
    def _lstm(ext, cell: LSTMCell, p, x: Tensor, state, lens: Tensor):
        b = None
        if "bias_ih" in p:
            b = p["bias_ih"] + p["bias_hh"]
        xp = F.linear(x, p["weight_ih"], b)  # (T, B, G*H)
        H = cell.hidden_size
        rows = [p[f"weight_c{g}"] if g in cell.peepholes else x.new_zeros(H) for g in ("i", "f", "o")]
        peep = torch.stack(rows)  # (3, H)
        w_hr = p["weight_hr"] if cell.proj_size else x.new_empty(0)
        out, h, c = LSTMFunction.apply(ext, lens, lstm_flags(cell), xp, state[0], state[1], p["weight_hh"], peep,
                                       w_hr)
        return out, (h, c)

    @staticmethod
    def _gru(ext, cell: GRUCell, p, x: Tensor, state, lens: Tensor):
        H = cell.hidden_size
        b_hn = x.new_empty(0)
        b = None
        if "bias_ih" in p:
            if cell.reset_after:  # b_hn sits behind the reset gate: r ⊙ (W_hn h + b_hn)
                b = p["bias_ih"] + torch.cat([p["bias_hh"][: 2 * H], x.new_zeros(H)])
                b_hn = p["bias_hh"][2 * H:]
            else:
                b = p["bias_ih"] + p["bias_hh"]
        xp = F.linear(x, p["weight_ih"], b)  # (T, B, 3H)
        out, h = GRUFunction.apply(ext, lens, cell.reset_after, xp, state[0], p["weight_hh"], b_hn)
        return out, (h,)

    @staticmethod
    def _elman(ext, cell: ElmanCell, p, x: Tensor, state, lens: Tensor):
        b = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else None
        xp = F.linear(x, p["weight_ih"], b)  # (T, B, H)
        out, h = ElmanFunction.apply(ext, lens, cell.nonlinearity == "relu", xp, state[0], p["weight_hh"])
        return out, (h,)
