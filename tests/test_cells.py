"""Per-cell test matrix over every registered cell: float64 gradcheck, wrapper == step loop, shapes, options."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab
from rnnlab import Recurrent
from rnnlab.cells import resolve_cell
from rnnlab.cells.base import StepContext

from conftest import random_state_like

CELLS = rnnlab.cell_names()
F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


def as_tuple(out) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def as_hx(parts: tuple[Tensor, ...]):
    return parts[0] if len(parts) == 1 else parts


def make_cell(name: str, input_size: int, hidden_size: int, **kw):
    return resolve_cell(name)(input_size, hidden_size, True, dtype=F64, **kw)


# --- gradcheck ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CELLS)
def test_single_step_gradcheck(name):
    """d(state_t)/d(x_t, state_{t-1}, every parameter) of cell.forward, float64 finite differences."""
    cell = make_cell(name, 2, 3)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in cell.named_parameters()]
    x = torch.randn(2, 2, dtype=F64, requires_grad=True)
    state = tuple(s.requires_grad_() for s in random_state_like(cell, 2))
    k = len(state)

    def f(x, *rest):
        return as_tuple(functional_call(cell, dict(zip(names, rest[k:])), (x, as_hx(rest[:k]))))

    assert torch.autograd.gradcheck(f, (x, *state, *params))


def test_depth_gated_step_gradcheck_with_lower_state():
    """The depth gate's path (w_cd, w_ld, W_id and the lower cell state itself) is differentiated correctly."""
    cell = make_cell("depth_gated", 2, 3)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in cell.named_parameters()]
    x = torch.randn(2, 2, dtype=F64, requires_grad=True)
    h, c = (s.requires_grad_() for s in random_state_like(cell, 2))
    lower = tuple(s.requires_grad_() for s in random_state_like(cell, 2))

    def f(x, h, c, lh, lc, *ps):
        p = dict(zip(names, ps))
        return cell.step(cell.project_input(x, p), (h, c), p, StepContext(lower=(lh, lc)))

    assert torch.autograd.gradcheck(f, (x, h, c, *lower, *params))


@pytest.mark.parametrize("name", CELLS)
def test_recurrent_gradcheck_two_layers_bidirectional_with_lengths(name):
    """Gradients through a whole stack (T=4, B=2, 2 layers, both directions, unequal lengths, given hx)."""
    rnn = Recurrent(name, 2, 3, num_layers=2, bidirectional=True, dtype=F64)
    names = [n for n, _ in rnn.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in rnn.named_parameters()]
    x = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
    hx = tuple(s.requires_grad_() for s in random_state_like(rnn.cell, 4, 2))
    k = len(hx)
    lengths = torch.tensor([4, 2])

    def f(x, *rest):
        out, h_n = functional_call(rnn, dict(zip(names, rest[k:])), (x, as_hx(rest[:k])), {"lengths": lengths})
        return (out, *as_tuple(h_n))

    # fast mode: a random directional derivative per output, one pass, still exact to float64 rounding
    assert torch.autograd.gradcheck(f, (x, *hx, *params), fast_mode=True)


# --- the wrapper equals a step-by-step loop of standalone cells --------------------------------------------------
def manual_stack(rnn: Recurrent, name: str, x: Tensor, hx: tuple[Tensor, ...], lengths: list[int]):
    """Each sequence alone, cut to its length, one step at a time with standalone cells holding copies of
    the wrapper's weights; the reverse direction walks the cut sequence backwards.  Depth-gated cells get
    the same direction's lower-layer state at the same step."""
    D, L = rnn.num_directions, rnn.num_layers
    cells = {}
    for layer, direction, c in rnn.cells():
        standalone = make_cell(name, c.input_size, c.hidden_size, **rnn.cell_kwargs)
        standalone.load_state_dict({n: t.detach() for n, t in rnn.layer_params(layer, direction).items()})
        cells[layer, direction] = standalone
    outputs, finals = [], []
    for b, n_steps in enumerate(lengths):
        seq = x[:n_steps, b:b + 1]  # (L_b, 1, I)
        lower: list = [None] * D
        final_b = []
        for layer in range(L):
            outs, next_lower = [], []
            for direction in range(D):
                cell = cells[layer, direction]
                state = tuple(s[layer * D + direction, b:b + 1] for s in hx)
                hs: list = [None] * n_steps
                states: list = [None] * n_steps
                order = range(n_steps) if direction == 0 else reversed(range(n_steps))
                for t in order:
                    if cell.needs_lower and lower[direction] is not None:
                        p = dict(cell.named_parameters())
                        ctx = StepContext(lower=lower[direction][t])
                        state = cell.step(cell.project_input(seq[t], p), state, p, ctx)
                    else:
                        state = as_tuple(cell(seq[t], as_hx(state)))
                    hs[t], states[t] = state[0], state
                outs.append(torch.stack(hs))
                next_lower.append(states)
                final_b.append(state)
            seq = torch.cat(outs, dim=-1)
            lower = next_lower
        outputs.append(seq[:, 0])
        finals.append(final_b)
    return outputs, finals


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_wrapper_equals_step_loop_of_standalone_cells(name, num_layers, bidirectional):
    torch.manual_seed(1)
    rnn = Recurrent(name, 3, 4, num_layers=num_layers, bidirectional=bidirectional, dtype=F64)
    T, lengths = 5, [5, 2, 4]
    x = torch.randn(T, 3, 3, dtype=F64)
    hx = random_state_like(rnn.cell, num_layers * rnn.num_directions, 3)
    out, h_n = rnn(x, as_hx(hx), lengths=lengths)
    h_n = as_tuple(h_n)
    outputs, finals = manual_stack(rnn, name, x, hx, lengths)
    for b, n_steps in enumerate(lengths):
        torch.testing.assert_close(out[:n_steps, b], outputs[b])
        assert bool((out[n_steps:, b] == 0).all()), "padded steps must give zero output"
        for k, state in enumerate(finals[b]):
            for part, expected in zip(h_n, state):
                torch.testing.assert_close(part[k, b:b + 1], expected)


# --- shapes ----------------------------------------------------------------------------------------------------
def _out_size(rnn: Recurrent) -> int:
    return rnn.num_directions * rnn.cell.output_size


@pytest.mark.parametrize("name", CELLS)
def test_output_and_state_shapes_for_all_options(name):
    T, B, I, H = 5, 3, 2, 4
    for num_layers in (1, 2):
        for bidirectional in (False, True):
            for batch_first in (False, True):
                rnn = Recurrent(name, I, H, num_layers=num_layers, bidirectional=bidirectional,
                                batch_first=batch_first)
                LD = num_layers * rnn.num_directions
                x = torch.randn((B, T, I) if batch_first else (T, B, I))
                for lengths in (None, [5, 1, 3]):
                    out, h_n = rnn(x, lengths=lengths)
                    assert tuple(out.shape) == ((B, T) if batch_first else (T, B)) + (_out_size(rnn),)
                    assert [tuple(s.shape) for s in as_tuple(h_n)] == rnn.state_shapes(B)
                    assert all(s.shape[:2] == (LD, B) for s in as_tuple(h_n))
                # unbatched (T, I): output (T, D*H_out), each state (L*D, S_k); equals a batch of one
                out_u, h_u = rnn(x[0] if batch_first else x[:, 0])
                assert tuple(out_u.shape) == (T, _out_size(rnn))
                assert [tuple(s.shape) for s in as_tuple(h_u)] == [(LD, s[2]) for s in rnn.state_shapes(1)]
                out_1, _ = rnn(x[:1] if batch_first else x[:, :1])
                torch.testing.assert_close(out_u, out_1[0] if batch_first else out_1[:, 0])


@pytest.mark.parametrize("name", CELLS)
def test_packed_sequence_equals_lengths(name):
    rnn = Recurrent(name, 2, 3, num_layers=2, bidirectional=True)
    x, lengths = torch.randn(6, 3, 2), torch.tensor([6, 2, 4])
    out, h_n = rnn(x, lengths=lengths)
    packed_out, packed_h = rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
    padded, _ = pad_packed_sequence(packed_out, total_length=6)
    torch.testing.assert_close(padded, out)
    for a, b in zip(as_tuple(packed_h), as_tuple(h_n)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", CELLS)
def test_standalone_cell_forward_shapes_and_unbatched(name):
    cell = resolve_cell(name)(3, 4)
    x = torch.randn(5, 3)
    out = as_tuple(cell(x))
    assert [tuple(s.shape) for s in out] == [(5, s) for s in cell.state_sizes()]
    single = as_tuple(cell(x[0]))  # unbatched (I,)
    assert [tuple(s.shape) for s in single] == [(s,) for s in cell.state_sizes()]
    for a, b in zip(single, out):
        torch.testing.assert_close(a, b[0])
    again = as_tuple(cell(x, as_hx(out)))  # the returned state is a valid hx
    assert [s.shape for s in again] == [s.shape for s in out]


@pytest.mark.parametrize("name", CELLS)
def test_recording_keeps_outputs_and_gives_time_major_gates(name):
    rnn = Recurrent(name, 2, 3, num_layers=2, batch_first=True)
    x, lengths = torch.randn(3, 5, 2), [5, 2, 4]
    plain, _ = rnn(x, lengths=lengths)
    with rnn.recording() as rec:
        out, _ = rnn(x, lengths=lengths)
    torch.testing.assert_close(out, plain)
    for layer in range(2):
        gates = rec[(layer, 0)]
        assert len(gates) > 1, f"{name} records no gate besides h"
        for gname, v in gates.items():
            assert v.shape[:2] == (3, 5), (gname, tuple(v.shape))
            assert bool((v[1, 2:] == 0).all()), f"{gname}: padded steps must be zero"


@pytest.mark.parametrize("name", CELLS)
def test_bias_false_removes_every_bias_and_runs(name):
    rnn = Recurrent(name, 2, 3, bias=False)
    assert not [n for n, _ in rnn.named_parameters() if n.startswith("bias")]
    out, _ = rnn(torch.randn(4, 2, 2))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CELLS)
def test_reset_parameters_is_seeded_and_float32_float64_agree(name):
    torch.manual_seed(3)
    a = Recurrent(name, 2, 3)
    torch.manual_seed(3)
    b = Recurrent(name, 2, 3)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    x = torch.randn(6, 2, 2)
    out32, _ = a(x)
    out64, _ = a.double()(x.double())
    torch.testing.assert_close(out32, out64.float(), atol=1e-5, rtol=1e-4)
