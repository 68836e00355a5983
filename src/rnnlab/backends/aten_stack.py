"""Whole-stack route to the ATen RNN ops torch.nn runs (cuDNN on CUDA) for plain LSTM / GRU / Elman stacks.

``torch.nn.LSTM`` on a GPU calls one ATen op (``_VF.lstm``, i.e. cuDNN) for all layers and directions at once.
When an rnnlab stack computes exactly what that op computes — a plain :class:`~rnnlab.cells.LSTMCell` (all
gates, no peepholes, activations on; ``proj_size`` allowed), a :class:`~rnnlab.cells.GRUCell` with the reset
after the product, or an :class:`~rnnlab.cells.ElmanCell`; no recurrent dropout, zoneout, weight drop,
recording or forced backend — :func:`try_run` hands the whole stack to that op, so results and speed are torch.nn's own.
Lengths go in as a packed sequence (as torch.nn takes them), dropout between layers is the op's own.

The route is taken on CUDA tensors, and on the CPU under bf16 ``torch.autocast("cpu")`` in plain eager mode:
there torch.nn's op applies autocast's own policy (LSTM and Elman compute and return the autocast dtype, in
oneDNN's bf16 kernels for the LSTM; GRU returns float32), so a plain stack gives torch.nn's numbers, dtypes and
speed under autocast too (rnnlab's driver computes in float32: an autocast LSTM training step took 1.60x
nn.LSTM's time in the options bench before this route).  Under torch.compile / export, torch.func transforms and
jit tracing the registered op keeps its float32 policy, and so does fp16 autocast (torch.nn.LSTM raises there on
a CPU without AVX512-FP16: oneDNN has no fp16 LSTM primitive for it).  ``ROUTE_ON_CPU`` makes the route run on
the CPU always (the same op ``nn.LSTM`` runs there), which is how the test suite proves bit-equality with
``torch.nn`` without a GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnlab.backends.base import plain_eager
from rnnlab.cells.elman import ElmanCell
from rnnlab.cells.gru import GRUCell
from rnnlab.cells.lstm import LSTMCell

if TYPE_CHECKING:
    from rnnlab.recurrent import Recurrent

#: tests set this to prove the route against torch.nn on the CPU
ROUTE_ON_CPU = False


def route_applies(x: Tensor) -> bool:
    """The route is considered for input ``x``: CUDA, ``ROUTE_ON_CPU``, or CPU autocast in plain eager mode."""
    if x.is_cuda or ROUTE_ON_CPU:
        return True
    # bf16 only: torch.nn.LSTM under fp16 CPU autocast fails without AVX512-FP16 (no oneDNN fp16 LSTM primitive)
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and plain_eager(x))


def aten_mode(rnn: "Recurrent") -> str | None:
    """``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"`` when the stack equals that torch.nn module, else None."""
    if rnn.recurrent_dropout or rnn.zoneout or rnn.weight_drop or rnn.backend != "auto" or not rnn.bias:
        return None
    cell = rnn.cell
    cls = type(cell)
    if cls.step is LSTMCell.step and cls.project_input is LSTMCell.project_input and isinstance(cell, LSTMCell):
        plain = (cell.gates == ("i", "f", "g", "o") and not cell.peepholes and not cell.coupled
                 and cell.input_activation and cell.output_activation and not cell.full_gate_recurrence)
        return "LSTM" if plain else None
    if cls.step is GRUCell.step and cls.project_input is GRUCell.project_input and isinstance(cell, GRUCell):
        return "GRU" if cell.reset_after else None
    if cls.step is ElmanCell.step and cls.project_input is ElmanCell.project_input and isinstance(cell, ElmanCell):
        return "RNN_TANH" if cell.nonlinearity == "tanh" else "RNN_RELU"
    return None


def flat_weights(rnn: "Recurrent") -> list[Tensor]:
    """The parameters in torch.nn's ``_flat_weights`` order: per layer, per direction, w_ih, w_hh, b_ih, b_hh, w_hr."""
    out: list[Tensor] = []
    for layer in range(rnn.num_layers):
        for direction in range(rnn.num_directions):
            p = rnn.layer_params(layer, direction)
            out += [p[n] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr") if n in p]
    return out


def try_run(rnn: "Recurrent", input: Tensor | PackedSequence, hx, lengths) -> tuple | None:
    """Run the whole stack through the ATen op, or return ``None`` when the route does not apply."""
    x = input.data if isinstance(input, PackedSequence) else input
    if not route_applies(x) or rnn._recording is not None or rnn.check_finite:
        return None
    mode = aten_mode(rnn)
    if mode is None:
        return None
    weights = flat_weights(rnn)
    if any(w.device != x.device or w.dtype != x.dtype for w in weights):
        return None  # the wrapper's own checks give the clear error
    packed = input if isinstance(input, PackedSequence) else None
    unbatched = packed is None and x.dim() == 2
    if packed is None and lengths is not None:
        if unbatched:
            return None
        lens = torch.as_tensor(lengths, dtype=torch.int64).cpu()
        T = x.shape[1] if rnn.batch_first else x.shape[0]
        if lens.dim() != 1 or lens.numel() != (x.shape[0] if rnn.batch_first else x.shape[1]) or \
                bool(((lens < 1) | (lens > T)).any()):
            return None  # the wrapper reports bad lengths
        packed = pack_padded_sequence(x, lens, batch_first=rnn.batch_first, enforce_sorted=False)
    run = _run_packed if packed is not None else _run_padded
    out, h_n = run(rnn, mode, packed if packed is not None else x, hx, weights, unbatched)
    if packed is not None and not isinstance(input, PackedSequence):
        out, _ = pad_packed_sequence(out, batch_first=rnn.batch_first, total_length=T)
    return out, h_n


def _call(mode: str, data: Tensor, batch_sizes: Tensor | None, hx, weights, rnn: "Recurrent"):
    args = (weights, True, rnn.num_layers, rnn.dropout, rnn.training, rnn.bidirectional)
    if mode == "LSTM":
        if batch_sizes is None:
            return torch._VF.lstm(data, hx, *args, rnn.batch_first)
        return torch._VF.lstm(data, batch_sizes, hx, *args)
    fn = {"GRU": torch._VF.gru, "RNN_TANH": torch._VF.rnn_tanh, "RNN_RELU": torch._VF.rnn_relu}[mode]
    if batch_sizes is None:
        return fn(data, hx, *args, rnn.batch_first)
    return fn(data, batch_sizes, hx, *args)


def _initial(rnn: "Recurrent", mode: str, hx, batch: int, ref: Tensor, sorted_indices: Tensor | None):
    """hx in torch.nn's layout (zeros when absent), permuted into the packed batch order."""
    LD = rnn.num_layers * rnn.num_directions
    H, P = rnn.hidden_size, rnn.cell.output_size
    if hx is None:
        h0 = ref.new_zeros(LD, batch, P)
        return (h0, ref.new_zeros(LD, batch, H)) if mode == "LSTM" else h0
    parts = hx if isinstance(hx, tuple) else (hx,)
    if sorted_indices is not None:
        parts = tuple(p.index_select(1, sorted_indices) for p in parts)
    return parts if mode == "LSTM" else parts[0]


def _finish(mode: str, result, unsorted_indices: Tensor | None):
    out, state = result[0], result[1:]
    if unsorted_indices is not None:
        state = tuple(s.index_select(1, unsorted_indices) for s in state)
    return out, (state if mode == "LSTM" else state[0])


def _run_padded(rnn: "Recurrent", mode: str, x: Tensor, hx, weights, unbatched: bool):
    if unbatched:
        x = x.unsqueeze(1)
        if hx is not None:
            hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
    batch = x.shape[0] if rnn.batch_first else x.shape[1]
    out, h_n = _finish(mode, _call(mode, x, None, _initial(rnn, mode, hx, batch, x, None), weights, rnn), None)
    if unbatched:
        out = out.squeeze(1)
        h_n = tuple(h.squeeze(1) for h in h_n) if isinstance(h_n, tuple) else h_n.squeeze(1)
    return out, h_n


def _run_packed(rnn: "Recurrent", mode: str, packed: PackedSequence, hx, weights, unbatched: bool):
    batch = int(packed.batch_sizes[0])
    h0 = _initial(rnn, mode, hx, batch, packed.data, packed.sorted_indices)
    result = _call(mode, packed.data, packed.batch_sizes, h0, weights, rnn)
    out, h_n = _finish(mode, result, packed.unsorted_indices)
    return PackedSequence(out, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), h_n


def flatten(rnn: "Recurrent") -> None:
    """Put a routable stack's CUDA weights in one contiguous cuDNN buffer, as ``torch.nn.RNNBase`` does, so
    cuDNN does not copy them on every call.  A no-op on the CPU and for stacks the route does not take."""
    mode = aten_mode(rnn)
    weights = flat_weights(rnn)
    if mode is None or not weights:
        return
    first = weights[0]
    if not first.is_cuda or not torch.backends.cudnn.is_acceptable(first):
        return
    if any(w.device != first.device or w.dtype != first.dtype or not w.is_contiguous() for w in weights):
        return
    from torch.backends.cudnn import rnn as cudnn_rnn

    per_layer = 4 + (1 if rnn.cell.output_size != rnn.hidden_size else 0)
    with torch.no_grad():
        if torch._use_cudnn_rnn_flatten_weight():
            torch._cudnn_rnn_flatten_weight(weights, per_layer, rnn.input_size, cudnn_rnn.get_cudnn_mode(mode),
                                            rnn.hidden_size, rnn.cell.output_size if per_layer == 5 else 0,
                                            rnn.num_layers, rnn.batch_first, rnn.bidirectional)
