"""Recurrent dropout, zoneout and recording on the generic C++ driver: equal to the reference, same masks, gradcheck."""

from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import Recurrent
from rnnlab.backends import LayerCall, select_backend
from rnnlab.backends.cpp import generic_registry
from rnnlab.backends.cpp.generic_loader import load_generic
from rnnlab.backends.reference import ReferenceBackend

needs_driver = pytest.mark.skipif(load_generic() is None, reason="the generic C++ driver could not be built here")
pytestmark = [needs_driver, pytest.mark.usefixtures("single_thread")]

F64 = torch.float64
I, H = 3, 4
# every registered cell the generic driver runs (new rules join automatically)
# options that change what the driver itself does, under a name of their own: the LSTM's output projection,
# and the full gate recurrence (the driver's part product) with a coupled gate, whose block it drops
VARIANTS: dict[str, tuple[str, dict]] = {
    "lstmp": ("lstm", {"proj_size": 2}),
    "fgr_cifg": ("lstm", {"full_gate_recurrence": True, "coupled": True, "peepholes": "io"}),
}
DRIVER = [n for n in rnnlab.cell_names() if generic_registry.driver_for(Recurrent(n, I, H).cell) is not None]
DRIVER += sorted(VARIANTS)
RECORDING = [n for n in DRIVER if hasattr(Recurrent(VARIANTS.get(n, (n, {}))[0], I, H).cell, "driver_records")]


def _cell_args(name: str) -> tuple[str, dict]:
    """The registered name and options of a test case (a variant or a cell with its defaults)."""
    name, opts = VARIANTS.get(name, (name, {}))
    return name, ({"num_heads": 2, **opts} if name == "slstm" else dict(opts))


def _module(name: str, **kw) -> Recurrent:
    """Two bidirectional layers (a cell that reads the layer below reads the same direction below)."""
    torch.manual_seed(0)
    name, opts = _cell_args(name)
    return Recurrent(name, I, H, num_layers=2, bidirectional=True, dtype=F64, recurrent_dropout=0.3,
                     zoneout=0.25, **opts, **kw)


def _hx(mod: Recurrent, B: int, L: int):
    parts = []
    for name, size in zip(mod.state_names, mod.cell.state_sizes()):
        s = 0.5 * torch.randn(L, B, size, dtype=F64)
        parts.append(s.abs() + 0.5 if name == "n" else s)  # sLSTM's normaliser divides: keep it positive
    return tuple(parts)


def _run(mod: Recurrent, backend: str, x, hx, lengths, seed: int = 7):
    """Outputs, final states, gradients of a fixed random loss, and the next random number (RNG consumption)."""
    mod.backend = backend
    mod.zero_grad()
    xi = x.clone().requires_grad_()
    hi = tuple(s.clone().requires_grad_() for s in hx)
    torch.manual_seed(seed)
    out, hn = mod(xi, hi[0] if len(hi) == 1 else hi, lengths=lengths)
    after = torch.rand(1)
    hn = hn if isinstance(hn, tuple) else (hn,)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=F64)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=g, dtype=F64)).sum() for s in hn)
    loss.backward()
    return [out, *hn], [xi.grad, *(s.grad for s in hi), *(p.grad for p in mod.parameters())], after


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", DRIVER)
def test_dropout_and_zoneout_equal_the_reference(name: str, training: bool, monkeypatch) -> None:
    """Same masks from the same seed (and the same random numbers consumed), same outputs, states and every
    gradient, bidirectional (reverse within lengths), two layers; the driver ran every layer and direction."""
    mod = _module(name).train(training)
    x = torch.randn(6, 3, I, dtype=F64)
    lengths = torch.tensor([6, 2, 4])
    hx = _hx(mod, 3, 2 * mod.num_layers)
    ref_vals, ref_grads, ref_after = _run(mod, "reference", x, hx, lengths)
    calls = []
    real = generic_registry.DriverFunction.apply
    monkeypatch.setattr(generic_registry.DriverFunction, "apply", lambda *a: calls.append(a[0]) or real(*a))
    vals, grads, after = _run(mod, "cpp", x, hx, lengths)
    assert len(calls) == 2 * mod.num_layers, "the driver runs every layer and direction"
    torch.testing.assert_close(after, ref_after, atol=0, rtol=0)
    for a, b in zip(vals + grads, ref_vals + ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", RECORDING)
def test_recording_equals_the_reference(name: str) -> None:
    """Same gate names and values (padded steps 0, reverse direction in input order), with dropout and zoneout."""
    mod = _module(name)
    x = torch.randn(6, 3, I, dtype=F64)
    lengths = torch.tensor([6, 2, 4])
    got = {}
    for backend in ("reference", "cpp"):
        mod.backend = backend
        torch.manual_seed(3)
        with mod.recording() as rec:
            out, _ = mod(x, lengths=lengths)
        got[backend] = (out, rec.gates)
    (out_c, rec_c), (out_r, rec_r) = got["cpp"], got["reference"]
    torch.testing.assert_close(out_c, out_r, atol=1e-12, rtol=1e-10)
    assert rec_c.keys() == rec_r.keys()
    for key in rec_r:
        assert list(rec_c[key]) == list(rec_r[key]), "same names in the same order"
        for gate in rec_r[key]:
            torch.testing.assert_close(rec_c[key][gate], rec_r[key][gate], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", DRIVER)
def test_gradcheck_float64_with_dropout_and_zoneout(name: str) -> None:
    """The driver's BPTT through the masks: the same seed inside f gives the same masks at every evaluation."""
    torch.manual_seed(1)
    name, opts = _cell_args(name)
    if Recurrent(name, I, H).cell.needs_lower:  # the upper layer reads the lower one's states
        opts["num_layers"] = 2
    mod = Recurrent(name, I, H, dtype=F64, backend="cpp", recurrent_dropout=0.3, zoneout=0.25, **opts)
    names = [n for n, _ in mod.named_parameters()]
    x = torch.randn(4, 2, I, dtype=F64, requires_grad=True)
    hx = tuple(s.requires_grad_() for s in _hx(mod, 2, mod.num_layers))
    lengths = torch.tensor([4, 3])

    def f(x, *rest):
        torch.manual_seed(11)
        state = rest[:len(hx)]
        out, hn = torch.func.functional_call(mod, dict(zip(names, rest[len(hx):])),
                                             (x, state[0] if len(state) == 1 else state), {"lengths": lengths})
        return (out, *(hn if isinstance(hn, tuple) else (hn,)))

    leaves = [p.detach().clone().requires_grad_() for p in mod.parameters()]
    assert torch.autograd.gradcheck(f, (x, *hx, *leaves))


def test_options_stay_on_the_cpp_backend() -> None:
    """Dropout, zoneout and recording calls of driver cells, the projected LSTM included, run on the cpp backend."""
    x = torch.randn(5, 2, I)
    for name, kw, backend in (("lstm", {"proj_size": 2}, "cpp"), ("indrnn", {}, "cpp")):
        mod = Recurrent(name, I, H, **kw)
        cell = mod.cell
        state = cell.init_state(2, dtype=x.dtype, device=x.device)
        mask = torch.ones(2, cell.state_sizes()[0])
        for opts in ({"zoneout": 0.1, "training": True}, {"record": True}, {"rec_mask": mask}):
            call = LayerCall(cell=cell, params=mod.layer_params(0, 0), x=x, state=state, **opts)
            assert select_backend(call).name == backend


def test_a_zoneout_state_that_is_not_a_prefix_stays_on_the_reference() -> None:
    """The keep masks cover the leading state parts named h / c (those the reference mixes)."""
    from rnnlab.cells.slstm import SLSTMCell

    class Reordered(SLSTMCell):
        state_names = ("h", "n", "c", "m")

    cell = SLSTMCell(I, H)
    assert generic_registry.zoned_parts(cell) == 2
    assert generic_registry.zoned_parts(Reordered(I, H)) is None
    x = torch.randn(5, 2, I)
    call = LayerCall(cell=Reordered(I, H), params=dict(Reordered(I, H).named_parameters()), x=x,
                     state=cell.init_state(2, dtype=x.dtype, device=x.device), zoneout=0.1, training=True)
    assert isinstance(select_backend(call), ReferenceBackend)
