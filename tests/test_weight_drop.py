"""weight_drop: DropConnect on weight_hh (AWD-LSTM), one mask per call, on every backend including the fused ones."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import rnnlab
from rnnlab.backends import LayerCall, select_backend


def test_eval_mode_is_untouched():
    torch.manual_seed(0)
    plain = rnnlab.LSTM(3, 5)
    dropped = rnnlab.LSTM(3, 5, weight_drop=0.5)
    dropped.load_state_dict(plain.state_dict())
    dropped.eval()
    x = torch.randn(4, 2, 3)
    assert torch.equal(plain(x)[0], dropped(x)[0])


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn", "peephole", "mut2", "ln_lstm"])
def test_training_equals_the_explicitly_dropped_weight(name):
    torch.manual_seed(1)
    rnn = rnnlab.Recurrent(name, 3, 5, weight_drop=0.4).train()
    x = torch.randn(6, 2, 3)
    torch.manual_seed(5)
    out, _ = rnn(x)
    torch.manual_seed(5)
    w = F.dropout(rnn.weight_hh_l0.detach(), 0.4, True)
    manual = rnnlab.Recurrent(name, 3, 5).train()
    manual.load_state_dict({**rnn.state_dict(), "weight_hh_l0": w})
    torch.testing.assert_close(out, manual(x)[0])
    assert (w == 0).any()


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn", "peephole", "cifg", "mut1", "clockwork"])
def test_default_backend_equals_reference_and_runs_fused(name):
    torch.manual_seed(2)
    fused = rnnlab.Recurrent(name, 3, 5, num_layers=2, bidirectional=True, weight_drop=0.3).train()
    ref = rnnlab.Recurrent(name, 3, 5, num_layers=2, bidirectional=True, weight_drop=0.3, backend="reference")
    ref.load_state_dict(fused.state_dict())
    ref.train()
    x = torch.randn(5, 3, 3, dtype=torch.float32)
    torch.manual_seed(9)
    o1, _ = fused(x, lengths=[5, 4, 2])
    torch.manual_seed(9)
    o2, _ = ref(x, lengths=[5, 4, 2])
    torch.testing.assert_close(o1, o2, atol=1e-5, rtol=1e-5)
    g1 = torch.autograd.grad(o1.sum(), fused.weight_hh_l0)[0]
    g2 = torch.autograd.grad(o2.sum(), ref.weight_hh_l0)[0]
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)
    call = LayerCall(cell=fused.cell, params=fused.layer_params(0), x=x,
                     state=fused.cell.init_state(3, dtype=x.dtype, device=x.device))
    assert select_backend(call).name != "reference"  # the dropped weight goes to the fused kernel


def test_dropped_entries_get_no_gradient():
    torch.manual_seed(3)
    rnn = rnnlab.GRU(3, 4, weight_drop=0.5).train()
    x = torch.randn(5, 2, 3)
    torch.manual_seed(4)
    out, _ = rnn(x)
    out.sum().backward()
    torch.manual_seed(4)
    kept = F.dropout(torch.ones_like(rnn.weight_hh_l0), 0.5, True) != 0
    assert torch.all(rnn.weight_hh_l0.grad[~kept] == 0) and rnn.weight_hh_l0.grad[kept].abs().sum() > 0


@pytest.mark.parametrize("value", [1.0, -0.1, "0.2", True])
def test_bad_values_name_the_option(value):
    with pytest.raises(ValueError, match="weight_drop"):
        rnnlab.LSTM(3, 4, weight_drop=value)


def test_cell_without_recurrent_weights_is_refused():
    with pytest.raises(ValueError, match="weight_drop: cell 'mingru' has no hidden-to-hidden weight"):
        rnnlab.Recurrent("mingru", 3, 4, weight_drop=0.2)


def test_repr_shows_it():
    assert "weight_drop=0.25" in repr(rnnlab.LSTM(3, 4, weight_drop=0.25))


def test_cli_flag_trains_and_bad_value_is_one_line(tmp_path, capsys):
    from rnnlab.cli import main

    out = tmp_path / "run"
    assert main(["train", "cue", "--lag", "3", "--n-train", "32", "--hidden-size", "4", "--epochs", "1",
                 "--weight-drop", "0.3", "--quiet", "--out", str(out)]) == 0
    config = __import__("json").loads(next((out / "checkpoints").glob("step-*/config.json")).read_text())
    assert config["model"]["weight_drop"] == 0.3
    capsys.readouterr()
    assert main(["train", "cue", "--weight-drop", "1.5", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weight-drop" in err[0] and "1.5" in err[0]
