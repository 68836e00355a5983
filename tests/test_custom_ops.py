"""The cpp backend's layers through torch.ops.rnnlab.driver_*: compile, export (dynamic T), autocast, vmap, func.grad,
second derivatives, per registered cell (the op itself is opchecked per rule in test_generic_ops.py)."""

from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import Recurrent
from rnnlab.backends import LayerCall, select_backend
from rnnlab.backends.cpp import generic_ops, generic_registry, kernel_for, load_generic

needs_kernels = pytest.mark.skipif(load_generic() is None, reason="the C++ driver could not be built here")

I, H, B, T = 3, 4, 2, 5
# options that change what the driver itself does, under a name of their own: the LSTM's output projection,
# and the depth-gated LSTM's upper layers (the layer below's c as an input, its states' gradients)
VARIANTS: dict[str, tuple[str, dict]] = {"lstm_proj": ("lstm", {"proj_size": 2}),
                                         "depth_gated_2layers": ("depth_gated", {"num_layers": 2})}
FUSED = [n for n in rnnlab.cell_names() if kernel_for(Recurrent(n, I, H).cell) is not None] + sorted(VARIANTS)
# the default suite compiles/exports a representative set; the rest run with -m slow (each compile takes seconds)
REPRESENTATIVE = ["lstm", "gru", "peephole", "mut1", "ln_lstm", "lstm_proj"]
# (name, options) layouts: one layer; bidirectional with lengths; two layers
LAYOUTS = {"plain": {}, "bidir": {"bidirectional": True}, "layers2": {"num_layers": 2}}
LENGTHS = torch.tensor([T, 3])


def _cases(representative: list[str]) -> list:
    return [pytest.param(c, marks=() if c in representative else pytest.mark.slow) for c in FUSED]


def _module(cell: str, layout: str = "plain", dtype: torch.dtype = torch.float32) -> Recurrent:
    cell, kw = VARIANTS.get(cell, (cell, {}))
    opts = {**LAYOUTS[layout], **kw}
    torch.manual_seed(0)
    # backend="cpp": a call the kernels refuse raises instead of silently running on the reference
    return Recurrent(cell, I, H, backend="cpp", dtype=dtype, **opts)


def _outputs(mod: Recurrent, x: torch.Tensor, lengths: torch.Tensor | list[int] | None = None) -> tuple[torch.Tensor, ...]:
    """Output and every differentiable final state (the clockwork step counter is not)."""
    out, hn = mod(x, lengths=lengths)
    hn = hn if isinstance(hn, tuple) else (hn,)
    return (out, *(s for name, s in zip(mod.state_names, hn) if name != "n"))


@needs_kernels
@pytest.mark.parametrize("cell", FUSED)
def test_fused_cells_run_on_the_cpp_backend(cell: str) -> None:
    mod = _module(cell)
    x = torch.randn(T, B, I)
    call = LayerCall(cell=mod.cell, params=mod.layer_params(0, 0), x=x,
                     state=mod.cell.init_state(B, dtype=x.dtype, device=x.device))
    assert select_backend(call).name == "cpp"


@needs_kernels
@pytest.mark.parametrize("cell", _cases(REPRESENTATIVE))
def test_compile_fullgraph_equals_eager(cell: str) -> None:
    torch._dynamo.reset()
    for layout in LAYOUTS:
        mod = _module(cell, layout)
        x = torch.randn(T, B, I, requires_grad=True)
        # lengths through the whole wrapper: test_compile_fullgraph_with_lengths
        want = _outputs(mod, x)
        compiled = torch.compile(lambda x: _outputs(mod, x), fullgraph=True)
        got = compiled(x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        # gradients through the compiled graph (the op's autograd formula)
        g_got = torch.autograd.grad(sum(o.sum() for o in got), x)[0]
        g_want = torch.autograd.grad(sum(o.sum() for o in want), x)[0]
        # inductor fuses the input layer norm differently: float32 rounding, as in test_kernels
        tol = 1e-4 if cell.startswith("ln_") else 1e-5
        torch.testing.assert_close(g_got, g_want, atol=tol, rtol=tol)


@needs_kernels
@pytest.mark.parametrize("cell", ["gru", "peephole", "lstm_proj"])
def test_compile_fullgraph_with_lengths(cell: str) -> None:
    """The wrapper with lengths compiles without a graph break (the range check is an in-graph assert) and
    equals eager; bad lengths still raise, from inside the compiled graph."""
    torch._dynamo.reset()
    cell, kw = VARIANTS.get(cell, (cell, {}))
    mod = rnnlab.Recurrent(cell, I, H, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(T, B, I, requires_grad=True)
    lengths = torch.tensor([T, 1] + [2] * (B - 2))[:B]
    call = lambda x, lengths: mod(x, lengths=lengths)  # noqa: E731
    want_out, want_state = call(x, lengths)
    compiled = torch.compile(call, fullgraph=True)
    got_out, got_state = compiled(x, lengths)
    torch.testing.assert_close(got_out, want_out)
    for a, b in zip(got_state if isinstance(got_state, tuple) else (got_state,),
                    want_state if isinstance(want_state, tuple) else (want_state,)):
        torch.testing.assert_close(a, b)
    g_got = torch.autograd.grad(got_out.sum(), x)[0]
    g_want = torch.autograd.grad(want_out.sum(), x)[0]
    torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match=r"lengths: each length must be in \[1, "):
        compiled(x, torch.full((B,), T + 1))


@needs_kernels
def test_compile_plain_lstm_at_the_onednn_sizes() -> None:
    """T*B >= 256 normally runs aten.mkldnn_rnn_layer in eager; compiled it must still give the same numbers."""
    torch._dynamo.reset()
    mod = _module("lstm")
    x = torch.randn(32, 16, I)
    torch.testing.assert_close(torch.compile(mod, fullgraph=True)(x)[0], mod(x)[0])


@needs_kernels
@pytest.mark.parametrize("cell", _cases(REPRESENTATIVE))
def test_export_with_dynamic_sequence_length(cell: str) -> None:
    mod = _module(cell)
    steps = torch.export.Dim("T", min=2, max=64)
    program = torch.export.export(mod, (torch.randn(T, B, I),), dynamic_shapes=({0: steps},))
    for t in (3, 11):
        x = torch.randn(t, B, I)
        for a, b in zip(torch.utils._pytree.tree_leaves(program.module()(x)), torch.utils._pytree.tree_leaves(mod(x))):
            torch.testing.assert_close(a, b)


@needs_kernels
@pytest.mark.parametrize("cell", FUSED)
def test_autocast_bf16_within_tolerance_of_fp32(cell: str) -> None:
    mod = _module(cell, "bidir")
    x = torch.randn(T, B, I)
    want = _outputs(mod, x, LENGTHS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _outputs(mod, x, LENGTHS)
    assert got[0].dtype == torch.float32  # the kernels compute and return float32 under autocast
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, atol=4e-2, rtol=4e-2)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", FUSED)
def test_reduced_precision_model_runs_fused_in_float32(cell: str, dtype: torch.dtype) -> None:
    """A model stored in bf16/fp16 runs on the driver (backend="cpp" raises otherwise), computing in float32: its
    outputs and gradients equal the float32 model of the same (rounded) weights within the storage precision."""
    mod = _module(cell, "bidir").to(dtype)
    ref = _module(cell, "bidir")
    ref.load_state_dict({k: v.float() for k, v in mod.state_dict().items()})
    x = torch.randn(T, B, I).to(dtype)
    xr = x.float().requires_grad_()
    got, want = _outputs(mod, x.requires_grad_(), LENGTHS), _outputs(ref, xr, LENGTHS)
    assert got[0].dtype == dtype and next(mod.parameters()).dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, atol=tol, rtol=tol)
    sum(o.float().sum() for o in got).backward()
    sum(o.sum() for o in want).backward()
    torch.testing.assert_close(x.grad.float(), xr.grad, atol=5 * tol, rtol=5 * tol)
    for (name, p), q in zip(mod.named_parameters(), ref.parameters()):
        if q.grad is None:  # a parameter the first layer never reads (depth_gated's layer-below block)
            assert p.grad is None or not bool(p.grad.any()), name
            continue
        assert p.grad is not None and p.grad.dtype == dtype, name
        torch.testing.assert_close(p.grad.float(), q.grad, atol=5 * tol, rtol=5 * tol, msg=name)


@needs_kernels
@pytest.mark.parametrize("cell", FUSED)
def test_vmap_over_inputs_equals_a_loop(cell: str) -> None:
    mod = _module(cell, "bidir")
    xs = torch.randn(3, T, B, I)
    got = torch.func.vmap(lambda x: _outputs(mod, x, LENGTHS))(xs)
    want = [torch.stack(parts) for parts in zip(*(_outputs(mod, x, LENGTHS) for x in xs))]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@needs_kernels
@pytest.mark.parametrize("cell", FUSED)
def test_func_grad_equals_backward(cell: str) -> None:
    mod = _module(cell, "layers2")
    x = torch.randn(T, B, I)
    got = torch.func.grad(lambda x: sum(o.sum() for o in _outputs(mod, x)))(x)
    xr = x.clone().requires_grad_()
    sum(o.sum() for o in _outputs(mod, xr)).backward()
    # torch.func.grad differentiates with create_graph: the twin's float32 layer norm rounds differently
    tol = 1e-4 if cell.startswith("ln_") else 1e-5
    torch.testing.assert_close(got, xr.grad, atol=tol, rtol=tol)
    # and per-example gradients: vmap of grad
    xs = torch.randn(2, T, B, I)
    per = torch.func.vmap(torch.func.grad(lambda x: sum(o.sum() for o in _outputs(mod, x))))(xs)
    for k in range(2):
        xk = xs[k].clone().requires_grad_()
        sum(o.sum() for o in _outputs(mod, xk)).backward()
        torch.testing.assert_close(per[k], xk.grad, atol=tol, rtol=tol)


@needs_kernels
@pytest.mark.parametrize("cell", FUSED)
def test_gradcheck_and_gradgradcheck_float64(cell: str) -> None:
    mod = _module(cell, "bidir", torch.float64)
    x = torch.randn(4, B, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2])

    def f(x):
        return _outputs(mod, x, lengths)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("cell", FUSED)
def test_gradient_penalty_second_derivative_wrt_parameters(cell: str) -> None:
    """d/dθ ||∂L/∂x||² (create_graph=True through the kernels) against finite differences, never None/zero.

    Checked numerically rather than against the reference backend: for mingru/minlstm the reference's own
    second derivative w.r.t. the parameters disagrees with finite differences (0.434 vs 0.414 on one entry)."""
    mod = _module(cell, "plain", torch.float64)
    x = torch.randn(4, B, I, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in mod.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in mod.parameters())

    def penalty(*ps):
        out = torch.func.functional_call(mod, dict(zip(names, ps)), (x,))
        hn = out[1] if isinstance(out[1], tuple) else (out[1],)
        loss = out[0].sum() + sum(s.sum() for n, s in zip(mod.state_names, hn) if n != "n")
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        return gx.pow(2).sum()

    grads = torch.autograd.grad(penalty(*params), params, allow_unused=True)
    assert any(g is not None and bool(g.any()) for g in grads)
    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-5)


@needs_kernels
def test_onnx_legacy_export_raises_a_clear_error(tmp_path) -> None:
    mod = _module("lstm")
    with pytest.raises(Exception, match="backend='reference'"):
        torch.onnx.export(mod, (torch.randn(T, B, I),), str(tmp_path / "m.onnx"), dynamo=False)
    assert not (tmp_path / "m.onnx").exists()


@needs_kernels
def test_eager_calls_skip_the_dispatcher_but_equal_the_op() -> None:
    """The eager shortcut (the extension through DriverFunction) gives what the registered op gives, outputs and
    gradients, for the projected LSTM with lengths."""
    mod = _module("lstm_proj", dtype=torch.float64)
    cell, p = mod.cell, mod.layer_params(0, 0)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    state = tuple(0.5 * torch.randn(B, s, dtype=torch.float64) for s in cell.state_sizes())
    out, final, _, _ = generic_registry.run(cell, p, x, state, LENGTHS)
    xp, w, e, heads, opt = cell.driver_inputs(x, p)
    off = x.new_empty(0)
    params = [p[n] for n in generic_ops.param_names(cell)]
    spec = generic_ops.cell_spec(cell, "lstm")
    via_op = generic_ops.driver_forward(spec, heads, opt, xp, w, off if e is None else e, cell.driver_state(state),
                                        LENGTHS, off, off, x, off, params)
    torch.testing.assert_close(out, via_op[0], atol=0, rtol=0)
    for a, b in zip(final, cell.from_driver_state(via_op[1])):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    ga = torch.autograd.grad(out.sum() + final[0].sum(), (x, p["weight_hr"]))
    gb = torch.autograd.grad(via_op[0].sum() + cell.from_driver_state(via_op[1])[0].sum(), (x, p["weight_hr"]))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
