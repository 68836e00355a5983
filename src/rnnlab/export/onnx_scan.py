"""Any cell as an ONNX Scan over a per-step subgraph traced from the cell's own step (reference path)."""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import Tensor

from rnnlab.cells.base import RecurrentCell
from rnnlab.export.graph import OPSET, GraphBuilder
from rnnlab.export.step import MaskedStep


def _rename(graph: onnx.GraphProto, prefix: str) -> None:
    """Prefix every value and node name of ``graph`` (a Scan body must not reuse outer names)."""
    def ren(n: str) -> str:
        return prefix + n if n else n

    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        v.name = ren(v.name)
    for t in graph.initializer:
        t.name = ren(t.name)
    for node in graph.node:
        node.name = ren(node.name)
        node.input[:] = [ren(n) for n in node.input]
        node.output[:] = [ren(n) for n in node.output]


def step_body(cell: RecurrentCell, params: dict[str, Tensor], zoneout: float, n_lower: int, want_states: bool,
              prefix: str) -> onnx.GraphProto:
    """Trace one step of ``cell`` into a Scan body with a dynamic batch dimension."""
    step = MaskedStep(cell, params, zoneout, n_lower, want_states).eval()
    B = 2  # not 1: a batch of one lets the tracer treat broadcasts as no-ops
    states = [torch.zeros(B, s, dtype=torch.float32) + 0.1 for s in cell.state_sizes()]
    x_t = torch.randn(B, cell.input_size, generator=torch.Generator().manual_seed(0))  # leave the global RNG
    m_t = torch.ones(B, 1)
    lower = [torch.zeros(B, s) for s in cell.state_sizes()][:n_lower]
    args = (*states, x_t, m_t, *lower)
    in_names = [f"s{k}" for k in range(len(states))] + ["x_t", "m_t"] + [f"low{k}" for k in range(n_lower)]
    n_out = len(states) * (2 if want_states else 1) + 1
    out_names = [f"o{k}" for k in range(n_out)]
    buf = io.BytesIO()
    with warnings.catch_warnings(), step.bound_constants():
        warnings.simplefilter("ignore")
        torch.onnx.export(step, args, buf, dynamo=False, opset_version=OPSET, input_names=in_names,
                          output_names=out_names, do_constant_folding=True,
                          dynamic_axes={n: {0: "batch"} for n in in_names + out_names})
    graph = onnx.load_from_string(buf.getvalue()).graph
    # the tracer drops inputs the step never reads (e.g. the lower layer's h): Scan needs them all, in order
    have = {v.name: v for v in graph.input}
    full = [have.get(n) or onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", a.shape[1]])
            for n, a in zip(in_names, args)]
    del graph.input[:]
    graph.input.extend(full)
    # the same tensor may be returned twice (state and per-step state): route each output through an Identity
    outs = list(graph.output)
    fresh = []
    for k, o in enumerate(outs):
        name = f"out{k}"
        graph.node.append(onnx.helper.make_node("Identity", [o.name], [name], name=f"id_out{k}"))
        info = onnx.ValueInfoProto()
        info.CopyFrom(o)  # the traced type, batch dimension already symbolic
        info.name = name
        fresh.append(info)
    del graph.output[:]
    graph.output.extend(fresh)
    del graph.value_info[:]  # traced shapes would pin the batch size
    _rename(graph, prefix)
    return graph


def emit_scan_direction(b: GraphBuilder, cell: RecurrentCell, params: dict[str, Tensor], zoneout: float,
                        x: str, mask: str, init: list[str], lower: list[str] | None,
                        want_states: bool) -> tuple[str, list[str], list[str]]:
    """A Scan over time (forward order; reverse directions get reversed inputs from the caller).

    ``x`` (T, B, F), ``mask`` (T, B, 1) float, ``init`` one (B, S) per state part, ``lower`` one (T, B, S)
    per part of the layer below.  Returns the output (T, B, H_out), the final states (B, S) and, with
    ``want_states``, every step's states (T, B, S).
    """
    n_lower = len(lower) if lower else 0
    body = step_body(cell, params, zoneout, n_lower, want_states, b.fresh("body") + "/")
    k = len(init)
    n_scan_out = 1 + (k if want_states else 0)
    outs = b.node("Scan", [*init, x, mask, *(lower or [])], k + n_scan_out, hint="scan", body=body,
                  num_scan_inputs=2 + n_lower)
    return outs[k], list(outs[:k]), list(outs[k + 1:])
