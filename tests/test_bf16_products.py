"""The driver's bf16 products under CPU autocast: every rule, in bf16 for real, within bf16 tolerance of float32.

Under ``torch.autocast("cpu", torch.bfloat16)`` the autocast rule of ``torch.ops.rnnlab.driver_*`` asks for bf16
products (a bit of the option word) where the CPU has native bf16 GEMMs, and the driver then runs its products
in bf16 (gemm.h ReducedProducts).  The thresholds are lowered to 0 here so that the tiny test shapes take that
path for every product; a spy on the extension proves that every call asked for them (nothing silently stays
float32).
"""

from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import Recurrent
from rnnlab.backends.cpp import generic_ops, generic_registry
from rnnlab.backends.cpp.generic_loader import load_generic
from rnnlab.backends.reference import ReferenceBackend

needs_bf16 = pytest.mark.skipif(load_generic() is None or not generic_ops.native_bf16(),
                                reason="the generic C++ driver could not be built, or this CPU has no native bf16 "
                                       "GEMMs (the driver keeps float32 products there: tested below)")
pytestmark = [pytest.mark.skipif(load_generic() is None, reason="the generic C++ driver could not be built here"),
              pytest.mark.usefixtures("single_thread")]

I, H, B, T = 3, 8, 3, 6
LENGTHS = torch.tensor([T, 4, 2])
_BY_RULE: dict[str, str] = {}
for _n in rnnlab.cell_names():
    _rule = generic_registry.driver_for(Recurrent(_n, I, H).cell)
    if _rule is not None:
        _BY_RULE.setdefault(_rule, _n)
_VARIANTS: dict[str, tuple[str, dict]] = {"lstmp": ("lstm", {"proj_size": 5}),
                                          "lstm_fgr": ("greff_fgr", {}),
                                          "depth_gated_2layers": ("depth_gated", {"num_layers": 2}),
                                          "slstm_2heads": ("slstm", {"num_heads": 2}),
                                          "lstm_options": ("lstm", {"recurrent_dropout": 0.3, "zoneout": 0.2})}
RULES = sorted(set(_BY_RULE.values()) | set(_VARIANTS))
# rules whose driver forms no product (no recurrent weight, or a diagonal one): bf16 xp changes nothing there
NO_PRODUCT = {"indrnn", "sru", "mingru", "minlstm"}
# ‖bf16 - fp32‖ / ‖fp32‖ per output, state and gradient (bf16 keeps 8 bits: 2^-8 = 0.4% per rounding; a
# layer-normalised cell's gain gradients reach 2%)
TOLERANCE = 4e-2


def _module(name: str) -> Recurrent:
    torch.manual_seed(0)
    cell, opts = _VARIANTS.get(name, (name, {}))
    # eval: zoneout's expectation (no draws), so runs are comparable; backend "cpp": the driver, never torch.nn's op
    return Recurrent(cell, I, H, bidirectional=True, backend="cpp", **opts).eval()


def _run(mod: Recurrent, x: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    """Outputs, final states, and the gradients of a fixed loss for the input and every parameter."""
    mod.zero_grad()
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out, hn = mod(x, lengths=LENGTHS)
    hn = hn if isinstance(hn, tuple) else (hn,)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    loss = (out.float() * weight).sum() + sum(s.float().sum() for n, s in zip(mod.state_names, hn) if n != "n")
    loss.backward()
    return [out, *hn, x.grad, *(p.grad for p in mod.parameters() if p.grad is not None)]


@pytest.fixture
def all_bf16():
    """Every product, per step and once per call, in bf16 (restored afterwards)."""
    ext = load_generic()
    before = ext.reduced_min_macs()
    ext.set_reduced_min_macs(0, 0)
    yield
    ext.set_reduced_min_macs(*before)


class Calls(list):
    """(kind, bf16 products asked for) per extension call; ``xp``: the dtype of each call's xp."""

    def __init__(self) -> None:
        super().__init__()
        self.xp: list[torch.dtype] = []

    def clear(self) -> None:
        super().clear()
        self.xp.clear()


@pytest.fixture
def spy(monkeypatch):
    """For every forward / inference / backward call made to the extension (by the op or directly): whether it
    asked for bf16 products (and, in ``.xp``, the dtype of its xp)."""
    seen = Calls()
    real = load_generic()

    class Spy:
        def __getattr__(self, attr: str):
            fn = getattr(real, attr)
            kind = attr.rsplit("_", 1)[-1]
            if kind not in ("forward", "infer", "backward"):
                return fn
            bit = generic_ops.BF16_PRODUCTS_BIT

            def call(*a):
                seen.append((kind, bool(a[7 if kind == "backward" else 6] & bit)))
                seen.xp.append(a[2 if kind == "backward" else 0].dtype)
                return fn(*a)
            return call

    monkeypatch.setattr(generic_ops, "_ext", Spy)
    monkeypatch.setattr(generic_registry, "load_generic", Spy)
    return seen


@pytest.fixture
def no_reference(monkeypatch):
    def refuse(self, call):
        raise AssertionError(f"{call.cell.kind} ran on the reference backend")

    monkeypatch.setattr(ReferenceBackend, "run", refuse)


def _products(on: bool):
    generic_ops.BF16_PRODUCTS = on


@pytest.fixture
def restore_products():
    yield
    generic_ops.BF16_PRODUCTS = True


@needs_bf16
@pytest.mark.parametrize("name", RULES)
def test_bf16_products_within_tolerance_of_float32(name: str, all_bf16, spy, no_reference,
                                                   restore_products) -> None:
    mod = _module(name)
    x = torch.randn(T, B, I)
    want = _run(mod, x, autocast=False)
    spy.clear()
    got = _run(mod, x, autocast=True)
    # a rule without a product has nothing to run in bf16 (IndRNN's diagonal is read by its element-wise rule)
    bf16 = name not in NO_PRODUCT
    assert set(spy) == {("forward", bf16), ("backward", bf16)}
    assert got[0].dtype == torch.float32  # the states and outputs stay float32
    n_states = 1 + len(mod.state_names)
    for a, b in zip(got[:n_states], want):  # outputs and states against float32 without autocast
        assert _relative(a, b) <= TOLERANCE
    spy.clear()
    _products(False)  # the same autocast (the same bf16 projection) with float32 products
    fp32_products = _run(mod, x, autocast=True)
    assert set(spy) == {("forward", False), ("backward", False)}
    for a, b in zip(got, fp32_products):  # every output, state and gradient: what the bf16 products change
        assert _relative(a, b) <= TOLERANCE
    same = all(torch.equal(a, b) for a, b in zip(got, fp32_products))
    # xp is the same bf16 projection either way: only a product can make the two differ
    assert same == (name in NO_PRODUCT), "bf16 products changed nothing" if same else "no product, yet it differs"


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a - b‖ / ‖b‖ (plus a floor for an all-zero b)."""
    return float((a.detach().float() - b.detach()).norm()) / (float(b.detach().norm()) + 1e-6)


@needs_bf16
@pytest.mark.parametrize("scale", ["x600", "x1e4", "inf"])
@pytest.mark.parametrize("name", ["gru_paper", "peephole", "slstm", "mut3", "lstmp", "ln_lstm", "greff_fgr"])
def test_bf16_products_at_extreme_inputs(name: str, scale: str, all_bf16, restore_products) -> None:
    """Saturated and infinite inputs: finite exactly where the float32 products are, and close there."""
    mod = _module(name)
    x = torch.randn(T, B, I)
    if scale == "x600":
        x = x * 600
    elif scale == "x1e4":
        x = x * 1e4
    else:
        x[1, 0, 0], x[3, 1, 2], x[4, 2, 1] = float("inf"), -float("inf"), -float("inf")
    got = _run(mod, x, autocast=True)
    _products(False)
    want = _run(mod, x, autocast=True)
    for a, b in zip(got, want):
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))
        keep = torch.isfinite(b)
        assert _relative(a[keep], b[keep]) <= TOLERANCE


@pytest.mark.parametrize("name", ["gru", "slstm"])
def test_float32_products_without_native_bf16(name: str, spy, monkeypatch) -> None:
    """On a CPU without native bf16 GEMMs the products stay float32: the same numbers as with the bf16 products
    switched off."""
    mod = _module(name)
    x = torch.randn(T, B, I)
    monkeypatch.setattr(generic_ops, "native_bf16", lambda: False)
    got = _run(mod, x, autocast=True)
    assert set(spy) == {("forward", False), ("backward", False)}
    monkeypatch.setattr(generic_ops, "BF16_PRODUCTS", False)
    for a, b in zip(got, _run(mod, x, autocast=True)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["gru", "peephole", "slstm"])
def test_fp16_autocast_keeps_float32_products(name: str, spy) -> None:
    """fp16 autocast: xp arrives in fp16 (read one step at a time as float32), the products stay float32; outputs,
    states and gradients within fp16 tolerance of float32."""
    mod = _module(name)
    x = torch.randn(T, B, I)
    want = _run(mod, x, autocast=False)
    spy.clear()
    mod.zero_grad()
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", torch.float16):
        out, hn = mod(xg, lengths=LENGTHS)
    hn = hn if isinstance(hn, tuple) else (hn,)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    ((out.float() * weight).sum() + sum(s.float().sum() for n, s in zip(mod.state_names, hn) if n != "n")).backward()
    got = [out, *hn, xg.grad, *(p.grad for p in mod.parameters() if p.grad is not None)]
    assert set(spy) == {("forward", False), ("backward", False)} and set(spy.xp) == {torch.float16}
    for a, b in zip(got, want):
        assert _relative(a, b) <= 1e-2


@needs_bf16
@pytest.mark.parametrize("name", ["gru", "peephole"])
def test_default_thresholds_keep_small_products_in_float32(name: str, spy, restore_products) -> None:
    """At the default thresholds (gemm.h kReducedStep / kReducedOnce) a tiny layer's products stay float32: the
    numbers are those of float32 products although the call asked for bf16 products."""
    mod = _module(name)
    x = torch.randn(T, B, I)
    got = _run(mod, x, autocast=True)
    assert ("forward", True) in spy
    _products(False)
    for a, b in zip(got, _run(mod, x, autocast=True)):
        assert torch.equal(a, b)


@needs_bf16
@pytest.mark.parametrize("xp_dtype", [torch.bfloat16, torch.float32], ids=["xp_bf16", "xp_fp32"])
@pytest.mark.parametrize("name", ["gru", "lstmp", "slstm_2heads", "mut1"])
def test_opcheck_with_bf16_products(name: str, xp_dtype: torch.dtype, all_bf16) -> None:
    """The op's fake implementations agree with the real ones for a bf16-products call (xp bf16 as autocast's
    projection makes it, or float32 as MUT1's mixed projection does; the rest float32): outputs, states and
    gradients float32 but the gradient of xp, in xp's dtype."""
    mod = _module(name)
    cell = mod.cell
    rule = generic_registry.driver_for(cell)
    x = torch.randn(T, B, I)
    p = mod.layer_params(0, 0)
    xp, w, e, heads, opt = cell.driver_inputs(x, p)
    e = x.new_empty(0) if e is None else e
    s0 = cell.driver_state([0.5 * torch.randn(B, n) for n in cell.state_sizes()])
    off = x.new_empty(0)
    opt |= generic_ops.BF16_PRODUCTS_BIT
    args = (generic_ops.cell_spec(cell, rule), heads, opt, xp.detach().to(xp_dtype).requires_grad_(),
            w.detach().requires_grad_(), e.detach(), s0.requires_grad_(), LENGTHS, off, off, x, off,
            [p[n].detach() for n in generic_ops.param_names(cell)])
    torch.library.opcheck(generic_ops.driver_forward, args)
    plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    out, s_t, states, saved, fresh = generic_ops.driver_forward(*plain)
    assert out.dtype == states.dtype == saved.dtype == torch.float32
    bargs = (rule, heads, opt, torch.randn_like(out), torch.randn_like(s_t), plain[3], plain[4], plain[5], LENGTHS,
             off, off, states, saved, fresh, off)
    torch.library.opcheck(generic_ops.driver_backward, bargs)
    dxp, ds0, dw, _ = generic_ops.driver_backward(*bargs)
    assert dxp.dtype == xp_dtype and dw.dtype == ds0.dtype == torch.float32


def test_the_bit_and_mixed_dtypes() -> None:
    """Python's bit is the extension's; a call with dtypes the driver cannot take names the argument and what it
    got."""
    ext = load_generic()
    assert generic_ops.BF16_PRODUCTS_BIT == ext.BF16_PRODUCTS
    mod = _module("gru")
    xp, w, _, heads, opt = mod.cell.driver_inputs(torch.randn(T, B, I), mod.layer_params(0, 0))
    xp, w = xp.detach().double(), w.detach().double()
    s0 = torch.zeros(B, H, dtype=torch.float64)
    off = torch.empty(0)
    with pytest.raises(RuntimeError, match="xp: expected the states' dtype, or bfloat16 / float16 with float32"):
        ext.gru_forward(xp.bfloat16(), s0, w, off, off, heads, opt, off, off)
    with pytest.raises(RuntimeError, match="opt: bf16 products need float32 states, got Double"):
        ext.gru_forward(xp, s0, w, off, off, heads, opt | generic_ops.BF16_PRODUCTS_BIT, off, off)


@needs_bf16
def test_compile_fullgraph_under_autocast_equals_eager(all_bf16, no_reference) -> None:
    torch._dynamo.reset()
    mod = _module("peephole")
    x = torch.randn(T, B, I, requires_grad=True)

    def f(x):
        with torch.autocast("cpu", torch.bfloat16):
            out, _ = mod(x, lengths=LENGTHS)
        return out

    want = f(x)
    got = torch.compile(f, fullgraph=True)(x)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)  # the compiled projection may round differently
    g_got = torch.autograd.grad(got.sum(), x)[0]
    g_want = torch.autograd.grad(want.sum(), x)[0]
    torch.testing.assert_close(g_got, g_want, atol=2e-2, rtol=2e-2)


@needs_bf16
@pytest.mark.parametrize("name", ["gru", "mut1", "sru"])
def test_inference_under_autocast_takes_the_inference_entry(name: str, all_bf16, spy) -> None:
    """Without autograd an autocast call casts as the op would and runs the inference entry (two state rows,
    no saved blocks): the same outputs and states as the op's forward."""
    mod = _module(name)
    x = torch.randn(T, B, I)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        got = mod(x, lengths=LENGTHS)
    assert set(spy) == {("infer", name not in NO_PRODUCT)}
    spy.clear()
    with torch.autocast("cpu", torch.bfloat16):
        want = mod(x.clone().requires_grad_(), lengths=LENGTHS)
    assert {kind for kind, _ in spy} == {"forward"}
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert torch.equal(a, b)


@needs_bf16
@pytest.mark.parametrize("name", ["gru", "peephole", "depth_gated_2layers", "lstmp", "sru"])
def test_a_bf16_model_keeps_its_projection_and_products_in_bf16(name: str, all_bf16, spy, no_reference,
                                                                  restore_products) -> None:
    """A model stored in bf16: its projection runs in bf16 and asks for bf16 products (a rule that forms any),
    states float32; outputs and gradients within bf16 tolerance of the float32 model with the same weights."""
    mod = _module(name).to(torch.bfloat16).train()
    ref = _module(name).train()
    ref.load_state_dict({k: v.float() for k, v in mod.state_dict().items()})
    x = torch.randn(T, B, I)
    got = _run(mod, x.bfloat16(), autocast=False)
    assert got[0].dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got)
    products = name not in NO_PRODUCT
    assert set(spy) == {("forward", products), ("backward", products)} and set(spy.xp) == {torch.bfloat16}
    want = _run(ref, x, autocast=False)
    for a, b in zip(got, want):
        assert _relative(a, b) <= TOLERANCE
    spy.clear()
    _products(False)  # the float32 route of a bf16 model: everything cast up, float32 products
    _run(mod, x.bfloat16(), autocast=False)
    assert set(spy) == {("forward", False), ("backward", False)} and set(spy.xp) == {torch.float32}
