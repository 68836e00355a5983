"""The Triton GPU driver and its per-cell rules, run on the CPU by Triton's interpreter, against the reference."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # read by Triton when the kernels are defined (lazily, on use)

import pytest
import torch

import rnnlab
from rnnlab.backends import LayerCall, get_backend

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="TRITON_INTERPRET was set to something else before this module")

#: every cell the Triton driver claims, with the options that select its rule's flags
CELLS = ["lstm", "peephole", "cifg", "greff_v", "greff_nig", "greff_nfg", "greff_nog", "greff_niaf", "greff_noaf",
         "greff_np", "greff_cifg", "gru", "rnn", "rnn_relu"]


@pytest.fixture(autouse=True)
def _triton_on_cpu(monkeypatch):
    monkeypatch.setenv("RNNLAB_TRITON_ON_CPU", "1")


def _pair(name: str, dtype=torch.float64, input_size=3, hidden_size=5, **kw):
    ref = rnnlab.Recurrent(name, input_size, hidden_size, backend="reference", dtype=dtype, **kw)
    tri = rnnlab.Recurrent(name, input_size, hidden_size, backend="triton", dtype=dtype, **kw)
    tri.load_state_dict(ref.state_dict())
    return ref, tri


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


def _compare(ref, tri, x, *, lengths=None, hx=None, atol=1e-12, rtol=1e-10, equal_nan=False, grads=True,
             seed=None):
    """Outputs, final states and every gradient equal; ``seed``: reseeded before each forward (same masks)."""
    xr = x.detach().clone().requires_grad_(grads)
    xt = x.detach().clone().requires_grad_(grads)
    if seed is not None:
        torch.manual_seed(seed)
    o1, s1 = ref(xr, hx, lengths=lengths)
    if seed is not None:
        torch.manual_seed(seed)
    o2, s2 = tri(xt, hx, lengths=lengths)
    torch.testing.assert_close(o2, o1, atol=atol, rtol=rtol, equal_nan=equal_nan)
    for a, b in zip(_parts(s2), _parts(s1)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, equal_nan=equal_nan)
    if grads:
        w = torch.randn_like(o1)
        l1 = (o1 * w).sum() + sum(s.sum() for s in _parts(s1))
        l2 = (o2 * w).sum() + sum(s.sum() for s in _parts(s2))
        # allow_unused: the depth-gated first layer leaves its depth-gate diagonals unused (None in both)
        g1 = torch.autograd.grad(l1, [xr, *ref.parameters()], allow_unused=True)
        g2 = torch.autograd.grad(l2, [xt, *tri.parameters()], allow_unused=True)
        for (n, _), a, b in zip([("x", None), *ref.named_parameters()], g2, g1):
            assert (a is None) == (b is None), f"grad {n}: {a} vs {b}"
            if a is not None:
                torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"grad {n}: {m}")


@pytest.mark.parametrize("name", CELLS)
def test_parity_layers_bidirectional_lengths(name):
    torch.manual_seed(0)
    ref, tri = _pair(name, num_layers=2, bidirectional=True)
    _compare(ref, tri, torch.randn(6, 4, 3, dtype=torch.float64), lengths=[6, 4, 2, 1])


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_parity_float32_with_initial_state(name):
    torch.manual_seed(1)
    ref, tri = _pair(name, dtype=torch.float32)
    x = torch.randn(7, 3, 3)
    hx = tuple(torch.randn(1, 3, s) for s in ref.cell.state_sizes())
    _compare(ref, tri, x, hx=hx[0] if len(hx) == 1 else hx, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["peephole", "gru", "rnn_relu"])
def test_recurrent_dropout_same_mask_same_result(name):
    torch.manual_seed(2)
    ref, tri = _pair(name, recurrent_dropout=0.3)
    ref.train(), tri.train()
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    # the wrapper draws one mask per layer/direction before the backend runs: same seed, same masks
    _compare(ref, tri, x, lengths=[5, 3, 3, 1], seed=7)
    torch.manual_seed(7)
    o1, _ = ref(x)
    o2, _ = tri(x)  # another mask
    assert not torch.allclose(o1, o2)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_zoneout_eval_is_the_expectation(name):
    torch.manual_seed(3)
    ref, tri = _pair(name, zoneout=0.25, num_layers=2)
    ref.eval(), tri.eval()
    _compare(ref, tri, torch.randn(6, 3, 3, dtype=torch.float64), lengths=[6, 5, 2])


@pytest.mark.parametrize("proj_size", [0, 2])
def test_zoneout_training_keeps_units_and_gradients_match_the_cells_step(proj_size):
    """Training zoneout: each unit either keeps its previous value exactly or takes the new one; the gradient
    equals autograd through the cell's own step with the very same keep masks (with a projection: h is
    blended by the driver after W_hr)."""
    from rnnlab.backends.gpu.driver import LoopSpec, RecurrentLoop, differentiable_loop
    from rnnlab.backends.gpu.rules import rule_for

    torch.manual_seed(4)
    cell = rnnlab.LSTMCell(3, 4, proj_size=proj_size, dtype=torch.float64)
    p = dict(cell.named_parameters())
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(2, s, dtype=torch.float64) for s in cell.state_sizes())
    valid = torch.ones(5, 2, dtype=torch.int8)
    keeps = tuple(torch.empty(5, 2, s, dtype=torch.float64).bernoulli_(0.5) for s in cell.state_sizes())
    spec = LoopSpec(cell, rule_for(cell), tuple(p), 2)
    out, _, h, c = RecurrentLoop.apply(spec, x, valid, None, keeps, *state, *p.values())
    prev = torch.cat([state[0].unsqueeze(0), out[:-1]])
    kept = keeps[0].bool()
    assert torch.equal(out[kept], prev[kept]) and not torch.equal(out, prev)
    ref_out, (ref_h, ref_c), _ = differentiable_loop(cell, p, x, valid, None, keeps, state)
    torch.testing.assert_close(out, ref_out)
    g1 = torch.autograd.grad((out.sum() + c.sum()), [x, *p.values()])
    g2 = torch.autograd.grad((ref_out.sum() + ref_c.sum()), [x, *p.values()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["peephole", "cifg", "gru", "rnn"])
def test_recording_equals_the_reference(name):
    torch.manual_seed(5)
    ref, tri = _pair(name, bidirectional=True)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    with ref.recording() as r1:
        ref(x, lengths=[5, 3, 2])
    with tri.recording() as r2:
        tri(x, lengths=[5, 3, 2])
    for key, gates in r1.gates.items():
        assert set(r2[key]) == set(gates)
        for g, v in gates.items():
            torch.testing.assert_close(r2[key][g], v, msg=lambda m: f"{key} {g}: {m}")


@pytest.mark.parametrize("name", ["peephole", "cifg", "greff_noaf", "gru", "rnn"])
def test_gradcheck_and_gradgradcheck(name):
    torch.manual_seed(6)
    tri = rnnlab.Recurrent(name, 2, 2, backend="triton", dtype=torch.float64)
    names = [n for n, _ in tri.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        out, state = torch.func.functional_call(tri, dict(zip(names, ps)), (x,), {"lengths": [3, 2]})
        return (out,) + _parts(state)

    params = list(tri.parameters())

    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in params])
    # fast_mode: the same Jacobian check through random projections (the interpreter is slow)
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("name", ["lstm", "peephole", "cifg", "gru", "rnn", "rnn_relu"])
@pytest.mark.parametrize("scale", [600.0, 1e4])
def test_extreme_inputs_match_the_reference(name, scale):
    torch.manual_seed(8)
    ref, tri = _pair(name, dtype=torch.float32)
    x = torch.rand(4, 6, 3) * scale
    _compare(ref, tri, x, atol=1e-5, rtol=1e-5, grads=False)
    out, _ = tri(x)
    assert torch.isfinite(out).all() or name == "rnn_relu"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["lstm", "peephole", "greff_niaf", "gru", "rnn", "greff_fgr", "clockwork",
                                  "depth_gated"])
def test_infinite_inputs_match_the_reference(name, dtype):
    torch.manual_seed(9)
    ref, tri = _pair(name, dtype=dtype, num_layers=2 if name == "depth_gated" else 1)  # (upper layer reads c below)
    x = torch.randn(3, 4, 3, dtype=dtype)
    x[0, 0, 0], x[1, 2, 1], x[2, 3, 2] = float("inf"), float("-inf"), float("inf")
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    _compare(ref, tri, x, equal_nan=True, grads=False, atol=tol, rtol=tol)
    # gradients, NaN where the reference has NaN (autograd's 0 * inf in the weight gradients of saturated gates)
    xr, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (o1, s1), (o2, s2) = ref(xr), tri(xt)
    w = torch.randn_like(o1)
    g1 = torch.autograd.grad((o1 * w).sum() + sum(s.sum() for s in _parts(s1)), [xr, *ref.parameters()],
                             allow_unused=True)
    g2 = torch.autograd.grad((o2 * w).sum() + sum(s.sum() for s in _parts(s2)), [xt, *tri.parameters()],
                             allow_unused=True)
    for (n, _), a, b in zip([("x", None), *ref.named_parameters()], g2, g1):
        assert (a is None) == (b is None), n
        if a is None:
            continue
        if name == "depth_gated" and n == "weight_ih_l0":
            # the first layer has no layer below, so its depth-gate rows are unused: the reference projects them
            # anyway (0 * inf = NaN in their gradient), the kernels leave them out (exactly 0)
            H = tri.hidden_size
            assert torch.equal(a[4 * H:], torch.zeros_like(a[4 * H:]))
            a, b = a[:4 * H], b[:4 * H]
        assert torch.isnan(b).any() or n != "weight_ih_l0"  # the inputs do reach NaN: the check is not vacuous
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, equal_nan=True, msg=lambda m: f"grad {n}: {m}")


@pytest.mark.parametrize("name, kw", [("mingru", {"scan": "log"})])
def test_cells_without_a_rule_are_refused_not_silently_run(name, kw):
    rnn = rnnlab.Recurrent(name, 3, 4, **kw)
    x = torch.randn(2, 1, 3)
    call = LayerCall(cell=rnn.cell, params=rnn.layer_params(0), x=x,
                     state=rnn.cell.init_state(1, dtype=x.dtype, device=x.device))
    assert not get_backend("triton").supports(call)
    with pytest.raises(ValueError, match="triton"):
        rnnlab.Recurrent(name, 3, 4, backend="triton", **kw)(x)


def test_auto_on_cpu_keeps_the_cpp_kernels():
    rnn = rnnlab.Recurrent("lstm", 3, 4)
    x = torch.randn(2, 1, 3)
    call = LayerCall(cell=rnn.cell, params=rnn.layer_params(0), x=x,
                     state=rnn.cell.init_state(1, dtype=x.dtype, device=x.device))
    from rnnlab.backends import select_backend

    assert select_backend(call).name != "triton"  # the C++ kernels (or the reference) come first on the CPU


def test_cpu_tensors_refused_without_the_opt_in(monkeypatch):
    monkeypatch.delenv("RNNLAB_TRITON_ON_CPU")
    rnn = rnnlab.Recurrent("lstm", 3, 4)
    x = torch.randn(2, 1, 3)
    call = LayerCall(cell=rnn.cell, params=rnn.layer_params(0), x=x,
                     state=rnn.cell.init_state(1, dtype=x.dtype, device=x.device))
    assert not get_backend("triton").supports(call)


@pytest.mark.parametrize("name", ["lstm", "peephole", "gru", "rnn"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_storage_within_its_tolerance_of_fp32(name, dtype):
    """bf16/fp16 storage (GEMMs and activations) with fp32 element-wise math and fp32 states."""
    torch.manual_seed(10)
    ref = rnnlab.Recurrent(name, 3, 8, backend="reference")
    low = rnnlab.Recurrent(name, 3, 8, backend="triton", dtype=dtype)
    low.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    x = torch.randn(6, 4, 3)
    o1, _ = ref(x, lengths=[6, 5, 3, 1])
    o2, s2 = low(x.to(dtype), lengths=[6, 5, 3, 1])
    assert o2.dtype == dtype
    tol = 3e-2 if dtype == torch.bfloat16 else 5e-3
    torch.testing.assert_close(o2.float(), o1, atol=tol, rtol=tol)
    g = torch.autograd.grad(o2.float().sum(), list(low.parameters()))
    g_ref = torch.autograd.grad(ref(x, lengths=[6, 5, 3, 1])[0].sum(), list(ref.parameters()))
    for a, b in zip(g, g_ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=tol * 4, rtol=tol * 4)


@pytest.mark.parametrize("name", ["lstm", "gru", "greff_fgr", "clockwork", "depth_gated"])
def test_autocast_runs_bf16_and_keeps_fp32_weights_and_states(name):
    torch.manual_seed(11)
    ref, tri = _pair(name, dtype=torch.float32, num_layers=2)
    x = torch.randn(5, 3, 3)
    o1, s1 = ref(x)
    with torch.autocast("cpu", torch.bfloat16):
        o2, s2 = tri(x)
    assert o2.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in _parts(s2))
    torch.testing.assert_close(o2.float(), o1, atol=3e-2, rtol=3e-2)
    o2.float().sum().backward()
    o1.sum().backward()
    for p, q in zip(tri.parameters(), ref.parameters()):  # (the depth-gated first layer's d diagonals: no grad)
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or p.grad.dtype == torch.float32)


# --- the rules beyond the LSTM/GRU/Elman family: (cell, options); sizes kept tiny for the interpreter --------
#: "_id": I == H, where the cell's own projection passes x itself through (SRU highway, MUT1/MUT2 raw-x term)
NEW = {"gru_paper": ("gru_paper", {}), "indrnn": ("indrnn", {}), "indrnn_tanh": ("indrnn", {"nonlinearity": "tanh"}),
       "sru": ("sru", {}), "sru_id": ("sru", {"input_size": 4}), "slstm": ("slstm", {"num_heads": 2}),
       "mut1_id": ("mut1", {"input_size": 4}), "mut2": ("mut2", {}),
       "mingru": ("mingru", {}), "minlstm": ("minlstm", {}), "mingru_seq": ("mingru", {"scan": "sequential"}),
       "ln_gru": ("ln_gru", {}), "ln_lstm": ("ln_lstm", {}), "ln_lstm_nobias": ("ln_lstm", {"bias": False}),
       "mut3": ("mut3", {}), "lstmp": ("lstm", {"proj_size": 3}),
       "lstmp_peep": ("peephole", {"proj_size": 2, "peepholes": "ifo"}),
       "fgr": ("greff_fgr", {}), "fgr_proj": ("greff_fgr", {"proj_size": 2}),
       "fgr_cifg_nog": ("lstm", {"full_gate_recurrence": True, "coupled": True, "output_gate": False}),
       "clockwork": ("clockwork", {}), "clockwork_13": ("clockwork", {"periods": (1, 3)}),
       "depth_gated": ("depth_gated", {"num_layers": 2}),
       "depth_gated_3_nopeep": ("depth_gated", {"num_layers": 3, "peepholes": False}),
       "depth_gated_nobias": ("depth_gated", {"num_layers": 2, "bias": False})}
#: cells with a single zoned-out state part (clockwork's counter never zones out): training-mode zoneout draws
#: the reference's masks in the same order
SINGLE = ["gru_paper", "indrnn", "indrnn_tanh", "mut1_id", "mut2", "mingru", "minlstm", "mingru_seq", "ln_gru",
          "mut3", "clockwork", "clockwork_13"]


def _new_pair(key: str, dtype=torch.float64, **extra):
    name, kw = NEW[key]
    kw = {"hidden_size": 4, **kw, **extra}
    ref, tri = _pair(name, dtype, **kw)
    # the Triton backend must really claim the cell (backend="triton" raises otherwise; this says why)
    x = torch.randn(2, 1, ref.input_size, dtype=dtype)
    call = LayerCall(cell=tri.cell, params=tri.layer_params(0), x=x,
                     state=tri.cell.init_state(1, dtype=x.dtype, device=x.device))
    assert get_backend("triton").supports(call)
    return ref, tri


@pytest.mark.parametrize("key", NEW)
def test_new_rules_parity_bidirectional_lengths_float64(key):
    torch.manual_seed(20)
    ref, tri = _new_pair(key, bidirectional=True)
    _compare(ref, tri, torch.randn(4, 3, ref.input_size, dtype=torch.float64), lengths=[4, 2, 1])


@pytest.mark.parametrize("key", NEW)
def test_new_rules_parity_float32_initial_state_two_layers(key):
    torch.manual_seed(21)
    ref, tri = _new_pair(key, dtype=torch.float32, num_layers=2)
    hx = tuple(torch.randn(2, 3, s) for s in ref.cell.state_sizes())
    _compare(ref, tri, torch.randn(4, 3, ref.input_size), hx=hx[0] if len(hx) == 1 else hx, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("key", NEW)
def test_new_rules_recurrent_dropout_and_zoneout(key):
    """Training: recurrent dropout (and zoneout where the masks are drawn in the reference's order); eval:
    zoneout's expectation."""
    torch.manual_seed(22)
    ref, tri = _new_pair(key, recurrent_dropout=0.4, zoneout=0.3 if key in SINGLE else 0.0)
    ref.train(), tri.train()
    x = torch.randn(4, 3, ref.input_size, dtype=torch.float64)
    _compare(ref, tri, x, lengths=[4, 3, 1], seed=7)
    torch.manual_seed(7)
    o1, _ = ref(x)
    o2, _ = tri(x)  # other masks
    assert not torch.allclose(o1, o2)
    ref, tri = _new_pair(key, zoneout=0.3)
    ref.eval(), tri.eval()
    _compare(ref, tri, x, lengths=[4, 3, 1])


@pytest.mark.parametrize("key", NEW)
def test_new_rules_recording_equals_the_reference(key):
    torch.manual_seed(23)
    ref, tri = _new_pair(key)
    x = torch.randn(3, 3, ref.input_size, dtype=torch.float64)
    with ref.recording() as r1:
        ref(x, lengths=[3, 2, 1])
    with tri.recording() as r2:
        tri(x, lengths=[3, 2, 1])
    for key_, gates in r1.gates.items():
        assert set(r2[key_]) == set(gates)
        for g, v in gates.items():
            torch.testing.assert_close(r2[key_][g], v, msg=lambda m: f"{key_} {g}: {m}")


#: gradcheck once per kernel (the interpreter re-runs the layer for every input element): variants that only
#: drop parameters or change the reference's path are covered by the parity tests' gradients
GRADCHECK = [k for k in NEW if k not in ("ln_lstm_nobias", "mingru_seq", "lstmp_peep", "fgr_cifg_nog", "clockwork_13",
                                         "depth_gated_3_nopeep", "depth_gated_nobias")]


@pytest.mark.parametrize("key", GRADCHECK)
def test_new_rules_gradcheck_and_gradgradcheck(key):
    torch.manual_seed(24)
    name, kw = NEW[key]
    # I == H = 2 except where the projection is the point (SRU's highway, MUT2's r)
    kw = {k: (1 if k == "proj_size" else v) for k, v in kw.items() if k != "input_size"}  # P < H = 2
    tri = rnnlab.Recurrent(name, 3 if key in ("sru", "mut2") else 2, 2, backend="triton", dtype=torch.float64,
                           **kw)
    names = [n for n, _ in tri.named_parameters()]
    x = torch.randn(3, 2, tri.input_size, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        out, state = torch.func.functional_call(tri, dict(zip(names, ps)), (x,), {"lengths": [3, 2]})
        return (out,) + _parts(state)

    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in tri.parameters()])
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("key", NEW)
def test_new_rules_extreme_inputs_finite_and_equal(key):
    torch.manual_seed(25)
    ref, tri = _new_pair(key, dtype=torch.float32)
    x = (torch.rand(3, 4, ref.input_size) * 2 - 1) * 1e4
    hx = None
    if key == "slstm":  # n_0 = 1: with n_0 = 0 the cell's own n underflows to 0 and h = 0/0 (see SLSTMCell)
        hx = tuple(torch.full((1, 4, 4), float(k == 2)) for k in range(4))
    _compare(ref, tri, x, hx=hx, atol=1e-5, rtol=1e-5, grads=False)
    out, _ = tri(x, hx)
    assert torch.isfinite(out).all() or key == "indrnn"  # ReLU is unbounded


@pytest.mark.parametrize("key", ["gru_paper", "sru", "slstm", "minlstm", "ln_lstm", "fgr", "clockwork", "depth_gated"])
def test_new_rules_bf16_storage_within_its_tolerance_of_fp32(key):
    torch.manual_seed(26)
    ref, _ = _new_pair(key, dtype=torch.float32)
    name, kw = NEW[key]
    low = rnnlab.Recurrent(name, ref.input_size, 4, backend="triton", dtype=torch.bfloat16,
                           **{k: v for k, v in kw.items() if k != "input_size"})
    low.load_state_dict({k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()})
    x = torch.randn(4, 3, ref.input_size)
    o1, _ = ref(x, lengths=[4, 3, 1])
    o2, _ = low(x.bfloat16(), lengths=[4, 3, 1])
    assert o2.dtype == torch.bfloat16
    torch.testing.assert_close(o2.float(), o1, atol=3e-2, rtol=3e-2)
    g = torch.autograd.grad(o2.float().sum(), list(low.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(ref(x, lengths=[4, 3, 1])[0].sum(), list(ref.parameters()), allow_unused=True)
    for a, b in zip(g, g_ref):
        assert (a is None) == (b is None)
        if a is None:  # the depth-gated first layer's depth-gate diagonals
            continue
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b, atol=0.12, rtol=0.12)


@pytest.mark.parametrize("name", ["ln_gru", "ln_lstm"])
def test_layer_norm_rows_wider_than_the_limit_are_refused_with_one_warning(name, monkeypatch, caplog):
    """One program holds a batch row: past the limit the Triton backend declines, says so once, and the
    layer runs on the next backend."""
    from rnnlab.backends.gpu import layernorm

    monkeypatch.setattr(layernorm, "MAX_HIDDEN", 3)
    monkeypatch.setattr(layernorm, "_warned", set())
    rnn = rnnlab.Recurrent(name, 3, 4, dtype=torch.float64)
    x = torch.randn(2, 1, 3, dtype=torch.float64)
    call = LayerCall(cell=rnn.cell, params=rnn.layer_params(0), x=x,
                     state=rnn.cell.init_state(1, dtype=x.dtype, device=x.device))
    with caplog.at_level("WARNING", logger="rnnlab.backends"):
        assert not get_backend("triton").supports(call)
        assert not get_backend("triton").supports(call)
    warnings = [r.getMessage() for r in caplog.records if "layer-norm row limit" in r.getMessage()]
    assert len(warnings) == 1 and f"{name} with hidden_size=4" in warnings[0] and "cpu" in warnings[0]
    monkeypatch.setattr(layernorm, "MAX_HIDDEN", 4)
    assert get_backend("triton").supports(call)


@pytest.mark.parametrize("name", ["lstm", "gru", "fgr"])
def test_every_step_state_equals_the_reference_with_its_gradient(name):
    """``want_states`` (what a layer above reads as its ``lower``): each step's state, reverse within lengths,
    zero-free at padded steps as the reference keeps them, and gradients through them."""
    torch.manual_seed(27)
    cell_name, kw = NEW[name] if name in NEW else (name, {})
    rnn = rnnlab.Recurrent(cell_name, 3, 4, dtype=torch.float64, **kw)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 3, 1])
    results = []
    for backend in ("reference", "triton"):
        xr = x.clone().requires_grad_(True)
        params = {k: v.detach().clone().requires_grad_(True) for k, v in rnn.layer_params(0).items()}
        state = rnn.cell.init_state(3, dtype=x.dtype, device=x.device)
        call = LayerCall(cell=rnn.cell, params=params, x=xr, state=state, lengths=lengths, reverse=True,
                         want_states=True)
        assert get_backend(backend).supports(call)
        res = get_backend(backend).run(call)
        assert len(res.states) == len(state) and all(s.shape[0] == 5 for s in res.states)
        torch.manual_seed(28)
        loss = sum((s * torch.randn_like(s)).sum() for s in res.states) + res.output.sum()
        results.append((res.states, torch.autograd.grad(loss, [xr, *params.values()], allow_unused=True)))
    (s1, g1), (s2, g2) = results
    for a, b in zip(s2, s1):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    for a, b in zip(g2, g1):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
