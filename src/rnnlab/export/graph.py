"""A small ONNX graph builder: unique names, constants as initializers, one call per node."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: the opset every rnnlab export targets (LSTM/GRU/RNN, Scan with directions, Where, GatherElements)
OPSET = 17


class GraphBuilder:
    """Collects nodes and initializers of one ONNX graph; every produced name is unique within the model.

    ``prefix`` keeps the names of graphs built by separate builders (a Scan body and its outer graph) apart,
    since ONNX forbids a subgraph from redefining a name of the enclosing graph.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: Any, hint: str = "c", dtype: Any = None) -> str:
        """An initializer holding ``value`` (array-like; float arrays become float32 unless ``dtype``)."""
        arr = np.asarray(value, dtype=dtype)
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values: Sequence[int], hint: str = "i") -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, hint: str | None = None, **attrs: Any):
        """Append ``op``; returns its single output name, or a list when ``n_out`` != 1."""
        outs = [self.fresh(hint or op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def add_input(self, name: str, elem: int, shape: Sequence[int | str | None]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def add_output(self, source: str, name: str, elem: int = TensorProto.FLOAT,
                   shape: Sequence[int | str | None] | None = None) -> None:
        """Expose ``source`` under the graph output ``name`` (through an Identity, so names stay free)."""
        self.nodes.append(helper.make_node("Identity", [source], [name], name=self.fresh("out")))
        self.outputs.append(helper.make_tensor_value_info(name, elem, None if shape is None else list(shape)))

    def graph(self, name: str) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)

    # --- a few composite ops used by several exporters -----------------------------------------------------
    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.node("Unsqueeze", [x, self.ints(axes)])

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.node("Squeeze", [x, self.ints(axes)])

    def slice0(self, x: str, start: int, stop: int) -> str:
        """x[start:stop] along axis 0."""
        return self.node("Slice", [x, self.ints([start]), self.ints([stop]), self.ints([0])])

    def concat(self, xs: Sequence[str], axis: int) -> str:
        return xs[0] if len(xs) == 1 else self.node("Concat", list(xs), axis=axis)


def make_model(graph: onnx.GraphProto, doc: str = "") -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnnlab",
                              doc_string=doc)
    model.ir_version = min(model.ir_version, 9)  # readable by onnxruntime releases a year old
    return model
