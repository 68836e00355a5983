"""ONNX export of a Recurrent stack or a whole SequenceModel (embedding, recurrent stack, head)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from rnnlab.export.check import check_exportable
from rnnlab.export.graph import GraphBuilder, make_model
from rnnlab.export.stack import emit_stack, time_context
from rnnlab.models import SequenceModel
from rnnlab.recurrent import Recurrent


def _state_inputs(b: GraphBuilder, rnn: Recurrent, suffix: str) -> list[str]:
    LD = rnn.num_layers * rnn.num_directions
    return [b.add_input(f"{n}{suffix}", TensorProto.FLOAT, [LD, "batch", s])
            for n, s in zip(rnn.state_names, rnn.cell.state_sizes())]


def _state_outputs(b: GraphBuilder, rnn: Recurrent, finals: list[str], suffix: str) -> None:
    LD = rnn.num_layers * rnn.num_directions
    for n, s, f in zip(rnn.state_names, rnn.cell.state_sizes(), finals):
        b.add_output(f, f"{n}{suffix}", shape=[LD, "batch", s])


def recurrent_to_onnx(rnn: Recurrent) -> tuple[onnx.ModelProto, list[str]]:
    """``rnn`` (eval semantics) as ONNX; also returns the op used per layer.

    Inputs: ``input`` in the module's layout ((T, B, I), or (B, T, I) with ``batch_first``), ``lengths``
    (B,) int64 and one initial state ``h_0``, ``c_0``, ... (L*D, B, S) per state part.  Outputs: ``output``
    in the same layout, padded steps zero, and ``h_n``, ``c_n``, ... at each sequence's last valid step.
    """
    b = GraphBuilder()
    T, B = "time", "batch"
    shape = [B, T, rnn.input_size] if rnn.batch_first else [T, B, rnn.input_size]
    x = b.add_input("input", TensorProto.FLOAT, shape)
    lengths = b.add_input("lengths", TensorProto.INT64, [B])
    init = _state_inputs(b, rnn, "_0")
    if rnn.batch_first:
        x = b.node("Transpose", [x], perm=[1, 0, 2])  # (B, T, I) -> (T, B, I)
    y, finals, used = emit_stack(b, rnn, x, time_context(b, x, lengths), init)
    if rnn.batch_first:
        y = b.node("Transpose", [y], perm=[1, 0, 2])
    out_size = rnn.num_directions * rnn.cell.output_size
    b.add_output(y, "output", shape=["batch", "time", out_size] if rnn.batch_first else ["time", "batch", out_size])
    _state_outputs(b, rnn, finals, "_n")
    return make_model(b.graph("rnnlab_recurrent"), f"rnnlab.Recurrent {rnn.extra_repr()}"), used


def model_to_onnx(model: SequenceModel) -> tuple[onnx.ModelProto, list[str]]:
    """A whole :class:`SequenceModel` as ONNX.

    Inputs: ``x`` (B, T) int64 token ids or (B, T, I) float features, ``lengths`` (B,) int64 and the initial
    recurrent state ``h_0``, ``c_0``, ... (L*D, B, S) (zeros for a fresh sequence).  Outputs: ``output``
    ((B, C) or (B, T, C) for per-step targets) and the final state ``h_n``, ``c_n``, ... to carry on.
    """
    check_exportable(model)
    b = GraphBuilder()
    rnn = model.rnn
    if model.embedding is not None:
        x = b.add_input("x", TensorProto.INT64, ["batch", "time"])
        table = b.const(model.embedding.weight.detach().float().numpy(), "embedding")
        x = b.node("Gather", [table, x], axis=0)  # (B, T) -> (B, T, E)
    else:
        x = b.add_input("x", TensorProto.FLOAT, ["batch", "time", model.input_size])
    lengths = b.add_input("lengths", TensorProto.INT64, ["batch"])
    init = _state_inputs(b, rnn, "_0")
    x = b.node("Transpose", [x], perm=[1, 0, 2])  # (B, T, F) -> (T, B, F)
    y, finals, used = emit_stack(b, rnn, x, time_context(b, x, lengths), init)
    w = b.const(model.head.weight.detach().float().numpy().T, "head_w")  # (D*H, C)
    bias = b.const(model.head.bias.detach().float().numpy(), "head_b")
    if model.target == "seq_class":
        y = b.node("Transpose", [y], perm=[1, 0, 2])  # (B, T, D*H)
        out = b.node("Add", [b.node("MatMul", [y, w]), bias])  # (B, T, C)
    else:
        D = rnn.num_directions
        LD = rnn.num_layers * D
        last = b.slice0(finals[0], LD - D, LD)  # (D, B, H): the last layer, every direction
        last = b.node("Transpose", [last], perm=[1, 0, 2])  # (B, D, H)
        last = b.node("Reshape", [last, b.ints([0, -1])])  # (B, D*H)
        out = b.node("Add", [b.node("MatMul", [last, w]), bias])  # (B, C)
    C = model.output_size
    b.add_output(out, "output", shape=["batch", "time", C] if model.target == "seq_class" else ["batch", C])
    _state_outputs(b, rnn, finals, "_n")
    return make_model(b.graph("rnnlab_model"), f"rnnlab.SequenceModel {model.config.to_dict()}"), used


def save_onnx(proto: onnx.ModelProto, path: str | Path) -> None:
    """Check the graph, then write it."""
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))

