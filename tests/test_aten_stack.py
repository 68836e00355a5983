"""The whole-stack route to torch.nn's own ATen op (cuDNN on a GPU), proven on the CPU against torch.nn."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnlab
from rnnlab.backends import aten_stack

PAIRS = [(nn.LSTM, rnnlab.LSTM, {}), (nn.LSTM, rnnlab.LSTM, {"proj_size": 3}), (nn.GRU, rnnlab.GRU, {}),
         (nn.RNN, rnnlab.RNN, {}), (nn.RNN, rnnlab.RNN, {"nonlinearity": "relu"})]


@pytest.fixture
def route(monkeypatch):
    monkeypatch.setattr(aten_stack, "ROUTE_ON_CPU", True)
    calls = []
    real = aten_stack._call

    def counting(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(aten_stack, "_call", counting)
    return calls


def _pair(torch_cls, ours_cls, kw, **common):
    ref = torch_cls(4, 5, **kw, **common)
    ours = ours_cls(4, 5, **kw, **common)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _flat(state):
    return state if isinstance(state, tuple) else (state,)


def _same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize("torch_cls, ours_cls, kw", PAIRS)
@pytest.mark.parametrize("layers, bidirectional, batch_first", [(1, False, False), (2, True, True)])
def test_equal_to_torch_nn_bit_for_bit(route, torch_cls, ours_cls, kw, layers, bidirectional, batch_first):
    torch.manual_seed(0)
    ref, ours = _pair(torch_cls, ours_cls, kw, num_layers=layers, bidirectional=bidirectional,
                      batch_first=batch_first)
    x = torch.randn(3, 6, 4) if batch_first else torch.randn(6, 3, 4)
    o1, s1 = ref(x)
    o2, s2 = ours(x)
    _same((o1, *_flat(s1)), (o2, *_flat(s2)))
    g1 = torch.autograd.grad(o1.sum() + _flat(s1)[0].sum(), list(ref.parameters()))
    g2 = torch.autograd.grad(o2.sum() + _flat(s2)[0].sum(), list(ours.parameters()))
    _same(g1, g2)
    assert route  # the ATen op ran


@pytest.mark.parametrize("torch_cls, ours_cls, kw", PAIRS)
def test_lengths_packed_and_initial_state(route, torch_cls, ours_cls, kw):
    torch.manual_seed(1)
    ref, ours = _pair(torch_cls, ours_cls, kw, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 4)
    lengths = torch.tensor([4, 6, 2])  # unsorted
    shapes = [(4, 3, ours.cell.output_size)] + ([(4, 3, 5)] if torch_cls is nn.LSTM else [])
    hx = tuple(torch.randn(s) for s in shapes)
    hx = hx if len(hx) > 1 else hx[0]
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    o1, s1 = ref(packed, hx)
    o2, s2 = ours(packed, hx)
    _same((o1.data, *_flat(s1)), (o2.data, *_flat(s2)))
    assert torch.equal(o2.batch_sizes, o1.batch_sizes)
    o3, s3 = ours(x, hx, lengths=lengths)  # a padded batch with lengths: the same numbers, zero padding
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(o1, total_length=6)
    _same((padded, *_flat(s1)), (o3, *_flat(s3)))


def test_dropout_between_layers_uses_torchs_masks(route):
    torch.manual_seed(2)
    ref, ours = _pair(nn.LSTM, rnnlab.LSTM, {}, num_layers=3, dropout=0.5)
    ref.train(), ours.train()
    x = torch.randn(5, 2, 4)
    torch.manual_seed(9)
    o1, _ = ref(x)
    torch.manual_seed(9)
    o2, _ = ours(x)
    assert torch.equal(o1, o2)


def test_unbatched_input(route):
    ref, ours = _pair(nn.GRU, rnnlab.GRU, {}, num_layers=2)
    x = torch.randn(6, 4)
    h0 = torch.randn(2, 5)
    o1, h1 = ref(x, h0)
    o2, h2 = ours(x, h0)
    _same((o1, h1), (o2, h2))


@pytest.mark.parametrize("make", [
    lambda: rnnlab.Recurrent("peephole", 4, 5),
    lambda: rnnlab.GRU(4, 5, reset_after=False),
    lambda: rnnlab.LSTM(4, 5, recurrent_dropout=0.2),
    lambda: rnnlab.LSTM(4, 5, zoneout=0.1),
    lambda: rnnlab.LSTM(4, 5, backend="reference"),
    lambda: rnnlab.LSTM(4, 5, bias=False),
    lambda: rnnlab.Recurrent("lstm", 4, 5, forget_gate=False),
])
def test_cells_torch_nn_cannot_express_keep_rnnlabs_own_path(route, make):
    make()(torch.randn(3, 2, 4))
    assert not route


def test_recording_keeps_rnnlabs_own_path(route):
    lstm = rnnlab.LSTM(4, 5)
    with lstm.recording() as rec:
        lstm(torch.randn(3, 2, 4))
    assert not route and "f" in rec[(0, 0)]


def test_not_taken_on_cpu_by_default():
    assert aten_stack.ROUTE_ON_CPU is False  # CPU calls keep the fused C++ kernels


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuDNN route)")
@pytest.mark.parametrize("torch_cls, ours_cls, kw", PAIRS)
def test_cuda_goes_through_cudnn_like_torch_nn(torch_cls, ours_cls, kw):
    torch.manual_seed(3)
    ref, ours = _pair(torch_cls, ours_cls, kw, num_layers=2, bidirectional=True)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(20, 8, 4, device="cuda")
    o1, s1 = ref(x)
    o2, s2 = ours(x)
    _same((o1, *_flat(s1)), (o2, *_flat(s2)))


def test_flatten_parameters_is_harmless_on_the_cpu():
    lstm = rnnlab.LSTM(4, 5, num_layers=2)
    before = {k: v.clone() for k, v in lstm.state_dict().items()}
    lstm.flatten_parameters()
    lstm.to(torch.float64)
    assert all(torch.equal(before[k].double(), v) for k, v in lstm.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuDNN weight buffer)")
def test_cuda_weights_share_one_buffer_after_cuda():
    lstm = rnnlab.LSTM(4, 5, num_layers=2, bidirectional=True).cuda()
    ptrs = sorted(p.data_ptr() for p in lstm.parameters())
    size = sum(p.numel() for p in lstm.parameters()) * 4
    assert ptrs[-1] - ptrs[0] < size  # all views of one allocation
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lstm(torch.randn(3, 2, 4, device="cuda"))
    assert not [w for w in record if "contiguous chunk" in str(w.message)]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("torch_cls, ours_cls, kw", PAIRS)
def test_cpu_autocast_computes_what_torch_nn_computes(torch_cls, ours_cls, kw, packed):
    """Under CPU autocast a plain stack runs torch.nn's op (no ROUTE_ON_CPU needed): the same dtypes, numbers
    and gradients as torch.nn under the same autocast, with lengths, two layers, both directions."""
    torch.manual_seed(0)
    ref, ours = _pair(torch_cls, ours_cls, kw, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 4)
    outs = []
    for mod in (ref, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if packed:
                o, s = mod(pack_padded_sequence(x, torch.tensor([6, 4, 2]), enforce_sorted=False))
                o = torch.nn.utils.rnn.pad_packed_sequence(o, total_length=6)[0]
            else:
                o, s = mod(x)
        g = torch.autograd.grad(o.float().sum() + _flat(s)[0].float().sum(), list(mod.parameters()))
        outs.append(((o, *_flat(s)), g))
    (o1, g1), (o2, g2) = outs
    assert [t.dtype for t in o2] == [t.dtype for t in o1]
    if not packed:  # torch's own autocast policy (its packed variants return float32)
        assert o1[0].dtype == (torch.float32 if torch_cls is nn.GRU else torch.bfloat16)
    _same(o1, o2)
    _same(g1, g2)


def test_cpu_autocast_keeps_the_driver_for_options_forced_backends_and_fp16():
    """Options torch.nn lacks keep rnnlab's driver under autocast (float32 compute and output); so do a forced
    backend and fp16 autocast (where torch.nn.LSTM has no CPU kernel without AVX512-FP16)."""
    torch.manual_seed(0)
    x = torch.randn(5, 2, 4)
    cases = [(rnnlab.LSTM(4, 5, zoneout=0.1), torch.bfloat16), (rnnlab.LSTM(4, 5, backend="cpp"), torch.bfloat16),
             (rnnlab.Recurrent("peephole", 4, 5), torch.bfloat16), (rnnlab.LSTM(4, 5), torch.float16)]
    for mod, dtype in cases:
        mod.eval()  # zoneout's expectation: the same numbers in both calls
        with torch.autocast("cpu", dtype=dtype):
            out = mod(x)[0]
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, mod(x)[0], atol=4e-2, rtol=4e-2)
