"""A whole rnnlab.Recurrent stack as ONNX: per layer a native node or one Scan per direction, with lengths."""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from rnnlab.export.graph import GraphBuilder
from rnnlab.export.onnx_native import emit_native_layer, native_op
from rnnlab.export.onnx_scan import emit_scan_direction


@dataclass
class TimeContext:
    """Names shared by every layer: (T, B, 1) float step mask, (T, B) reversal index, int32 lengths."""

    mask: str
    reverse_index: str
    lengths_i32: str


def time_context(b: GraphBuilder, x: str, lengths: str) -> TimeContext:
    """``x`` (T, B, F) time-major, ``lengths`` (B,) int64."""
    T = b.node("Gather", [b.node("Shape", [x]), b.ints([0])])  # (1,)
    T0 = b.squeeze(T, [0])
    t = b.node("Range", [b.const(0, "zero", "int64"), T0, b.const(1, "one", "int64")])  # (T,)
    t = b.unsqueeze(t, [1])  # (T, 1)
    L = b.unsqueeze(lengths, [0])  # (1, B)
    valid = b.node("Less", [t, L])  # (T, B)
    mask = b.unsqueeze(b.node("Cast", [valid], to=TensorProto.FLOAT), [2])  # (T, B, 1)
    # reverse each sequence within its length, leave the padding in place (rnnlab.sequence.reverse_index)
    flipped = b.node("Sub", [b.node("Sub", [L, b.const(1, "one", "int64")]), t])
    rev = b.node("Where", [valid, flipped, t])  # (T, B): the (T, 1) padding index broadcasts
    return TimeContext(mask, rev, b.node("Cast", [lengths], to=TensorProto.INT32))


def reverse_time(b: GraphBuilder, x: str, tc: TimeContext) -> str:
    """Reverse (T, B, F) within each sequence's length (an involution)."""
    idx = b.unsqueeze(tc.reverse_index, [2])  # (T, B, 1)
    idx = b.node("Expand", [idx, b.node("Shape", [x])])  # (T, B, F)
    return b.node("GatherElements", [x, idx], axis=0)


def emit_stack(b: GraphBuilder, rnn, x: str, tc: TimeContext, init: list[str]) -> tuple[str, list[str], list[str]]:
    """All layers of ``rnn`` (eval semantics: no dropout).

    ``x`` (T, B, I), ``init`` one (L*D, B, S_k) per state part.  Returns the output (T, B, D*H_out), the
    final states (L*D, B, S_k) and the ops used per layer ("LSTM"/"GRU"/"RNN"/"Scan").
    """
    D = rnn.num_directions
    finals: list[list[str]] = [[] for _ in init]
    lower_seq: list[list[str] | None] = [None] * D
    used = []
    for layer in range(rnn.num_layers):
        cell = rnn._cells[layer][0]
        layer_init = [b.slice0(s, layer * D, (layer + 1) * D) for s in init]  # (D, B, S)
        op = native_op(cell, rnn.zoneout)
        if op is not None:
            x, fin = emit_native_layer(b, rnn, layer, x, tc.lengths_i32, layer_init)
            for acc, f in zip(finals, fin):
                acc.append(f)
            used.append(op)
            continue
        used.append("Scan")
        want_states = layer + 1 < rnn.num_layers and rnn._cells[layer + 1][0].needs_lower
        outs, next_lower, fin_dirs = [], [], []
        for d in range(D):
            c = rnn._cells[layer][d]
            x_d = reverse_time(b, x, tc) if d else x
            low = lower_seq[d] if c.needs_lower else None
            if low is not None and d:
                low = [reverse_time(b, s, tc) for s in low]
            s0 = [b.node("Gather", [s, b.const(d, "dir", "int64")], axis=0) for s in layer_init]  # (B, S)
            y, fin, states = emit_scan_direction(b, c, rnn.layer_params(layer, d), rnn.zoneout, x_d, tc.mask,
                                                 s0, low, want_states)
            if d:
                y = reverse_time(b, y, tc)
                states = [reverse_time(b, s, tc) for s in states]
            outs.append(y)
            next_lower.append(states if want_states else None)
            fin_dirs.append([b.unsqueeze(f, [0]) for f in fin])
        for k, acc in enumerate(finals):
            acc.append(b.concat([fd[k] for fd in fin_dirs], 0))
        x = b.concat(outs, 2)  # (T, B, D*H_out)
        lower_seq = next_lower
    return x, [b.concat(parts, 0) for parts in finals], used
