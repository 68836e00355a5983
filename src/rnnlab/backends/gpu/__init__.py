"""The ``"triton"`` backend: the GPU driver (recurrent GEMM + one fused element-wise Triton kernel per step).

``supports`` accepts a call when Triton is installed, the tensors are on a CUDA device (or on the CPU with
``TRITON_INTERPRET=1 RNNLAB_TRITON_ON_CPU=1``, Triton's interpreter, which is how the test suite runs every
kernel without a GPU), float32/float64 (or bf16/fp16 storage: element-wise math and states in fp32; under
autocast the input and weights are cast to the autocast dtype), and the cell has a registered rule
(:mod:`rnnlab.backends.gpu.rules`: the LSTM family with every option, the GRU in both forms, Elman, IndRNN,
SRU, sLSTM, MUT1-3, clockwork, the depth-gated LSTM on every layer, minGRU/minLSTM where they scan
element-wise, the layer-normalised GRU/LSTM up to a row limit) that accepts the call.  Options handled in the
driver for every cell: lengths, reverse, recurrent dropout, zoneout, recording, the per-step states a layer
above reads.  Anything else goes to the next backend, the reference.
Triton is imported on first use only, so ``import rnnlab`` does not pay for it.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from rnnlab.backends.base import LayerCall, LayerResult
from rnnlab.backends.step_loop import _ZONEOUT_STATES, zoneout_keep
from rnnlab.sequence import reverse_within_lengths

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_LOW = (torch.bfloat16, torch.float16)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for ``device_type`` if it is bf16/fp16, else None."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no per-device query
        on = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not on:
        return None
    dtype = torch.get_autocast_dtype(device_type) if hasattr(torch, "get_autocast_dtype") else \
        (torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype())
    return dtype if dtype in _LOW else None


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    """CPU tensors are taken only when asked for: Triton's interpreter is on (``TRITON_INTERPRET=1``, read by
    Triton when a kernel is defined) and ``RNNLAB_TRITON_ON_CPU=1`` (so other CPU calls keep the C++ kernels
    or the reference even where the interpreter happens to be on)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and os.environ.get("RNNLAB_TRITON_ON_CPU", "0") == "1"


class TritonBackend:
    """Fused element-wise Triton kernels with hand-written BPTT, one generic time loop for every cell."""

    name = "triton"

    def supports(self, call: LayerCall) -> bool:
        x = call.x
        device = x.device
        if not (device.type == "cuda" or (device.type == "cpu" and _interpreting())):
            return False
        if x.dtype not in _DTYPES or x.dim() != 3 or not triton_available():
            return False
        autocast = _autocast_dtype(device.type) is not None  # weights are cast to the autocast dtype in run()
        for t in (*call.params.values(), *call.state, *(call.lower or ())):
            if t.device != device or (t.dtype != x.dtype and not autocast):
                return False
        rule = _rule(call)
        if rule is None:
            return False
        accepts = getattr(rule, "accepts", None)  # a rule may depend on the call (its device), not only the cell
        return accepts is None or accepts(call)

    def run(self, call: LayerCall) -> LayerResult:
        from rnnlab.backends.gpu.driver import LoopSpec, RecurrentLoop

        cell, lengths = call.cell, call.lengths
        rule = _rule(call)
        x, params, lower = call.x, call.params, tuple(call.lower or ())
        transform = getattr(rule, "transform_params", None)
        if transform is not None:  # e.g. a masked weight; autograd differentiates the transform
            params = transform(params)
        low = _autocast_dtype(x.device.type)
        if low is not None:  # autocast: input, weights and activations in bf16/fp16, states accumulate in fp32
            x = x.to(low)
            params = {k: v.to(low) for k, v in params.items()}
        if call.reverse:
            x = reverse_within_lengths(x, lengths)
            lower = tuple(reverse_within_lengths(s, lengths) for s in lower)
        T, B = x.shape[0], x.shape[1]
        if lengths is None:
            valid = torch.ones(T, B, dtype=torch.int8, device=x.device)
        else:
            steps = torch.arange(T).unsqueeze(1)  # (T, 1)
            valid = (steps < lengths.unsqueeze(0)).to(device=x.device, dtype=torch.int8)  # (T, B)
        keeps = None
        if call.zoneout:  # 1 = keep the previous value (Krueger et al. 2016); its expectation in eval
            # only h and c zone out, as in the reference (a keep of 0 leaves normalisers / stabilisers alone)
            shapes = [(T,) + tuple(s.shape) for s in call.state]
            keeps = tuple(torch.zeros(s, dtype=x.dtype, device=x.device) if name not in _ZONEOUT_STATES
                          else zoneout_keep(s, call.zoneout, call.training, x.dtype, x.device)
                          for name, s in zip(cell.state_names, shapes))
        if getattr(rule, "own_projection", False):  # the cell's (or rule's) projection; autograd differentiates it
            x = getattr(rule, "project_input", cell.project_input)(x, params)
        names = tuple(params)
        S = len(call.state)
        spec = LoopSpec(cell, rule, names, S, len(lower), call.want_states)
        rec_mask = None if call.rec_mask is None else call.rec_mask.contiguous()
        output, records, *rest = RecurrentLoop.apply(spec, x.contiguous(), valid, rec_mask, keeps,
                                                     *[s.contiguous() for s in lower],
                                                     *[s.contiguous() for s in call.state], *params.values())
        final, states = rest[:S], (tuple(rest[S:]) if call.want_states else None)
        gates = {}
        if call.record:
            H = cell.hidden_size
            for name, k in rule.record_blocks().items():
                gates[name] = records[..., k * H:(k + 1) * H]  # (T, B, H)
        if call.reverse:
            output = reverse_within_lengths(output, lengths)
            gates = {k: reverse_within_lengths(v, lengths) for k, v in gates.items()}
            if states is not None:
                states = tuple(reverse_within_lengths(s, lengths) for s in states)
        return LayerResult(output, tuple(final), states, gates)


def _rule(call: LayerCall):
    """The cell's rule for this call: above the first layer of a cell that reads the layer below, the rule's
    ``upper`` rule (None: not covered)."""
    from rnnlab.backends.gpu.rules import rule_for

    rule = rule_for(call.cell)
    if rule is not None and call.lower is not None:
        rule = getattr(rule, "upper", None)
    return rule
