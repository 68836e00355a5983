"""The ``"cpp"`` backend: fused C++ recurrences on the CPU for every registered cell.

``supports`` accepts exactly what the fused code implements: every cell that declares a generic driver rule
(driver.h, generic_registry.py): the LSTM family (every option: ``proj_size`` through the driver's output
projection, Greff's full gate recurrence through its product from another state part), GRU in both forms,
Elman, MUT1-3, the layer-normalised LSTM and GRU, the clockwork RNN, minGRU / minLSTM (the sequential scan),
IndRNN, SRU, sLSTM, the depth-gated LSTM (its upper layers read the layer below's c through their own rule);
with recording, recurrent dropout, zoneout and every step's state (what a layer above reads); on float32 /
float64 CPU tensors, and bfloat16 / float16 ones (a model stored in reduced precision): their states and
element-wise rules are float32, states cast up per call and the results cast back, so the recurrence
accumulates in float32 as under autocast (the driver's saved states are float32).  A bf16 model on a CPU with
native bf16 GEMMs keeps its input projection and the driver's products in bf16 (float32 accumulation,
generic_ops.bf16_storage_products); otherwise, and for fp16, weights and inputs are cast up too.  Everything
else (minGRU/minLSTM's log-space scan, subclasses that change the math) goes to the next backend (the
reference).  ``RNNLAB_BACKEND=reference`` in the
environment switches it off.

Per-step products of fp32 weights go to oneDNN (weights reordered once per call) when large, to ATen/MKL
otherwise, to inline loops when tiny; the measurements behind that choice are in gemm.h.
``load_generic().set_gemm_backend("aten")`` switches oneDNN off (benchmarks compare both in one process).

The plain LSTM (default options, fp32, bias, no lengths) runs ``torch.ops.aten.mkldnn_rnn_layer`` instead, the
oneDNN layer ``torch.nn.LSTM`` runs (results equal nn.LSTM's; torch's autograd formula gives the gradients):
for inference when T*B >= 256, for training when also B >= 16 and H <= 512.  Measured (interleaved medians,
same process, time / nn.LSTM, our kernel vs that op, both through this wrapper):
inference, 1 thread: (T, B, H) = (1, 1, 32) 0.80 vs 1.16; (50, 1, 64) 0.93 vs 1.06; (30, 32, 256) 1.16 vs 0.99;
(1000, 1, 64) 1.18 vs 1.06; (100, 16, 128) 1.18 vs 1.04; (200, 16, 256) 1.19 vs 1.01; (100, 32, 512) 0.91 vs
1.00; (50, 64, 1024) 1.18 vs 1.00.
training, 2 threads: (30, 32, 256) 1.16 vs 1.05; (100, 16, 128) 1.29 vs 1.03; (50, 64, 256) 1.12 vs 1.07;
(200, 16, 256) 1.08 vs 1.03; (30, 32, 512) 1.10 vs 1.01; (20, 64, 1024) 1.00 vs 0.99.  At B = 1 our kernel
trains faster (1000, 1, 64: 0.66-0.92x nn.LSTM), so it keeps those.  Since the LSTM rule's backward vectorises
(cells/lstm.h), the driver also trains faster at large H, 2 threads, driver vs that op: (20, 32, 1024) 0.78-0.81
vs 1.01; (30, 16, 1024) 0.76 vs 0.99; (50, 64, 1024) 0.95 vs 1.01; (20, 64, 768) 0.90 vs 1.00; (50, 128, 512)
0.98-1.01 vs 1.00; (100, 64, 256) 1.13 vs 0.98; (50, 64, 256) 1.18 vs 1.01; so training above H = 512 keeps
the driver.
``ONEDNN_LSTM_INFERENCE`` / ``ONEDNN_LSTM_TRAINING`` switch this off (benchmarks compare both in one process).

Example:
    >>> import torch, rnnlab
    >>> lstm = rnnlab.Recurrent("lstm", 3, 8)           # doctest: +SKIP
    >>> y, (h, c) = lstm(torch.randn(5, 2, 3))          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
from torch import Tensor

from rnnlab.backends.base import LayerCall, LayerResult, needs_grad, plain_eager
from rnnlab.backends.cpp import generic_ops, generic_registry  # cells on the generic driver (driver.h)
from rnnlab.backends.cpp.generic_loader import generic_failed
from rnnlab.backends.threads import CallThreads, step_work
from rnnlab.cells.base import RecurrentCell
from rnnlab.cells.lstm import LSTMCell
from rnnlab.sequence import reverse_within_lengths

_DTYPES = (torch.float32, torch.float64)
_REDUCED = generic_registry.REDUCED_DTYPES  # storage dtypes computed in float32 (module docstring)
_MKLDNN_LSTM_MODE = 2  # ATen's RNN mode numbering (cuDNN's): 0 relu, 1 tanh, 2 LSTM, 3 GRU
#: plain fp32 LSTM without lengths, T*B >= _ONEDNN_MIN_TB (training: B >= _ONEDNN_MIN_B_TRAIN too), goes to
#: ``torch.ops.aten.mkldnn_rnn_layer`` (what nn.LSTM runs; measurements in the module docstring)
ONEDNN_LSTM_INFERENCE = ONEDNN_LSTM_TRAINING = True
_HAS_ONEDNN_LSTM = hasattr(torch.ops.aten, "mkldnn_rnn_layer") and torch.backends.mkldnn.is_available()
_ONEDNN_MIN_B_TRAIN = 16
_ONEDNN_MAX_H_TRAIN = 512
_ONEDNN_MIN_TB = 256  # below it the primitive's per-call setup costs more than our kernel (B=1, T=50: 1.13x)
_NO_LENGTHS = torch.empty(0, dtype=torch.int64)  # "every sequence is full"; read-only, shared by all calls


def _cast_all(parts: tuple[Tensor, ...], dtype: torch.dtype) -> tuple[Tensor, ...]:
    return tuple(t.to(dtype) for t in parts)


def _in_float32(call: LayerCall, inputs: bool = True) -> LayerCall:
    """The call with every floating tensor cast up to float32 (a reduced-precision model's layer); with
    ``inputs`` False the input, the parameters and the layer below stay (bf16 products: generic_registry.run)."""
    up = functools.partial(_cast_all, dtype=torch.float32)
    rest = dict(x=call.x.float(), params={k: v.float() for k, v in call.params.items()},
                lower=None if call.lower is None else up(call.lower)) if inputs else {}
    return dataclasses.replace(call, state=up(call.state),
                               rec_mask=None if call.rec_mask is None else call.rec_mask.float(), **rest)


def _onednn_ok(x: Tensor) -> bool:
    """``aten.mkldnn_rnn_layer`` only in plain eager mode.  Under torch.compile / export (no fake-tensor rule for
    its packed weights in every version), torch.func transforms (no batching rule), autocast (bf16 weights
    would change the numbers) and jit tracing the registered op (generic_ops.py) runs instead."""
    return plain_eager(x) and not torch.is_autocast_enabled("cpu")


def _same_math(cell: RecurrentCell, base: type[RecurrentCell]) -> bool:
    """The cell is ``base`` or a subclass that only changes options (same step and projection code)."""
    cls = type(cell)
    return (isinstance(cell, base) and cls.step is base.step and cls.project_input is base.project_input
            and cls.sequence is base.sequence)


def kernel_for(cell: RecurrentCell) -> str | None:
    """Which fused kernel computes this cell exactly: ``"driver:<rule>"`` for a cell on the generic driver
    (generic_registry.py: LSTM and its variants, GRU, IndRNN, SRU, sLSTM, ...), else ``None``."""
    rule = generic_registry.driver_for(cell)
    return None if rule is None else "driver:" + rule


def _plain_lstm(cell: LSTMCell) -> bool:
    """torch.nn.LSTM's cell: all four gates, both activations, no coupling, peepholes, projection or FGR."""
    return (cell.gates == ("i", "f", "g", "o") and not cell.coupled and cell.input_activation
            and cell.output_activation and not cell.peepholes and not cell.proj_size
            and not cell.full_gate_recurrence)


class CppBackend:
    """Fused CPU recurrences (the generic driver, hand-written BPTT per rule); built on first use, refuses
    everything when the build failed."""

    name = "cpp"

    def supports(self, call: LayerCall) -> bool:
        # Called on every forward: plain loops, no generators (this is per-call overhead at small sizes).
        if os.environ.get("RNNLAB_BACKEND", "").strip().lower() == "reference" or generic_failed():
            return False
        x = call.x
        dtype = x.dtype
        if x.device.type != "cpu" or (dtype not in _DTYPES and dtype not in _REDUCED) or x.dim() != 3:
            return False
        for p in call.params.values():
            if p.dtype != dtype or p.device.type != "cpu":
                return False
        for s in call.state:
            if s.dtype != dtype or s.device.type != "cpu":
                return False
        if kernel_for(call.cell) is None:
            return False
        return generic_registry.supports(call) or self._onednn_layer(call) is not None

    def run(self, call: LayerCall) -> LayerResult:
        # small calls on one intra-op thread, forward and backward (threads.py: measured up to 25x faster under load)
        with CallThreads(step_work(call.params, call.x.shape[1])) as threads:
            result = self._run(call)
            threads.cover_backward((result.output, *result.state))
        return result

    def _run(self, call: LayerCall, bf16_products: bool = False) -> LayerResult:
        store = call.x.dtype
        if store in _REDUCED and not bf16_products:
            # computed in float32, returned in the storage dtype (autograd casts the grads); a bf16 model on a CPU
            # with native bf16 GEMMs keeps its projection and the driver's products in bf16
            bf16 = store == torch.bfloat16 and generic_ops.bf16_storage_products()
            res = self._run(_in_float32(call, inputs=not bf16), bf16_products=bf16)
            cast = functools.partial(_cast_all, dtype=store)
            states = None if res.states is None else cast(res.states)
            return LayerResult(res.output.to(store), cast(res.state), states,
                               {k: v.to(store) for k, v in res.records.items()})
        cell, p, lengths = call.cell, call.params, call.lengths
        x = reverse_within_lengths(call.x, lengths) if call.reverse else call.x
        lens = _NO_LENGTHS if lengths is None else lengths.to(torch.int64).contiguous()
        records: dict[str, Tensor] = {}
        states = None
        onednn = self._onednn_layer(call)
        if onednn is not None:
            out, state = onednn(x)
        else:  # a cell of the generic driver (generic_registry.py); supports() said yes
            lower = call.lower
            if lower is not None and call.reverse:
                lower = tuple(reverse_within_lengths(s, lengths) for s in lower)
            out, state, states, records = generic_registry.run(cell, p, x, call.state, lens, call.rec_mask,
                                                               call.zoneout, call.training, call.record, lower,
                                                               call.want_states, bf16_products)
        if call.reverse:
            out = reverse_within_lengths(out, lengths)
            records = {k: reverse_within_lengths(v, lengths) for k, v in records.items()}
            if states is not None:
                states = tuple(reverse_within_lengths(s, lengths) for s in states)
        return LayerResult(out, state, states, records)

    @staticmethod
    def _onednn_layer(call: LayerCall):
        """For the plain fp32 LSTM at sizes where it was measured faster (module docstring): a function
        x -> (out, (h, c)) running ``aten.mkldnn_rnn_layer``, what torch.nn.LSTM runs (its autograd formula
        gives the gradients); else ``None``."""
        cell, p, x = call.cell, call.params, call.x
        if call.record or call.rec_mask is not None or call.zoneout != 0.0 or call.want_states:
            return None  # options only the generic driver has
        if not (_HAS_ONEDNN_LSTM and _same_math(cell, LSTMCell) and x.dtype == torch.float32 and _onednn_ok(x)
                and x.shape[0] * x.shape[1] >= _ONEDNN_MIN_TB and call.lengths is None and "bias_ih" in p
                and _plain_lstm(cell) and torch._C._get_mkldnn_enabled()):  # type: ignore[arg-type]
            return None
        h0, c0, w_hh = call.state[0], call.state[1], p["weight_hh"]
        train = needs_grad(x, h0, c0, p["weight_ih"], w_hh, p["bias_ih"], p["bias_hh"])
        if not ((ONEDNN_LSTM_TRAINING and x.shape[1] >= _ONEDNN_MIN_B_TRAIN and cell.hidden_size <= _ONEDNN_MAX_H_TRAIN)
                if train else ONEDNN_LSTM_INFERENCE):
            return None

        def layer(x_in: Tensor):
            out, h, c, _ = torch.ops.aten.mkldnn_rnn_layer(
                x_in.contiguous(), p["weight_ih"], w_hh, p["bias_ih"], p["bias_hh"], h0.contiguous(),
                c0.contiguous(), False, [], _MKLDNN_LSTM_MODE, cell.hidden_size, 1, True, False, False, train)
            return out, (h, c)
        return layer
