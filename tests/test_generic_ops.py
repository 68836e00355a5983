"""The generic driver's registered op (torch.ops.rnnlab.driver_*): compile, export, autocast, vmap, func, gradgrad."""

from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import Recurrent
from rnnlab.backends.cpp import generic_ops, generic_registry
from rnnlab.backends.cpp.generic_loader import load_generic
from rnnlab.backends.reference import ReferenceBackend

needs_driver = pytest.mark.skipif(load_generic() is None, reason="the generic C++ driver could not be built here")
pytestmark = [needs_driver, pytest.mark.usefixtures("single_thread")]

I, H, B, T = 3, 4, 2, 5
LENGTHS = torch.tensor([T, 3])
# one registered cell per driver rule: a rule added later is tested here without a line changed
_BY_RULE: dict[str, str] = {}
for _n in rnnlab.cell_names():
    _rule = generic_registry.driver_for(Recurrent(_n, I, H).cell)
    if _rule is not None:
        _BY_RULE.setdefault(_rule, _n)
# options that change what the driver itself does, under a name of their own: the LSTM's output projection
_VARIANTS: dict[str, tuple[str, dict]] = {"lstmp": ("lstm", {"proj_size": 2})}
# the rule a cell runs above its first layer (it reads the layer below: driver_lower_kernel), on two layers
for _n in rnnlab.cell_names():
    if getattr(Recurrent(_n, I, H).cell, "driver_lower_kernel", None) is not None:
        _VARIANTS[f"{_n}_upper"] = (_n, {"num_layers": 2})
RULES = sorted(_BY_RULE.values()) + sorted(_VARIANTS)
# the default suite compiles / exports a representative set (each compile takes seconds); the rest with -m slow
REPRESENTATIVE = ("indrnn", "slstm", "sru", "lstmp")
SLOW_RULES = [pytest.param(n, marks=() if n in REPRESENTATIVE else pytest.mark.slow) for n in RULES]


def _module(name: str, dtype: torch.dtype = torch.float32, **kw) -> Recurrent:
    torch.manual_seed(0)
    name, opts = _VARIANTS.get(name, (name, {}))
    opts = {"num_heads": 2, **opts} if name == "slstm" else opts
    return Recurrent(name, I, H, dtype=dtype, **opts, **kw)


def _masks(cell, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A recurrent dropout mask on h and zoneout keep masks, in the driver's layout (float64)."""
    mask = torch.empty(B, cell.state_sizes()[0], dtype=torch.float64).bernoulli_(0.7) / 0.7
    widths = cell.state_sizes()[:generic_registry.zoned_parts(cell)]
    keep = generic_registry.draw_keep(widths, steps, B, 0.3, True, mask)
    return mask, keep


def _outputs(mod: Recurrent, x: torch.Tensor, lengths=None) -> tuple[torch.Tensor, ...]:
    out, hn = mod(x, lengths=lengths)
    return (out, *(hn if isinstance(hn, tuple) else (hn,)))


@pytest.fixture
def no_reference(monkeypatch):
    """The reference backend fails the test if it is asked to run a layer."""

    def refuse(self, call):
        raise AssertionError(f"{call.cell.kind} ran on the reference backend")

    monkeypatch.setattr(ReferenceBackend, "run", refuse)


@pytest.mark.parametrize("name", SLOW_RULES)
def test_compile_fullgraph_equals_eager(name: str, no_reference) -> None:
    """fullgraph (no graph break), the op rather than the reference, with lengths, outputs and gradients."""
    torch._dynamo.reset()
    mod = _module(name, bidirectional=True)
    x = torch.randn(T, B, I, requires_grad=True)
    compiled = torch.compile(lambda x, lengths: _outputs(mod, x, lengths), fullgraph=True)
    for lengths in (None, LENGTHS):
        want = _outputs(mod, x, lengths)
        got = compiled(x, lengths)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        g_got = torch.autograd.grad(sum(o.sum() for o in got), x)[0]
        g_want = torch.autograd.grad(sum(o.sum() for o in want), x)[0]
        torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["indrnn", "slstm", "lstmp"])
def test_compile_with_dropout_zoneout_and_recording(name: str, no_reference) -> None:
    """Options through the compiled op: eval-mode zoneout (its expectation) and recording equal eager."""
    torch._dynamo.reset()
    mod = _module(name, bidirectional=True, zoneout=0.2, recurrent_dropout=0.3).eval()
    x = torch.randn(T, B, I)

    def recorded(x):
        with mod.recording() as rec:
            out = _outputs(mod, x, LENGTHS)
        return out, rec.gates

    want_out, want_rec = recorded(x)
    got_out, got_rec = torch.compile(recorded, fullgraph=True)(x)
    for a, b in zip(got_out, want_out):
        torch.testing.assert_close(a, b)
    for key in want_rec:
        for gate in want_rec[key]:
            torch.testing.assert_close(got_rec[key][gate], want_rec[key][gate])


@pytest.mark.parametrize("name", SLOW_RULES)
def test_export_with_dynamic_sequence_length(name: str, no_reference) -> None:
    mod = _module(name).eval()
    steps = torch.export.Dim("T", min=2, max=64)
    program = torch.export.export(mod, (torch.randn(T, B, I),), dynamic_shapes=({0: steps},))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "rnnlab.driver_forward.default" in ops
    for t in (3, 11):
        x = torch.randn(t, B, I)
        for a, b in zip(torch.utils._pytree.tree_leaves(program.module()(x)),
                        torch.utils._pytree.tree_leaves(mod(x))):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", RULES)
def test_autocast_bf16_within_tolerance_of_fp32(name: str, no_reference) -> None:
    # backend="cpp": the driver (a plain LSTM/GRU/RNN stack under autocast runs torch.nn's op, test_aten_stack.py)
    mod = _module(name, bidirectional=True, backend="cpp")
    x = torch.randn(T, B, I)
    want = _outputs(mod, x, LENGTHS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _outputs(mod, x, LENGTHS)
    assert got[0].dtype == torch.float32  # the driver computes and returns float32 under autocast
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, atol=4e-2, rtol=4e-2)


@pytest.mark.parametrize("name", RULES)
def test_vmap_and_func_grad(name: str, no_reference) -> None:
    """vmap over inputs equals a loop; torch.func.grad (and vmap of it) equals backward()."""
    mod = _module(name, bidirectional=True)
    xs = torch.randn(3, T, B, I)
    got = torch.func.vmap(lambda x: _outputs(mod, x, LENGTHS))(xs)
    want = [torch.stack(parts) for parts in zip(*(_outputs(mod, x, LENGTHS) for x in xs))]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    per = torch.func.vmap(torch.func.grad(lambda x: sum(o.sum() for o in _outputs(mod, x, LENGTHS))))(xs[:2])
    for k in range(2):
        xk = xs[k].clone().requires_grad_()
        sum(o.sum() for o in _outputs(mod, xk, LENGTHS)).backward()
        torch.testing.assert_close(per[k], xk.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", RULES)
def test_gradcheck_and_gradgradcheck_float64_through_the_op(name: str) -> None:
    """First and second derivatives of the registered op as the backend calls it (driver_inputs outside, x
    and the parameters passed along), with lengths, a recurrent dropout mask and zoneout keep masks."""
    mod = _module(name, torch.float64)
    cell, rule, x, lower, inputs = _top_layer(mod)
    spec = generic_ops.cell_spec(cell, rule)
    names = generic_ops.param_names(cell)
    lengths = torch.tensor([4, 3])
    mask, keep = _masks(cell, 4)

    def f(x, s0, lower, *ps):
        xp, w, e, heads, opt = inputs(x, dict(zip(names, ps)), lower)
        e = x.new_empty(0) if e is None else e
        out, s_t, states = generic_ops.driver_forward(spec, heads, opt, xp, w, e, s0, lengths, mask, keep, x, lower,
                                                      list(ps))[:3]
        return (out, s_t, states) if lower.numel() else (out, s_t)  # a layer above reads every state row

    x.requires_grad_()
    lower.requires_grad_(lower.numel() > 0)
    s0 = cell.driver_state(_outputs_state(cell)).requires_grad_()
    ps = tuple(mod.layer_params(mod.num_layers - 1, 0)[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, (x, s0, lower, *ps))
    assert torch.autograd.gradgradcheck(f, (x, s0, lower, *ps), fast_mode=True)


def _top_layer(mod: Recurrent):
    """The top layer as the backend calls the op (float64): its cell, its rule, an input x (4, B, I_l), the layer
    below's state rows (random, or empty on a first layer) and the cell's driver-inputs hook."""
    cell, layer = mod.cell, mod.num_layers - 1
    x = torch.randn(4, B, I if layer == 0 else H, dtype=torch.float64)
    if layer == 0:
        return cell, generic_registry.driver_for(cell), x, x.new_empty(0), lambda x, p, _: cell.driver_inputs(x, p)
    lower = 0.5 * torch.randn(4, B, sum(cell.state_sizes()), dtype=torch.float64)
    return cell, cell.driver_lower_kernel, x, lower, cell.driver_lower_inputs


def _op_args(name: str, options: bool):
    """The forward op's arguments for a float64 layer with lengths (and, with ``options``, masks)."""
    mod = _module(name, torch.float64)
    cell, rule, x, lower, inputs = _top_layer(mod)
    p = mod.layer_params(mod.num_layers - 1, 0)
    xp, w, e, heads, opt = inputs(x, p, lower)
    e = x.new_empty(0) if e is None else e
    s0 = cell.driver_state(_outputs_state(cell))
    off = x.new_empty(0)
    mask, keep = off, off
    if options:
        mask, keep = _masks(cell, 4)
    args = (generic_ops.cell_spec(cell, rule), heads, opt, xp.detach().requires_grad_(),
            w.detach().requires_grad_() if w.numel() else w.detach(), e.detach(), s0.requires_grad_(),
            torch.tensor([4, 3]), mask, keep, x, lower, [p[n].detach() for n in generic_ops.param_names(cell)])
    return rule, args


def _outputs_state(cell):
    state = []
    for name, size in zip(cell.state_names, cell.state_sizes()):
        s = 0.5 * torch.randn(B, size, dtype=torch.float64)
        state.append(s.abs() + 0.5 if name == "n" else s)
    return state


@pytest.mark.parametrize("options", [False, True], ids=["plain", "masks"])
@pytest.mark.parametrize("name", RULES)
def test_opcheck(name: str, options: bool) -> None:
    rule, args = _op_args(name, options)
    torch.library.opcheck(generic_ops.driver_forward, args)
    plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    spec, heads, opt, xp, w, e, s0, lengths, mask, keep, _, _, _ = plain
    out, s_t, states, saved, fresh = generic_ops.driver_forward(*plain)
    dstates = torch.randn_like(states) if options else states.new_empty(0)  # a layer above read every state row
    bargs = (rule, heads, opt, torch.randn_like(out), torch.randn_like(s_t), xp, w, e, lengths, mask, keep, states,
             saved, fresh, dstates)
    torch.library.opcheck(generic_ops.driver_backward, bargs)


def test_the_spec_rebuilds_an_equivalent_cell() -> None:
    """Every driver cell (all options that reach the driver) round-trips through its string; a class outside
    rnnlab does not (it is refused rather than imported)."""
    for name in rnnlab.cell_names():
        cell = Recurrent(name, I, H).cell
        rule = generic_registry.driver_for(cell)
        if rule is None:
            continue
        spec = generic_ops.cell_spec(cell, rule)
        assert spec is not None, name
        rebuilt = generic_ops.cell_from_spec(spec)
        assert type(rebuilt) is type(cell) and rebuilt.extra_repr() == cell.extra_repr()
    with pytest.raises(ValueError, match="not one of rnnlab's cells"):
        generic_ops.cell_from_spec('{"class": "os:system", "args": ["true"], "kwargs": {}, "kernel": "x"}')
