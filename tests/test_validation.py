"""Bad inputs and bad constructor arguments give a ValueError/TypeError naming the argument and both values."""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnlab
from rnnlab import Recurrent

I, H, P, B, T = 3, 5, 2, 4, 6


@pytest.fixture(scope="module")
def lstm() -> rnnlab.LSTM:
    # 2 layers x 2 directions with projection: h parts (4, B, 2), c parts (4, B, 5)
    return rnnlab.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)


def x_tb() -> torch.Tensor:
    return torch.randn(T, B, I)


def raises(exc: type[Exception], pattern: str):
    return pytest.raises(exc, match=re.escape(pattern))


# --- forward: input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(T,), (1, T, B, I)])
def test_wrong_rank(lstm, shape):
    with raises(ValueError, f"input: expected a 2-D (T, input_size) or 3-D (T, B, input_size) tensor, "
                            f"got shape {shape}"):
        lstm(torch.randn(shape))


def test_wrong_rank_names_batch_first_layout():
    with raises(ValueError, "3-D (B, T, input_size) tensor, got shape (5,)"):
        rnnlab.GRU(I, H, batch_first=True)(torch.randn(5))


def test_wrong_feature_size(lstm):
    with raises(ValueError, "input: expected input_size=3 features in the last dim, got shape (6, 4, 7)"):
        lstm(torch.randn(T, B, 7))


def test_not_a_tensor(lstm):
    with raises(TypeError, "input: expected a torch.Tensor, got list"):
        lstm([x_tb()])


def test_integer_input(lstm):
    with raises(TypeError, "input: expected a floating-point tensor, got dtype torch.int64"):
        lstm(torch.ones(T, B, I, dtype=torch.int64))


@pytest.mark.parametrize("shape, what", [((0, B, I), "empty sequence (0 time steps), got shape (0, 4, 3)"),
                                         ((0, I), "empty sequence (0 time steps), got shape (0, 3)")])
def test_empty_sequences(lstm, shape, what):  # an empty batch is valid, as in torch.nn: tests/test_torch_contract.py
    with raises(ValueError, f"input: {what}"):
        lstm(torch.randn(shape))


def test_dtype_mismatch(lstm):
    with raises(TypeError, "input: dtype torch.float64 does not match the parameters' dtype torch.float32"):
        lstm(x_tb().double())


def test_device_mismatch_with_meta_tensors(lstm):
    with raises(ValueError, "input: on device meta but the parameters are on cpu"):
        lstm(torch.empty(T, B, I, device="meta"))
    with raises(ValueError, "hx[1] (c): on device meta but the parameters are on cpu"):
        lstm(x_tb(), (torch.zeros(4, B, P), torch.zeros(4, B, H, device="meta")))
    on_meta = rnnlab.GRU(I, H, device="meta")
    with raises(ValueError, "input: on device cpu but the parameters are on meta"):
        on_meta(x_tb())


# --- forward: initial state ----------------------------------------------------------------------------------
@pytest.mark.parametrize("hx, exc, message", [
    ((torch.zeros(4, B, H), torch.zeros(4, B, H)), ValueError, "hx[0] (h): expected shape (4, 4, 2), got (4, 4, 5)"),
    ((torch.zeros(4, B, P), torch.zeros(2, B, H)), ValueError, "hx[1] (c): expected shape (4, 4, 5), got (2, 4, 5)"),
    ((torch.zeros(4, 3, P), torch.zeros(4, 3, H)), ValueError, "hx[0] (h): expected shape (4, 4, 2), got (4, 3, 2)"),
    (torch.zeros(4, B, P), TypeError, "hx: this cell's state has 2 parts ('h', 'c'); pass a tuple of 2 tensors"),
    ((torch.zeros(4, B, P),), ValueError, "hx: expected 2 tensor(s) ('h', 'c'), got 1"),
    ((torch.zeros(4, B, P), None), TypeError, "hx[1] (c): expected a torch.Tensor, got NoneType"),
    ("zeros", TypeError, "hx: expected a tensor or a tuple of tensors, got str"),
    ((torch.zeros(4, B, P, dtype=torch.float64), torch.zeros(4, B, H)), TypeError,
     "hx[0] (h): dtype torch.float64 does not match the parameters' dtype torch.float32"),
    ((torch.zeros(4, B, P), torch.zeros(4, B, H, dtype=torch.int64)), TypeError,
     "hx[1] (c): expected a floating-point tensor, got dtype torch.int64"),
])
def test_wrong_initial_state_names_the_part(lstm, hx, exc, message):
    with raises(exc, message):
        lstm(x_tb(), hx)


def test_single_state_cells_and_unbatched_state_shapes():
    gru = rnnlab.GRU(I, H, num_layers=2)
    with raises(ValueError, "hx: expected shape (2, 4, 5), got (1, 4, 5)"):
        gru(x_tb(), torch.zeros(1, B, H))
    with raises(ValueError, "hx: expected shape (2, 5), got (2, 1, 5)"):  # unbatched input: (L*D, H) state
        gru(torch.randn(T, I), torch.zeros(2, 1, H))


# --- forward: lengths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lengths, exc, message", [
    ([7, 1, 1, 1], ValueError, "lengths: each length must be in [1, 6] (the padded length), got min 1, max 7"),
    ([0, 1, 1, 1], ValueError, "lengths: each length must be in [1, 6] (the padded length), got min 0, max 1"),
    (torch.tensor([-1, 2, 3, 4]), ValueError, "lengths: each length must be in [1, 6]"),
    ([1, 2, 3], ValueError, "lengths: expected shape (4,) (one length per sequence), got (3,)"),
    (torch.ones(4, 1, dtype=torch.int64), ValueError, "lengths: expected shape (4,) (one length per sequence), "
                                                     "got (4, 1)"),
    (torch.ones(4), TypeError, "lengths: expected integer lengths, got dtype torch.float32"),
    (torch.ones(4, dtype=torch.bool), TypeError, "lengths: expected integer lengths, got dtype torch.bool"),
    ([1.0, 2, 3, 4], TypeError, "lengths: expected a 1-D integer tensor or a list of ints, got list [1.0, 2, 3, 4]"),
    ("6543", TypeError, "lengths: expected a 1-D integer tensor or a list of ints, got str '6543'"),
])
def test_bad_lengths(lstm, lengths, exc, message):
    with raises(exc, message):
        lstm(x_tb(), lengths=lengths)


def test_lengths_with_batch_first_count_the_batch_dim():
    rnn = rnnlab.RNN(I, H, batch_first=True)
    with raises(ValueError, "lengths: expected shape (2,) (one length per sequence), got (6,)"):
        rnn(torch.randn(2, T, I), lengths=[1] * T)


def test_lengths_not_allowed_with_unbatched_or_packed_input(lstm):
    with raises(ValueError, "lengths: not supported for an unbatched (T, input_size) input"):
        lstm(torch.randn(T, I), lengths=[T])
    packed = pack_padded_sequence(x_tb(), [6, 5, 4, 3])
    with raises(ValueError, "lengths: a PackedSequence already carries its lengths; pass lengths=None"):
        lstm(packed, lengths=[6, 5, 4, 3])


def test_packed_input_is_validated_too(lstm):
    with raises(TypeError, "input: dtype torch.float64 does not match the parameters' dtype torch.float32"):
        lstm(pack_padded_sequence(x_tb().double(), [6, 5, 4, 3]))


# --- constructor ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, exc, message", [
    (lambda: rnnlab.LSTM(I, 0), ValueError, "hidden_size: expected a positive int, got 0"),
    (lambda: rnnlab.LSTM(0, H), ValueError, "input_size: expected a positive int, got 0"),
    (lambda: rnnlab.GRU(I, H, num_layers=-1), ValueError, "num_layers: expected a positive int, got -1"),
    (lambda: rnnlab.GRU(I, H, num_layers=2.0), TypeError, "num_layers: expected a positive int, got float 2.0"),
    (lambda: rnnlab.LSTM(2.5, H), TypeError, "input_size: expected a positive int, got float 2.5"),
    (lambda: rnnlab.RNN(I, H, 2, dropout=1.5), ValueError, "dropout: expected a probability in [0, 1], got 1.5"),
    (lambda: rnnlab.RNN(I, H, 2, dropout=-0.1), ValueError, "dropout: expected a probability in [0, 1], got -0.1"),
    (lambda: rnnlab.RNN(I, H, 2, dropout="0.1"), ValueError, "dropout: expected a probability in [0, 1], got '0.1'"),
    (lambda: rnnlab.LSTM(I, H, recurrent_dropout=1.0), ValueError,
     "recurrent_dropout: expected a probability in [0, 1), got 1.0"),
    (lambda: rnnlab.LSTM(I, H, zoneout=-0.5), ValueError, "zoneout: expected a probability in [0, 1), got -0.5"),
    (lambda: rnnlab.LSTM(I, H, proj_size=H), ValueError, "proj_size: must be smaller than hidden_size=5, got 5"),
    (lambda: rnnlab.LSTM(I, H, proj_size=9), ValueError, "proj_size: must be smaller than hidden_size=5, got 9"),
    (lambda: rnnlab.LSTM(I, H, proj_size=-1), ValueError, "proj_size: expected an int >= 0, got -1"),
    (lambda: rnnlab.RNN(I, H, nonlinearity="sigmoid"), ValueError,
     "nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'"),
    (lambda: Recurrent("lstmx", I, H), ValueError, "cell: unknown cell 'lstmx'; expected one of "),
    (lambda: Recurrent(3, I, H), TypeError, "cell: expected a cell name, a RecurrentCell subclass or a factory, "
                                            "got int"),
    (lambda: Recurrent(rnnlab.LSTMCell(I, H), I, H), TypeError, "cell: pass the cell class or its name"),
    (lambda: rnnlab.LSTM(I, H, backend="cuda_magic"), ValueError,
     "'reference'] or 'auto', got 'cuda_magic'"),  # registered names, the reference backend last
    (lambda: rnnlab.LSTM(I, H, backend=3), TypeError, "backend: expected a backend name, got int"),
    (lambda: rnnlab.LSTM(I, H, bias=1), TypeError, "bias: expected bool, got int 1"),
    (lambda: rnnlab.LSTM(I, H, batch_first="yes"), TypeError, "batch_first: expected bool, got str 'yes'"),
    (lambda: rnnlab.LSTM(I, H, bidirectional=None), TypeError, "bidirectional: expected bool, got NoneType None"),
    (lambda: rnnlab.LSTM(I, H, check_finite=1), TypeError, "check_finite: expected bool, got int 1"),
    (lambda: rnnlab.GRU(I, H, proj_size=2), ValueError,  # torch.nn's class; still a TypeError too
     "proj_size: only supported by LSTM, not RNN or GRU, got proj_size=2"),
    (lambda: rnnlab.LSTM(I, H, peephole=True), TypeError,
     "peephole: not an option of cell 'lstm'; expected one of ['proj_size', 'peepholes'"),
])
def test_bad_constructor_arguments(make, exc, message):
    with raises(exc, message):
        make()


def test_unknown_cell_lists_the_registered_names():
    with pytest.raises(ValueError) as info:
        Recurrent("lstmx", I, H)
    for name in rnnlab.cell_names():
        assert name in str(info.value)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="expects num_layers greater than 1, but got dropout=0.5 and num_layers=1"):
        rnnlab.LSTM(I, H, dropout=0.5)


def test_dropout_one_is_accepted_like_torch():
    rnn = rnnlab.GRU(I, H, 2, dropout=1.0).train()
    out_eval = rnn.eval()(x_tb())[0]
    assert out_eval.shape == (T, B, H)


def test_unknown_backend_names_the_argument_and_the_choices():
    with pytest.raises(ValueError, match=r"^backend: expected one of \[.*'reference'\] or 'auto', got 'cuda_magic'$"):
        rnnlab.LSTM(I, H, backend="cuda_magic")
