"""The generic C++ driver (backends/cpp/driver.h) and the cells on it: fused == reference, gradcheck, extremes."""

from __future__ import annotations

import pytest
import torch

from rnnlab import Recurrent
from rnnlab.backends.cpp import generic_registry
from rnnlab.backends.cpp.generic_loader import build_key, load_generic, sources

needs_driver = pytest.mark.skipif(load_generic() is None, reason="the generic C++ driver could not be built here")
pytestmark = [needs_driver, pytest.mark.usefixtures("single_thread")]

F64 = torch.float64
# (registered name, options): every cell of the driver, I != H and I == H (SRU's highway x' = x)
CASES = [("indrnn", {}, 3), ("indrnn", {"nonlinearity": "tanh"}, 3), ("sru", {}, 3), ("sru", {}, 4),
         ("slstm", {"num_heads": 2}, 3), ("slstm", {}, 3),
         # a second product inside the step (W (r ⊙ h)); MUT3 also mapped rows (W_hz tanh(h))
         ("gru_paper", {}, 3), ("gru_paper", {"bias": False}, 3), ("mut1", {}, 4), ("mut1", {}, 3),
         ("mut1", {"bias": False}, 4),
         ("mut2", {"bias": False}, 4), ("mut2", {}, 4), ("mut2", {}, 3), ("mut3", {}, 3), ("mut3", {"bias": False}, 4),
         # the output projection the driver forms itself (h = m W_hrᵀ), with peepholes and without biases
         ("lstm", {"proj_size": 2}, 3), ("lstm", {"proj_size": 3, "peepholes": True, "bias": False}, 3),
         # a product from another state part (Greff's FGR: a_{t-1} W_ggᵀ into i, f, o), with absent gates
         ("greff_fgr", {}, 3), ("lstm", {"full_gate_recurrence": True, "input_gate": False}, 3),
         ("lstm", {"full_gate_recurrence": True, "coupled": True, "bias": False}, 3)]
H = 4


def _run(mod: Recurrent, backend: str, x: torch.Tensor, lengths=None, hx=None):
    """Outputs, final states and the gradients of a fixed random loss w.r.t. input, initial state, parameters."""
    mod.backend = backend  # "cpp" raises if the backend refuses the call: no silent fallback
    mod.zero_grad()
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(s.detach().clone().requires_grad_() for s in hx)
    out, hn = mod(x, None if hx is None else (hx[0] if len(hx) == 1 else hx), lengths=lengths)
    hn = hn if isinstance(hn, tuple) else (hn,)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum() for s in hn)
    loss.backward()
    grads = [x.grad] + ([] if hx is None else [s.grad for s in hx]) + [p.grad for p in mod.parameters()]
    return [out, *hn], grads


def _state(mod: Recurrent, B: int, dtype: torch.dtype):
    L = mod.num_layers * (2 if mod.bidirectional else 1)
    return tuple(0.5 * torch.randn(L, B, s, dtype=dtype) for s in mod.cell.state_sizes())


def _lstate(mod, B, dtype):
    # sLSTM's normaliser must stay positive (it divides): a state a previous step could have left
    parts = list(_state(mod, B, dtype))
    names = mod.cell.state_names
    if "n" in names:
        k = names.index("n")
        parts[k] = parts[k].abs() + 0.5
    return tuple(parts)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,kw,I", CASES)
def test_fused_equals_reference_bidirectional_two_layers_lengths(name, kw, I, dtype):
    torch.manual_seed(0)
    mod = Recurrent(name, I, H, num_layers=2, bidirectional=True, dtype=dtype, **kw)
    x = torch.randn(6, 3, I, dtype=dtype)
    lengths = torch.tensor([6, 2, 4])
    hx = _lstate(mod, 3, dtype)
    ref_vals, ref_grads = _run(mod, "reference", x, lengths, hx)
    vals, grads = _run(mod, "cpp", x, lengths, hx)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(vals + grads, ref_vals + ref_grads):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    assert bool((vals[0][2:, 1] == 0).all()), "padded steps give 0"


@pytest.mark.parametrize("name,kw,I", CASES)
def test_fused_gradcheck_float64(name, kw, I):
    torch.manual_seed(1)
    mod = Recurrent(name, I, H, dtype=F64, backend="cpp", **kw)
    cell = mod.cell
    params = dict(mod.named_parameters())
    names = list(params)
    x = torch.randn(4, 2, I, dtype=F64, requires_grad=True)
    hx = tuple(s.requires_grad_() for s in _lstate(mod, 2, F64))
    lengths = torch.tensor([4, 3])

    def f(x, *rest):
        state = rest[:len(hx)]
        out, hn = torch.func.functional_call(mod, dict(zip(names, rest[len(hx):])),
                                             (x, state[0] if len(state) == 1 else state),
                                             {"lengths": lengths})
        return (out, *(hn if isinstance(hn, tuple) else (hn,)))

    leaves = [p.detach().clone().requires_grad_() for p in params.values()]
    assert cell.driver_kernel
    assert torch.autograd.gradcheck(f, (x, *hx, *leaves))


def _extreme(kind: str, dtype: torch.dtype, I: int) -> torch.Tensor:
    x = torch.randn(6, 2, I, dtype=dtype)
    if kind == "x600":
        return x * 600
    if kind == "x1e4":
        return x * 1e4
    x[1, 0, 0] = float("inf")  # one infinite feature per affected step
    x[3, 1, 2] = -float("inf")
    x[4, 0, 1] = -float("inf")
    return x


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("scale", ["x600", "x1e4", "inf"])
@pytest.mark.parametrize("name,kw,I", CASES)
def test_extreme_inputs_equal_reference(name, kw, I, scale, dtype):
    torch.manual_seed(2)
    mod = Recurrent(name, I, H, dtype=dtype, **kw)
    x = _extreme(scale, dtype, I)
    ref_vals, ref_grads = _run(mod, "reference", x)
    vals, grads = _run(mod, "cpp", x)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for a, b in zip(vals, ref_vals):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, equal_nan=True)
    for a, b in zip(grads, ref_grads):
        keep = torch.isfinite(b)  # where the reference gradient is finite the fused one equals it
        torch.testing.assert_close(a[keep], b[keep], atol=tol, rtol=tol)


@pytest.mark.parametrize("name,kw,I", CASES)
def test_auto_backend_runs_the_driver(name, kw, I, monkeypatch):
    """The default backend really calls the driver (no silent reference fallback), once per layer and direction."""
    calls = []
    real = generic_registry.DriverFunction.apply
    monkeypatch.setattr(generic_registry.DriverFunction, "apply",
                        lambda *a: calls.append(a[0]) or real(*a))
    mod = Recurrent(name, I, H, num_layers=2, bidirectional=True, **kw)
    out, _ = mod(torch.randn(5, 2, I), lengths=torch.tensor([5, 3]))
    out.sum().backward()
    rule = mod.cell.driver_rule() if hasattr(mod.cell, "driver_rule") else mod.cell.driver_kernel
    assert calls == [rule] * 4
    assert generic_registry.driver_for(mod.cell) == rule


def test_a_subclass_that_changes_the_step_is_not_fused():
    from rnnlab.cells.indrnn import IndRNNCell

    class Changed(IndRNNCell):
        def step(self, xp_t, state, p, ctx=None):
            return super().step(xp_t, state, p)

    assert generic_registry.driver_for(IndRNNCell(2, 3)) == "indrnn"
    assert generic_registry.driver_for(Changed(2, 3)) is None


@pytest.mark.parametrize("name,kw,I", [("indrnn", {}, 3), ("sru", {}, 3), ("slstm", {"num_heads": 2}, 3)])
def test_second_derivatives_are_right_on_the_fused_path(name, kw, I):
    """create_graph=True recomputes through the cell's own step: gradgradcheck on the fused call, and a
    gradient penalty equal to the reference backend's."""
    torch.manual_seed(4)
    mod = Recurrent(name, I, H, backend="cpp", dtype=F64, **kw)
    names = [n for n, _ in mod.named_parameters()]
    x = torch.randn(4, 2, I, dtype=F64, requires_grad=True)

    def f(x, *ps):
        out, _ = torch.func.functional_call(mod, dict(zip(names, ps)), (x,), {"lengths": torch.tensor([4, 3])})
        return out

    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in mod.parameters()])
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)

    def penalty(backend):
        mod.backend = backend
        mod.zero_grad()
        out, _ = mod(x)
        (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        g.pow(2).sum().backward()
        return [p.grad.clone() for p in mod.parameters()]

    for a, b in zip(penalty("cpp"), penalty("reference")):
        torch.testing.assert_close(a, b)


def test_full_recurrence_elman_on_the_driver_equals_the_reference():
    """The driver's full-matrix recurrence (Rec::Full) and its dW GEMM, through cells/elman.h, vs ElmanCell."""
    ext = load_generic()
    torch.manual_seed(3)
    mod = Recurrent("rnn", 3, H, dtype=F64, backend="reference")
    w_ih, w_hh = mod.weight_ih_l0, mod.weight_hh_l0
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    lengths = torch.tensor([5, 3])
    out_ref, h_ref = mod(x, lengths=lengths)
    g_ref = torch.autograd.grad(out_ref.sum() + h_ref.sum(), (x, w_hh))
    xp = torch.nn.functional.linear(x, w_ih, mod.bias_ih_l0 + mod.bias_hh_l0)
    s0 = torch.zeros(2, H, dtype=F64)

    off = x.new_empty(0)
    out, h = generic_registry.DriverFunction.apply("elman", 0, 1, mod.cell, xp, w_hh, off, s0, lengths, off, off,
                                                   x, off)[:2]
    g = torch.autograd.grad(out.sum() + h.sum(), (x, w_hh))
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h, h_ref[0])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    assert ext is not None


def test_build_key_covers_every_source_and_header():
    names = {p.name for p in sources()}
    assert {"generic.cpp", "driver.h", "indrnn.h", "sru.h", "slstm.h"} <= names
    assert len(build_key()) == 16


def test_slstm_recurrence_is_block_diagonal_over_heads():
    """Head k's pre-activations see only head k's units of h_{t-1}: R is block-diagonal (fused and reference)."""
    from rnnlab.cells.slstm import SLSTMCell

    cell = SLSTMCell(3, 4, num_heads=2, dtype=F64)
    h = torch.zeros(1, 4, dtype=F64)
    h[0, 0] = 1.0  # a unit of head 0
    rec = cell.recurrent(h, cell.weight_hh).view(4, 2, 2)  # (gate, head, unit)
    assert bool((rec[:, 1] == 0).all()) and bool((rec[:, 0] != 0).any())
    # fused == reference with 2 heads is covered by the tests above; here the head count changes the math
    torch.manual_seed(4)
    a = Recurrent("slstm", 3, 4, num_heads=2, dtype=F64, backend="cpp")
    b = Recurrent("slstm", 3, 4, num_heads=1, dtype=F64, backend="cpp")
    with torch.no_grad():
        for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            if pa.shape == pb.shape:
                pb.copy_(pa)
        b.weight_hh_l0.zero_()
        for k in range(2):  # the same R as a block-diagonal (4H, H) matrix with zero off-diagonal blocks
            b.weight_hh_l0.view(4, 2, 2, 4)[:, k, :, 2 * k:2 * k + 2] = a.weight_hh_l0.view(4, 2, 2, 2)[:, k]
    x = torch.randn(5, 2, 3, dtype=F64)
    torch.testing.assert_close(a(x)[0], b(x)[0])


def test_slstm_matches_the_papers_unstabilised_equations():
    """With the stabiliser removed (m cancels in h), h equals o ⊙ c̄ / n̄ of the paper's plain recurrence."""
    torch.manual_seed(5)
    mod = Recurrent("slstm", 3, 4, num_heads=2, dtype=F64, backend="cpp")
    cell, x = mod.cell, torch.randn(6, 2, 3, dtype=F64)
    out, _ = mod(x)
    p = {n: getattr(mod, f"{n}_l0") for n in ("weight_ih", "weight_hh", "bias_ih")}
    h = c = n = torch.zeros(2, 4, dtype=F64)
    for t in range(6):
        pre = x[t] @ p["weight_ih"].T + p["bias_ih"] + cell.recurrent(h, p["weight_hh"])
        z, i, f, o = pre.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.exp(i) * torch.tanh(z)
        n = torch.sigmoid(f) * n + torch.exp(i)
        h = torch.sigmoid(o) * c / n
        torch.testing.assert_close(out[t], h)
