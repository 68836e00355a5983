"""The one step loop: the fused drivers' entry (differentiable_loop) equals the reference backend it shares it with."""

from __future__ import annotations

import pytest
import torch

from rnnlab.backends import LayerCall
from rnnlab.backends.reference import ReferenceBackend
from rnnlab.backends.step_loop import differentiable_loop, step_loop
from rnnlab.cells.registry import resolve_cell


def _cell(name: str):
    torch.manual_seed(0)
    cell = resolve_cell(name)(3, 4, True, dtype=torch.float64)
    return cell, dict(cell.named_parameters())


@pytest.mark.parametrize("name", ["lstm", "gru", "slstm", "clockwork"])
def test_differentiable_loop_equals_the_reference_backend(name):
    """Padding, recurrent dropout and eval zoneout given as keep tensors = the reference's own options."""
    cell, p = _cell(name)
    T, B = 6, 3
    x = torch.randn(T, B, 3, dtype=torch.float64)
    state = tuple(torch.randn(B, s, dtype=torch.float64) for s in cell.state_sizes())
    lengths = torch.tensor([6, 4, 1])
    rec_mask = torch.empty(B, cell.output_size, dtype=torch.float64).bernoulli_(0.7) / 0.7
    rate = 0.3
    # the GPU driver's layout: a keep tensor for every part, rate for h/c and 0 (take the new value) otherwise
    keeps = tuple(torch.full((T, B, s), rate if n in ("h", "c") else 0.0, dtype=torch.float64)
                  for n, s in zip(cell.state_names, cell.state_sizes()))
    valid = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
    out, final, _ = differentiable_loop(cell, p, x, valid, rec_mask, keeps, state)
    ref = ReferenceBackend().run(LayerCall(cell=cell, params=p, x=x, state=state, lengths=lengths,
                                           rec_mask=rec_mask, zoneout=rate, training=False))
    torch.testing.assert_close(out, ref.output)
    torch.testing.assert_close(final, ref.state)
    assert bool((out[4:, 1] == 0).all()) and bool((out[1:, 2] == 0).all())


def test_keeps_of_the_leading_parts_leave_the_other_parts_new():
    """The generic driver draws keeps for h and c only: sLSTM's n and m must still advance, none dropped."""
    cell, p = _cell("slstm")
    T, B = 5, 2
    x = torch.randn(T, B, 3, dtype=torch.float64)
    state = tuple(torch.randn(B, s, dtype=torch.float64) for s in cell.state_sizes())
    keeps = (torch.ones(T, B, 4, dtype=torch.float64), torch.ones(T, B, 4, dtype=torch.float64))
    valid = torch.ones(T, B, dtype=torch.bool)
    _, final, _ = differentiable_loop(cell, p, x, valid, None, keeps, state)
    _, free, _ = differentiable_loop(cell, p, x, valid, None, None, state)
    assert len(final) == 4
    assert torch.equal(final[0], state[0]) and torch.equal(final[1], state[1])  # kept at every step
    assert not torch.equal(final[2], state[2]) and not torch.equal(final[3], state[3])
    assert not torch.equal(free[0], state[0])


def test_probe_gradient_is_the_gradient_of_each_step_state():
    """Elman tanh, one sequence: ∂L/∂h_{t-1} = W_hhᵀ ((1 - h_t²) ⊙ ∂L/∂h_t) at every step; outputs unchanged."""
    cell, p = _cell("rnn")
    T = 7
    xp = cell.project_input(torch.randn(T, 1, 3, dtype=torch.float64), p)
    state = (torch.zeros(1, 4, dtype=torch.float64),)
    probe = torch.zeros(T, 1, 4, dtype=torch.float64, requires_grad=True)
    out, _, _, _ = step_loop(cell, p, xp, state, probe=probe)
    plain, _, _, _ = step_loop(cell, p, xp, state)
    assert torch.equal(out, plain)
    out[-1].sum().backward()
    g = probe.grad
    assert torch.equal(g[-1], torch.ones(1, 4, dtype=torch.float64))
    for t in range(T - 1, 0, -1):
        expected = (g[t] * (1 - out[t] ** 2)) @ p["weight_hh"]
        torch.testing.assert_close(g[t - 1], expected.detach())


def test_differentiable_loop_has_second_derivatives():
    cell, p = _cell("lstm")
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(2, 4, dtype=torch.float64) for _ in range(2))
    valid = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0]], dtype=torch.int8)

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out, (h, c), _ = differentiable_loop(cell, {**p, "weight_hh": w}, x, valid, None, None, state)
        return out.sum() + c.sum()

    assert torch.autograd.gradgradcheck(f, (x, p["weight_hh"].detach().requires_grad_(True)))
