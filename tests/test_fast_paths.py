"""The cpp backend's low-overhead paths: kernels without autograd, oneDNN LSTM inference, shared constants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnlab.backends.cpp.backend as cpp_backend
from rnnlab import Recurrent
from rnnlab.backends.cpp import load_generic

pytestmark = pytest.mark.skipif(load_generic() is None, reason="the C++ driver could not be built here")


def _pair(cell: str, I: int, H: int, **kw) -> tuple[Recurrent, Recurrent]:
    torch.manual_seed(0)
    fast = Recurrent(cell, I, H, **kw)
    ref = Recurrent(cell, I, H, backend="reference", **kw)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("cell,kw", [("lstm", {}), ("lstm", {"num_layers": 2, "bidirectional": True}),
                                     ("lstm", {"proj_size": 3}), ("peephole", {}), ("gru", {}),
                                     ("gru", {"reset_after": False}), ("rnn", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("T,B", [(5, 3), (40, 8)])  # T*B 15: our kernel; 320: oneDNN for the plain LSTM
def test_no_grad_paths_equal_reference(cell, kw, T, B):
    fast, ref = _pair(cell, 4, 6, **kw)
    x = torch.randn(T, B, 4)
    with torch.no_grad():
        got, want = fast(x), ref(x)
    with torch.inference_mode():
        got_inf = fast(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_inf, want, atol=1e-5, rtol=1e-5)


def test_onednn_inference_is_what_nn_lstm_computes(monkeypatch):
    torch.manual_seed(0)
    ours = Recurrent("lstm", 5, 7, num_layers=2)
    theirs = nn.LSTM(5, 7, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    x, h0, c0 = torch.randn(30, 10, 5), torch.randn(2, 10, 7), torch.randn(2, 10, 7)
    calls = []
    real = torch.ops.aten.mkldnn_rnn_layer

    class Spy:  # counts calls, forwards to the real op
        def __call__(self, *args):
            calls.append(args[0].shape)
            return real(*args)

    monkeypatch.setattr(torch.ops.aten, "mkldnn_rnn_layer", Spy())
    with torch.no_grad():
        out, (h, c) = ours(x, (h0, c0))
        want, (wh, wc) = theirs(x, (h0, c0))
    if cpp_backend._HAS_ONEDNN_LSTM and torch._C._get_mkldnn_enabled():
        assert len(calls) == 2  # one per layer
        torch.testing.assert_close(out, want, atol=0, rtol=0)  # the same op on the same weights: bitwise
    torch.testing.assert_close((out, h, c), (want, wh, wc), atol=1e-5, rtol=1e-5)
    calls.clear()
    with torch.no_grad():  # lengths, grad mode and small T*B keep our kernel
        ours(x, lengths=[30] * 9 + [3])
        ours(x[:2])
    ours(x)[0].sum().backward()
    assert calls == []


@pytest.mark.parametrize("cell,kw", [("lstm", {}), ("lstm", {"proj_size": 4, "peepholes": "f"})])
def test_a_call_in_inference_mode_first_still_trains(cell, kw):
    # nothing made inside torch.inference_mode (zero peephole rows, empty "off" tensors) may be saved for backward
    fast, ref = _pair(cell, 3, 11, **kw)
    x = torch.randn(4, 2, 3)
    with torch.inference_mode():
        fast(x)
    fast(x)[0].sum().backward()
    ref(x)[0].sum().backward()
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_grad_only_for_the_input_still_flows():
    # parameters frozen, input requires grad: the autograd Function must still be used
    fast, ref = _pair("gru", 3, 5)
    for m in (fast, ref):
        m.requires_grad_(False)
    x1 = torch.randn(6, 2, 3, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    fast(x1)[0].pow(2).sum().backward()
    ref(x2)[0].pow(2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_final_state_of_one_layer_is_not_shared_with_output():
    # h_n of a single layer is a view of the kernel's h_T: writing to it must not change the output
    fast, _ = _pair("lstm", 3, 4)
    out, (h, c) = fast(torch.randn(5, 2, 3))
    before = out.detach().clone()
    with torch.no_grad():
        h.zero_()
    torch.testing.assert_close(out.detach(), before)


def test_training_above_the_hidden_limit_keeps_the_driver_inference_takes_onednn(monkeypatch):
    """Training at H > 512 runs the driver (measured faster there, backend.py), inference the oneDNN layer."""
    calls = []
    real = torch.ops.aten.mkldnn_rnn_layer
    monkeypatch.setattr(torch.ops.aten, "mkldnn_rnn_layer", lambda *a: calls.append(a[-1]) or real(*a))
    H = cpp_backend._ONEDNN_MAX_H_TRAIN + 1
    rnn = Recurrent("lstm", 3, H)
    x = torch.randn(16, 16, 3)
    rnn(x)[0].sum().backward()
    assert calls == [] and rnn.weight_hh_l0.grad is not None
    with torch.no_grad():
        rnn(x)
    if cpp_backend._HAS_ONEDNN_LSTM and torch._C._get_mkldnn_enabled():
        assert calls == [False]


@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "bidirectional": True}])
def test_onednn_training_gradients_equal_reference(kw, monkeypatch):
    # B >= 16 and T*B >= 256: the plain LSTM trains through aten.mkldnn_rnn_layer and its autograd formula
    fast, ref = _pair("lstm", 4, 6, **kw)
    calls = []
    real = torch.ops.aten.mkldnn_rnn_layer
    monkeypatch.setattr(torch.ops.aten, "mkldnn_rnn_layer", lambda *a: calls.append(a[-1]) or real(*a))
    T, B = 20, 16
    x1 = torch.randn(T, B, 4, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    L = fast.num_layers * fast.num_directions
    h1 = (torch.randn(L, B, 6, requires_grad=True), torch.randn(L, B, 6, requires_grad=True))
    h2 = tuple(h.detach().clone().requires_grad_(True) for h in h1)
    w = torch.randn(T, B, fast.num_directions * 6)
    for m, x, h in ((fast, x1, h1), (ref, x2, h2)):
        out, (hn, cn) = m(x, h)
        ((out * w).sum() + hn.pow(2).sum() + cn.sum()).backward()
    if cpp_backend._HAS_ONEDNN_LSTM and torch._C._get_mkldnn_enabled():
        assert calls == [True] * fast.num_layers * fast.num_directions  # train=True, once per layer/direction
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-4)
    for a, b in zip(h1, h2):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)
