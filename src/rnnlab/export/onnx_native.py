"""One ONNX LSTM / GRU / RNN node per layer for the cells the standard operators express exactly."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from rnnlab.cells.base import RecurrentCell
from rnnlab.cells.elman import ElmanCell
from rnnlab.cells.gru import GRUCell
from rnnlab.cells.lstm import LSTMCell
from rnnlab.export.graph import GraphBuilder


def native_op(cell: RecurrentCell, zoneout: float = 0.0) -> str | None:
    """``"LSTM"``, ``"GRU"`` or ``"RNN"`` when that ONNX operator computes ``cell`` exactly, else ``None``.

    Exact means: same gates, activations and state; zoneout (an eval-time blend with the previous state)
    and LSTM projection (``proj_size``), full gate recurrence and removed gates/activations are not
    expressible, so those cells take the Scan path.  Subclasses with their own step are never native.
    """
    if zoneout:
        return None
    if type(cell).step is LSTMCell.step and isinstance(cell, LSTMCell):
        plain = (cell.input_gate and cell.output_gate and (cell.forget_gate or cell.coupled)
                 and cell.input_activation and cell.output_activation and not cell.full_gate_recurrence
                 and not cell.proj_size)
        return "LSTM" if plain else None
    if type(cell).step is GRUCell.step and isinstance(cell, GRUCell):
        return "GRU"
    if type(cell).step is ElmanCell.step and isinstance(cell, ElmanCell):
        return "RNN"
    return None


def _np(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().float().numpy()


def _blocks(w: np.ndarray, H: int) -> list[np.ndarray]:
    return [w[k * H:(k + 1) * H] for k in range(w.shape[0] // H)]


def _lstm_weights(cell: LSTMCell, p: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """torch gate blocks (i, f, g, o minus removed ones) -> ONNX i, o, f, c rows; peepholes P as i, o, f."""
    H, I = cell.hidden_size, cell.input_size
    w_ih, w_hh = _np(p["weight_ih"]), _np(p["weight_hh"])
    b_ih = _np(p.get("bias_ih"))
    b_hh = _np(p.get("bias_hh"))
    if b_ih is None:
        b_ih = np.zeros(len(cell.gates) * H, np.float32)
        b_hh = np.zeros(len(cell.gates) * H, np.float32)

    def order(mat: np.ndarray, cols: int | None) -> np.ndarray:
        got = dict(zip(cell.gates, _blocks(mat, H)))
        # CIFG has no f rows: ONNX's input_forget=1 ignores them (f = 1 - i), zeros keep the shape
        zero = np.zeros((H, cols) if cols else (H,), np.float32)
        return np.concatenate([got["i"], got["o"], got.get("f", zero), got["g"]])

    peeps = [_np(p[f"weight_c{g}"]) if g in cell.peepholes else np.zeros(H, np.float32) for g in "iof"]
    return {"W": order(w_ih, I), "R": order(w_hh, H), "B": np.concatenate([order(b_ih, None), order(b_hh, None)]),
            "P": np.concatenate(peeps)}


def _gru_weights(cell: GRUCell, p: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """torch blocks r, z, n -> ONNX z, r, h."""
    H = cell.hidden_size

    def order(mat: np.ndarray | None) -> np.ndarray:
        if mat is None:
            return np.zeros(3 * H, np.float32)
        r, z, n = _blocks(mat, H)
        return np.concatenate([z, r, n])

    return {"W": order(_np(p["weight_ih"])), "R": order(_np(p["weight_hh"])),
            "B": np.concatenate([order(_np(p.get("bias_ih"))), order(_np(p.get("bias_hh")))])}


def _rnn_weights(cell: ElmanCell, p: dict[str, Tensor]) -> dict[str, np.ndarray]:
    H = cell.hidden_size
    b_ih, b_hh = _np(p.get("bias_ih")), _np(p.get("bias_hh"))
    zero = np.zeros(H, np.float32)
    return {"W": _np(p["weight_ih"]), "R": _np(p["weight_hh"]),
            "B": np.concatenate([zero if b_ih is None else b_ih, zero if b_hh is None else b_hh])}


def emit_native_layer(b: GraphBuilder, rnn, layer: int, x: str, lengths_i32: str,
                      init: list[str]) -> tuple[str, list[str]]:
    """One ONNX node for ``layer`` of ``rnn`` (both directions).

    ``x`` (T, B, F), ``lengths_i32`` (B,) int32, ``init`` one (D, B, S) name per state part.
    Returns the output (T, B, D*H) and the final states (D, B, S), one per part.
    """
    D = rnn.num_directions
    cells = [rnn._cells[layer][d] for d in range(D)]
    op = native_op(cells[0], rnn.zoneout)
    make = {"LSTM": _lstm_weights, "GRU": _gru_weights, "RNN": _rnn_weights}[op]
    per_dir = [make(c, rnn.layer_params(layer, d)) for d, c in enumerate(cells)]
    names = {k: b.const(np.stack([w[k] for w in per_dir]), f"{op}_{k}_l{layer}") for k in per_dir[0]}
    cell = cells[0]
    attrs = {"hidden_size": cell.hidden_size, "direction": "bidirectional" if D == 2 else "forward"}
    if op == "LSTM":
        inputs = [x, names["W"], names["R"], names["B"], lengths_i32, init[0], init[1], names["P"]]
        attrs["input_forget"] = int(cell.coupled)
        n_out = 3
    elif op == "GRU":
        inputs = [x, names["W"], names["R"], names["B"], lengths_i32, init[0]]
        attrs["linear_before_reset"] = int(cell.reset_after)
        n_out = 2
    else:
        inputs = [x, names["W"], names["R"], names["B"], lengths_i32, init[0]]
        attrs["activations"] = [cell.nonlinearity.capitalize()] * D
        n_out = 2
    outs = b.node(op, inputs, n_out, hint=f"{op.lower()}_l{layer}", **attrs)
    y = b.node("Transpose", [outs[0]], perm=[0, 2, 1, 3])  # (T, D, B, H) -> (T, B, D, H)
    y = b.node("Reshape", [y, b.ints([0, 0, -1])])  # (T, B, D*H)
    return y, list(outs[1:])
