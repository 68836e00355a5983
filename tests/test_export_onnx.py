"""ONNX and torch.export of every cell: native LSTM/GRU/RNN nodes or a Scan, checked in ONNX Runtime vs PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is a test extra: pip install -e '.[test]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test extra: pip install -e '.[test]'")

from rnnlab import Recurrent, cell_names  # noqa: E402
from rnnlab.export.model import model_to_onnx, recurrent_to_onnx  # noqa: E402
from rnnlab.export.onnx_native import native_op  # noqa: E402
from rnnlab.models import ModelConfig, SequenceModel  # noqa: E402
from conftest import random_state_like  # noqa: E402

#: (T, B, varying lengths): three lengths, two batch sizes, one case with sequences of different lengths
CASES = [(1, 1, False), (6, 3, True), (9, 3, False)]
#: the cells the issue requires as single native ONNX operators
REQUIRED_NATIVE = {"lstm": "LSTM", "peephole": "LSTM", "cifg": "LSTM", "gru": "GRU", "gru_paper": "GRU",
                   "rnn": "RNN", "rnn_relu": "RNN"}


def _session(proto):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _lengths(T: int, B: int, varying: bool) -> torch.Tensor:
    if not varying:
        return torch.full((B,), T, dtype=torch.int64)
    return torch.tensor([T] + [max(1, T - 2 * k - 1) for k in range(1, B)], dtype=torch.int64)


def _compare_recurrent(rnn: Recurrent, proto) -> None:
    sess = _session(proto)
    for T, B, varying in CASES:
        shape = (B, T, rnn.input_size) if rnn.batch_first else (T, B, rnn.input_size)
        x = torch.randn(shape)
        lengths = _lengths(T, B, varying)
        hx = random_state_like(rnn.cell, rnn.num_layers * rnn.num_directions, B, dtype=torch.float32)
        with torch.no_grad():
            out, state = rnn(x, hx if len(hx) > 1 else hx[0], lengths=lengths)
        state = state if isinstance(state, tuple) else (state,)
        feeds = {"input": x.numpy(), "lengths": lengths.numpy()}
        feeds.update({f"{n}_0": h.numpy() for n, h in zip(rnn.state_names, hx)})
        got = sess.run(None, feeds)
        where = f"T={T} B={B} lengths={lengths.tolist()}"
        np.testing.assert_allclose(got[0], out.numpy(), atol=1e-5, rtol=0, err_msg=f"output, {where}")
        for name, g, s in zip(rnn.state_names, got[1:], state):
            np.testing.assert_allclose(g, s.numpy(), atol=1e-5, rtol=0, err_msg=f"final {name}, {where}")


def _ops(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


@pytest.mark.parametrize("name", cell_names())
def test_every_cell_matches_pytorch_in_onnxruntime(name):
    """Two stacked bidirectional layers: lengths, initial states, reversal and stacking in one export."""
    rnn = Recurrent(name, 3, 4, num_layers=2, bidirectional=True, backend="reference").eval()
    proto, used = recurrent_to_onnx(rnn)
    onnx.checker.check_model(proto)
    ops = _ops(proto)
    op = native_op(rnn.cell)
    if op is not None:  # one node per layer, both directions inside it, and no loop anywhere
        assert ops.count(op) == 2 and "Scan" not in ops and "Loop" not in ops, ops
        assert used == [op, op]
    else:
        assert ops.count("Scan") == 4 and used == ["Scan", "Scan"], ops
    if name in REQUIRED_NATIVE:
        assert op == REQUIRED_NATIVE[name]
    _compare_recurrent(rnn, proto)


@pytest.mark.parametrize("cell, options, op", [
    ("lstm", {"proj_size": 2}, "Scan"),  # ONNX LSTM has no projection
    ("lstm", {"peepholes": "f"}, "LSTM"),  # any subset of peepholes: zero rows for the others
    ("lstm", {"peepholes": "io", "forget_bias": 1.0}, "LSTM"),
    ("cifg", {"peepholes": "io"}, "LSTM"),
    ("lstm", {"bias": False}, "LSTM"),
    ("gru_paper", {"bias": False}, "GRU"),
    ("rnn_relu", {"batch_first": True}, "RNN"),
    ("lstm", {"zoneout": 0.3}, "Scan"),  # eval-time zoneout blends with the old state: not the ONNX op
    ("greff_nog", {"batch_first": True}, "Scan"),
    ("depth_gated", {"num_layers": 3}, "Scan"),
])
def test_options_route_to_native_or_scan(cell, options, op):
    opts = dict(options)
    layers = opts.pop("num_layers", 1)
    wrapper_keys = {k: opts.pop(k) for k in ("bias", "batch_first", "zoneout") if k in opts}
    rnn = Recurrent(cell, 3, 5, num_layers=layers, backend="reference", **wrapper_keys, **opts).eval()
    proto, used = recurrent_to_onnx(rnn)
    assert used == [op] * layers
    assert _ops(proto).count(op) == layers
    _compare_recurrent(rnn, proto)


def test_cifg_is_onnx_input_forget():
    """rnnlab's CIFG (f = 1 - i, no forget rows) is ONNX LSTM's input_forget=1."""
    rnn = Recurrent("cifg", 3, 4, backend="reference")
    proto, _ = recurrent_to_onnx(rnn)
    lstm = next(n for n in proto.graph.node if n.op_type == "LSTM")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lstm.attribute}
    assert attrs["input_forget"] == 1


@pytest.mark.parametrize("target, vocab, cell, tied", [
    ("class", 11, "peephole", False), ("seq_class", 9, "mut1", False), ("seq_class", 9, "lstm", True),
    ("regression", None, "gru", False)])
def test_whole_model_matches_pytorch(target, vocab, cell, tied):
    """Embedding (or features), the stack, the head (tied to the embedding too); a carried state."""
    config = ModelConfig(cell=cell, hidden_size=6, num_layers=2, embedding_dim=6 if tied else 4, backend="reference",
                         bidirectional=target != "seq_class", tie_embeddings=tied)
    model = SequenceModel(config, input_size=3, output_size=vocab if tied else 4, target=target,
                          vocab_size=vocab).eval()
    proto, _ = model_to_onnx(model)
    onnx.checker.check_model(proto)
    sess = _session(proto)
    for T, B, varying in CASES:
        x = torch.randint(0, vocab, (B, T)) if vocab else torch.randn(B, T, 3)
        lengths = _lengths(T, B, varying)
        state = tuple(torch.randn(s) for s in model.rnn.state_shapes(B))
        with torch.no_grad():
            out, final = model(x, lengths, state if len(state) > 1 else state[0])
        final = final if isinstance(final, tuple) else (final,)
        feeds = {"x": x.numpy(), "lengths": lengths.numpy()}
        feeds.update({f"{n}_0": s.numpy() for n, s in zip(model.rnn.state_names, state)})
        got = sess.run(None, feeds)
        np.testing.assert_allclose(got[0], out.numpy(), atol=1e-5, rtol=0)
        for g, s in zip(got[1:], final):
            np.testing.assert_allclose(g, s.numpy(), atol=1e-5, rtol=0)


def test_export_leaves_the_global_random_stream_alone():
    rnn = Recurrent("mut2", 3, 4, backend="reference")
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    recurrent_to_onnx(rnn)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("cell, layers, bidirectional", [("lstm", 1, True), ("clockwork", 2, False)])
def test_torch_export_round_trip_at_two_lengths(tmp_path, cell, layers, bidirectional):
    """One torch.export with symbolic T and B, saved and loaded, run at two lengths and batch sizes."""
    from rnnlab.export.pt2 import export_pt2, save_pt2

    config = ModelConfig(cell=cell, hidden_size=5, num_layers=layers, embedding_dim=3, backend="reference",
                         bidirectional=bidirectional)
    model = SequenceModel(config, input_size=1, output_size=4, target="seq_class", vocab_size=7).eval()
    path = tmp_path / "m.pt2"
    save_pt2(export_pt2(model), path)
    loaded = torch.export.load(str(path)).module()
    for B, T in ((3, 4), (1, 11)):
        x = torch.randint(0, 7, (B, T))
        lengths = _lengths(T, B, varying=B > 1)
        state = random_state_like(model.rnn.cell, layers * (2 if bidirectional else 1), B, dtype=torch.float32)
        with torch.no_grad():
            ref, final = model(x, lengths, state if len(state) > 1 else state[0])
            got = loaded(x, lengths, *state)
        final = final if isinstance(final, tuple) else (final,)
        torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=0)
        for g, s in zip(got[1:], final):
            torch.testing.assert_close(g, s, atol=1e-5, rtol=0)


def test_onnx_bench_measures_every_column():
    """`rnnlab bench --onnx` at toy sizes: every timing is positive and int8 stays near fp32."""
    from rnnlab.export.bench import bench_cell, format_table

    row = bench_cell("cifg", input_size=4, hidden_size=8, batch=2, steps=3, stream_steps=2, repeats=1, threads=1)
    times = [v for k, v in row.items() if "_us_" in k or "_ms_" in k]
    assert len(times) == 6 and all(t > 0 for t in times)
    assert row["max_abs_err_onnx_fp32"] < 1e-5 and row["max_abs_err_onnx_int8"] < 0.1
    report = {"shape": {"input_size": 4, "hidden_size": 8, "batch": 2, "steps": 3}, "threads": 1, "rows": [row]}
    assert "cifg" in format_table(report)
