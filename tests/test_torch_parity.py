"""rnnlab.RNN / LSTM / GRU against torch.nn with copied weights: outputs, states, gradients, state_dict."""

from __future__ import annotations

import inspect
import pickle
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

import rnnlab

ATOL = RTOL = 1e-5  # fp32, as the issue asks
I, H, P, B, T = 3, 5, 2, 4, 6
LENGTHS = [6, 2, 5, 1]  # unsorted, includes a length-1 and a full-length sequence

# (class name, constructor options): every recurrent mode of torch.nn
KINDS = {
    "rnn_tanh": ("RNN", {}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": P}),
    "gru": ("GRU", {}),
}
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

MODES = ["dense", "dense_hx", "unbatched_hx", "packed_sorted", "packed_unsorted_hx"]


def make_pair(kind: str, seed: int = 0, from_ours: bool = False, **options) -> tuple[nn.Module, nn.Module]:
    """A torch.nn module and its rnnlab twin holding the same weights (copied one way or the other)."""
    cls, extra = KINDS[kind]
    kw = {**extra, **options}
    torch.manual_seed(seed)
    backend = kw.pop("backend", "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with num_layers=1, oneDNN projection notice
        ref, ours = getattr(nn, cls)(I, H, **kw), getattr(rnnlab, cls)(I, H, backend=backend, **kw)
    if from_ours:
        ref.load_state_dict(ours.state_dict())
    else:
        ours.load_state_dict(ref.state_dict())
    return ref, ours


def state_parts(kind: str, h: Tensor | tuple) -> tuple[Tensor, ...]:
    return h if isinstance(h, tuple) else (h,)


def random_hx(kind: str, num_layers: int, D: int, batch: int | None, seed: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h_size = P if kind == "lstm_proj" else H
    sizes = [h_size, H] if kind.startswith("lstm") else [h_size]
    lead = (num_layers * D,) if batch is None else (num_layers * D, batch)
    return tuple(torch.randn(*lead, s, generator=g, requires_grad=True) for s in sizes)


def as_hx(kind: str, parts: tuple[Tensor, ...]):
    return parts if kind.startswith("lstm") else parts[0]


def make_input(mode: str, batch_first: bool, seed: int):
    """(leaf tensor whose .grad we compare, the module's input)."""
    g = torch.Generator().manual_seed(seed)
    if mode == "unbatched_hx":
        x = torch.randn(T, I, generator=g, requires_grad=True)
        return x, x
    if mode.startswith("packed"):
        lengths = sorted(LENGTHS, reverse=True) if mode == "packed_sorted" else LENGTHS
        x = torch.randn(T, B, I, generator=g, requires_grad=True)
        packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=mode == "packed_sorted")
        return x, packed
    x = torch.randn(B, T, I, generator=g, requires_grad=True) if batch_first else \
        torch.randn(T, B, I, generator=g, requires_grad=True)
    return x, x


def loss_of(output, h_n, kind: str) -> Tensor:
    """A loss that weights every output and state element differently, so that every gradient is tested."""
    out = output.data if isinstance(output, PackedSequence) else output
    g = torch.Generator().manual_seed(123)
    loss = (out * torch.randn(out.shape, generator=g)).sum()
    for s in state_parts(kind, h_n):
        loss = loss + (s * torch.randn(s.shape, generator=g)).sum()
    return loss


def run(module: nn.Module, kind: str, mode: str, batch_first: bool, num_layers: int, D: int):
    x, inp = make_input(mode, batch_first, seed=1)
    hx = None
    if mode.endswith("hx"):
        hx = random_hx(kind, num_layers, D, None if mode == "unbatched_hx" else B, seed=2)
    output, h_n = module(inp, None if hx is None else as_hx(kind, hx))
    loss_of(output, h_n, kind).backward()
    grads = {"input": x.grad}
    for k, part in enumerate(hx or ()):
        grads[f"hx[{k}]"] = part.grad
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return output, h_n, grads


def assert_close(a: Tensor, b: Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != torch.nn {tuple(b.shape)}"
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


def assert_same_packed(ours: PackedSequence, ref: PackedSequence) -> None:
    assert isinstance(ours, PackedSequence)
    assert torch.equal(ours.batch_sizes, ref.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name
    assert_close(ours.data, ref.data, "output.data")


# batch_first only changes dense input; packed and unbatched inputs ignore it, as in torch.nn
LAYOUTS = [pytest.param(m, bf, id=f"{m}-{'bt' if bf else 'tb'}") for m in MODES
           for bf in ((False, True) if m.startswith("dense") else (False,))]


@pytest.mark.parametrize("mode, batch_first", LAYOUTS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["l1", "l2"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_forward_and_gradients_match_torch(backend, kind, num_layers, bidirectional, batch_first, mode):
    # "auto" takes the fastest backend (fused kernels where built), "reference" the definition
    # two-layer stacks also carry dropout, which must be inactive in eval exactly as in torch.nn
    dropout = 0.3 if num_layers == 2 else 0.0
    ref, ours = make_pair(kind, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                          dropout=dropout, backend=backend)
    if dropout:
        ref.eval(), ours.eval()
    D = 2 if bidirectional else 1
    out_r, h_r, g_r = run(ref, kind, mode, batch_first, num_layers, D)
    out_o, h_o, g_o = run(ours, kind, mode, batch_first, num_layers, D)

    if isinstance(out_r, PackedSequence):
        assert_same_packed(out_o, out_r)
    else:
        assert isinstance(out_o, Tensor)
        assert_close(out_o, out_r, "output")
    assert type(h_o) is type(h_r), f"final state: {type(h_o).__name__} != torch.nn {type(h_r).__name__}"
    for k, (a, b) in enumerate(zip(state_parts(kind, h_o), state_parts(kind, h_r))):
        assert_close(a, b, f"h_n[{k}]")
    assert g_o.keys() == g_r.keys()
    for name in g_r:
        assert g_o[name] is not None, f"no gradient for {name}"
        assert_close(g_o[name], g_r[name], f"grad {name}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_without_bias_matches_torch(kind):
    ref, ours = make_pair(kind, bias=False, num_layers=2, bidirectional=True)
    assert not any("bias" in n for n in ours.state_dict())
    out_r, h_r, g_r = run(ref, kind, "dense_hx", False, 2, 2)
    out_o, h_o, g_o = run(ours, kind, "dense_hx", False, 2, 2)
    assert_close(out_o, out_r, "output")
    for name in g_r:
        assert_close(g_o[name], g_r[name], f"grad {name}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_keys_shapes_and_order_equal_torch(kind):
    ref, ours = make_pair(kind, num_layers=3, bidirectional=True)
    sd_r, sd_o = ref.state_dict(), ours.state_dict()
    assert list(sd_o) == list(sd_r)
    assert {k: tuple(v.shape) for k, v in sd_o.items()} == {k: tuple(v.shape) for k, v in sd_r.items()}
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
        [[tuple(w.shape) for w in ws] for ws in ref.all_weights]


@pytest.mark.parametrize("kind", list(KINDS))
def test_weights_move_from_rnnlab_to_torch(kind):
    # the other direction: rnnlab's own initialisation, loaded (strictly) into torch.nn
    ref, ours = make_pair(kind, seed=7, from_ours=True, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(B, T, I)
    out_r, h_r = ref(x)
    out_o, h_o = ours(x)
    assert_close(out_o, out_r, "output")
    for a, b in zip(state_parts(kind, h_o), state_parts(kind, h_r)):
        assert_close(a, b, "h_n")


@pytest.mark.parametrize("kind", list(KINDS))
def test_default_initialisation_has_torch_distribution(kind):
    # U(-1/sqrt(H), 1/sqrt(H)) for every parameter, as torch.nn.RNNBase.reset_parameters
    cls, extra = KINDS[kind]
    ours = getattr(rnnlab, cls)(I, 64, **extra)
    bound = 64 ** -0.5
    for name, p in ours.named_parameters():
        p = p.detach()
        assert float(p.abs().max()) <= bound, name
        assert float(p.abs().max()) > 0.8 * bound, f"{name}: not spread over the torch.nn init range"


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_positional_signature_and_attributes_equal_torch(cls):
    # torch.nn's __init__ is (*args, **kwargs); compare through positional construction and attributes
    positional = {"RNN": (I, H, 2, "relu", False, True, 0.25, True),
                  "LSTM": (I, H, 2, False, True, 0.25, True, P),
                  "GRU": (I, H, 2, False, True, 0.25, True)}[cls]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ours = getattr(nn, cls)(*positional), getattr(rnnlab, cls)(*positional)
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size") + (("nonlinearity",) if cls == "RNN" else ()):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    params = list(inspect.signature(getattr(rnnlab, cls)).parameters)
    expected = {"RNN": ["input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first",
                        "dropout", "bidirectional", "device", "dtype"],
                "LSTM": ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                         "bidirectional", "proj_size", "device", "dtype"],
                "GRU": ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                        "bidirectional", "device", "dtype"]}[cls]
    assert params[:len(expected)] == expected


def test_dtype_and_device_keywords_and_double():
    ours = rnnlab.LSTM(I, H, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    ref = nn.LSTM(I, H).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-12, rtol=1e-12)
    ours32 = rnnlab.GRU(I, H).double()  # .double() must reach every parameter the wrapper owns
    assert ours32(torch.randn(T, B, I, dtype=torch.float64))[0].dtype == torch.float64


def test_pack_sequence_of_unequal_tensors_matches_torch():
    ref, ours = make_pair("lstm", bidirectional=True, num_layers=2)
    seqs = [torch.randn(n, I) for n in (3, 6, 1, 4)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    out_r, (h_r, c_r) = ref(packed)
    out_o, (h_o, c_o) = ours(packed)
    assert_same_packed(out_o, out_r)
    assert_close(h_o, h_r, "h_n")
    assert_close(c_o, c_r, "c_n")


def test_module_pickles_and_deep_copies():
    import copy

    ref, ours = make_pair("lstm_proj", num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert_close(clone(x)[0], ours(x)[0], "output of the copy")
        assert list(clone.state_dict()) == list(ref.state_dict())


def test_weight_norm_parametrization_matches_torch():
    # torch.nn.utils.parametrize turns a parameter into a property: the wrapper must read it by attribute
    from torch.nn.utils.parametrizations import weight_norm

    ref, ours = make_pair("gru", num_layers=2)
    for m in (ref, ours):
        weight_norm(m, "weight_hh_l1")
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(T, B, I)
    out_r, _ = ref(x)
    out_o, _ = ours(x)
    assert_close(out_o, out_r, "output")
    loss_of(out_r, out_r[-1], "gru").backward()
    loss_of(out_o, out_o[-1], "gru").backward()
    for (name, p_r), (_, p_o) in zip(ref.named_parameters(), ours.named_parameters()):
        assert_close(p_o.grad, p_r.grad, f"grad {name}")
