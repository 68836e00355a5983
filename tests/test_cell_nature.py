"""A cell inside a Recurrent stays a usable nn.Module: one step, reset_parameters and train/eval reach it."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import rnnlab


@pytest.mark.parametrize("name", ["lstm", "gru", "peephole", "mut1", "indrnn", "slstm"])
def test_the_wrappers_cell_computes_one_step_with_its_layers_weights(name):
    torch.manual_seed(0)
    rnn = rnnlab.Recurrent(name, 3, 4, num_layers=2, backend="reference")
    x = torch.randn(1, 2, 3)
    out, state = rnn(x)
    parts = state if isinstance(state, tuple) else (state,)
    step = rnn.cell(x[0])  # the first layer's cell, its first step from the zero state
    step = step if isinstance(step, tuple) else (step,)
    lower = rnn._cells[1][0](out[0] * 0 + step[0])  # the second layer's cell on the first layer's output
    lower = lower if isinstance(lower, tuple) else (lower,)
    torch.testing.assert_close(lower[0], out[0])
    torch.testing.assert_close(step[0], parts[0][0])


def test_reset_parameters_of_a_cell_reinitialises_its_layer_only():
    rnn = rnnlab.LSTM(3, 4, num_layers=2)
    with torch.no_grad():
        for p in rnn.parameters():
            p.fill_(7.0)
    rnn._cells[1][0].reset_parameters()
    assert bool((rnn.weight_hh_l0 == 7).all()) and not bool((rnn.weight_hh_l1 == 7).any())
    assert list(rnn.state_dict()) == list(torch.nn.LSTM(3, 4, num_layers=2).state_dict())  # names unchanged


def test_train_and_eval_reach_every_cell():
    rnn = rnnlab.GRU(3, 4, num_layers=2, bidirectional=True)
    rnn.eval()
    assert not any(c.training for _, _, c in rnn.cells())
    rnn.train()
    assert all(c.training for _, _, c in rnn.cells())


def test_copies_and_pickles_keep_each_cell_bound_to_its_own_module():
    rnn = rnnlab.LSTM(3, 4)
    for clone in (copy.deepcopy(rnn), pickle.loads(pickle.dumps(rnn))):
        with torch.no_grad():
            clone.weight_ih_l0.zero_()
            clone.bias_ih_l0.zero_()
            clone.weight_hh_l0.zero_()
            clone.bias_hh_l0.zero_()
        h, c = clone.cell(torch.randn(2, 3))
        assert torch.equal(h, torch.zeros(2, 4))  # the clone's (zeroed) weights, not the original's
        assert not torch.equal(rnn.cell(torch.ones(2, 3))[0], torch.zeros(2, 4))
    buf = io.BytesIO()
    torch.save(rnn.state_dict(), buf)


def test_a_standalone_cell_still_owns_its_parameters():
    cell = rnnlab.LSTMCell(3, 4)
    assert set(dict(cell.named_parameters())) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    cell.reset_parameters()
    h, c = cell(torch.randn(3))
    assert h.shape == (4,)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_sequential_scan_second_derivatives_on_the_reference(name):
    """The reference's one-node scan used to be once_differentiable: a gradient penalty was silently wrong."""
    torch.manual_seed(1)
    rnn = rnnlab.Recurrent(name, 2, 3, backend="reference", scan="sequential", dtype=torch.float64)
    names = [n for n, _ in rnn.named_parameters()]
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        out, _ = torch.func.functional_call(rnn, dict(zip(names, ps)), (x,), {"lengths": [4, 3]})
        return out

    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in rnn.parameters()])
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
