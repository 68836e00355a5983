"""The drop-in modules keep torch.nn's contract beyond numbers: exception classes, empty batches and repr."""

from __future__ import annotations

import warnings

import pytest
import torch

import rnnlab
from rnnlab.validation import DeviceError, DtypeError, OptionError, ShapeError

PAIRS = [(torch.nn.LSTM, rnnlab.LSTM), (torch.nn.GRU, rnnlab.GRU), (torch.nn.RNN, rnnlab.RNN)]
PAIR_IDS = ["LSTM", "GRU", "RNN"]


def _state(module_cls, *shape, dtype=torch.float32):
    """An hx of ``shape`` for this module class: a tuple (h, c) for LSTM, a tensor otherwise."""
    if module_cls.__name__ == "LSTM":
        return torch.randn(*shape, dtype=dtype), torch.randn(*shape, dtype=dtype)
    return torch.randn(*shape, dtype=dtype)


# Each mistake is made against torch.nn and rnnlab; rnnlab must raise an instance of torch's class.
MISTAKES = {
    "input 4-D": lambda M: M(3, 5)(torch.randn(2, 2, 2, 3)),
    "input 1-D": lambda M: M(3, 5)(torch.randn(3)),
    "wrong input_size": lambda M: M(3, 5)(torch.randn(5, 2, 4)),
    "wrong input_size unbatched": lambda M: M(3, 5)(torch.randn(5, 4)),
    "hx wrong batch": lambda M: M(3, 5)(torch.randn(5, 2, 3), _state(M, 1, 3, 5)),
    "hx wrong layers": lambda M: M(3, 5, num_layers=2)(torch.randn(5, 2, 3), _state(M, 1, 2, 5)),
    "hx wrong hidden": lambda M: M(3, 5)(torch.randn(5, 2, 3), _state(M, 1, 2, 4)),
    "hx 2-D for batched": lambda M: M(3, 5)(torch.randn(5, 2, 3), _state(M, 1, 5)),
    "hx 3-D for unbatched": lambda M: M(3, 5)(torch.randn(5, 3), _state(M, 1, 1, 5)),
    "input float64, params float32": lambda M: M(3, 5)(torch.randn(5, 2, 3, dtype=torch.float64)),
    "input int64": lambda M: M(3, 5)(torch.randint(0, 3, (5, 2, 3))),
    "hx float64, params float32": lambda M: M(3, 5)(torch.randn(5, 2, 3), _state(M, 1, 2, 5, dtype=torch.float64)),
    "dtype=int64": lambda M: M(3, 5, dtype=torch.int64),
    "zero time steps": lambda M: M(3, 5)(torch.randn(0, 2, 3)),
    "dropout 2": lambda M: M(3, 5, dropout=2.0),
    "dropout -1": lambda M: M(3, 5, dropout=-1),
    "dropout True": lambda M: M(3, 5, dropout=True),
    "hidden_size 0": lambda M: M(3, 0),
    "hidden_size float": lambda M: M(3, 5.0),
    "input_size 0": lambda M: M(0, 5),
    "num_layers 0": lambda M: M(3, 5, num_layers=0),
    "num_layers float": lambda M: M(3, 5, num_layers=1.0),
    "unknown keyword": lambda M: M(3, 5, foo=1),
    "proj_size 2": lambda M: M(3, 5, proj_size=2) if M.__name__ != "LSTM" else M(3, 5, proj_size=5),
    "proj_size 0 on RNN/GRU": lambda M: M(3, 5, proj_size=0) if M.__name__ != "LSTM" else M(3, 5, proj_size=-1),
}


def _raised(fn) -> BaseException | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the class is what is compared
            return e
    return None


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_same_exception_class_as_torch(pair, mistake):
    torch_cls, ours_cls = pair
    torch.manual_seed(0)
    expected = _raised(lambda: MISTAKES[mistake](torch_cls))
    assert expected is not None, f"torch.nn.{torch_cls.__name__} accepts {mistake!r}: the table is stale"
    got = _raised(lambda: MISTAKES[mistake](ours_cls))
    assert got is not None, f"rnnlab.{ours_cls.__name__} accepted {mistake!r}"
    assert isinstance(got, type(expected)), (f"{mistake}: torch raises {type(expected).__name__} ({expected}), "
                                             f"rnnlab raises {type(got).__name__} ({got})")
    # rnnlab's own message names the argument: one line, no torch internals
    assert "\n" not in str(got) and ":" in str(got)


def test_exception_classes_subclass_both_families():
    assert issubclass(ShapeError, ValueError) and issubclass(ShapeError, RuntimeError)
    assert all(issubclass(DtypeError, c) for c in (TypeError, ValueError, RuntimeError))
    assert issubclass(OptionError, TypeError) and issubclass(OptionError, ValueError)
    assert issubclass(DeviceError, ValueError) and issubclass(DeviceError, RuntimeError)


def test_recurrent_reports_bad_dtype_by_name():
    with pytest.raises(DtypeError, match=r"dtype: expected a floating-point dtype .* got torch\.int64"):
        rnnlab.Recurrent("peephole", 3, 5, dtype=torch.int64)
    with pytest.raises(OptionError, match=r"nosuch: not an option of cell 'peephole'"):
        rnnlab.Recurrent("peephole", 3, 5, nosuch=1)


# --- empty batch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_empty_batch_matches_torch(pair, batch_first, with_hx):
    torch_cls, ours_cls = pair
    kw = dict(num_layers=2, bidirectional=True, batch_first=batch_first)
    ref = torch_cls(3, 5, **kw)
    ours = ours_cls(3, 5, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(0, 4, 3) if batch_first else torch.randn(4, 0, 3)
    hx = _state(torch_cls, 4, 0, 5) if with_hx else None
    out_ref, st_ref = ref(x, hx)
    out, st = ours(x, hx)
    assert out.shape == out_ref.shape == ((0, 4, 10) if batch_first else (4, 0, 10))
    for a, b in zip(st if isinstance(st, tuple) else (st,), st_ref if isinstance(st_ref, tuple) else (st_ref,)):
        assert a.shape == b.shape == (4, 0, 5)
    out.sum().backward()  # like torch.nn: the graph exists and the parameters' gradients are zero
    assert all(p.grad is not None and not p.grad.any() for p in ours.parameters())


@pytest.mark.parametrize("cell", rnnlab.cell_names())
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_empty_batch_every_cell(cell, backend):
    m = rnnlab.Recurrent(cell, 3, 4, num_layers=2, backend=backend)
    out, state = m(torch.randn(6, 0, 3))
    assert out.shape == (6, 0, m.num_directions * m.cell.output_size)
    for s, shape in zip(state if isinstance(state, tuple) else (state,), m.state_shapes(0)):
        assert tuple(s.shape) == shape
    out2, _ = m(torch.randn(6, 0, 3), state, lengths=torch.zeros(0, dtype=torch.int64))
    assert out2.shape == out.shape


# --- repr ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("kw", [{}, {"num_layers": 2}, {"bias": False, "batch_first": True},
                                {"num_layers": 3, "dropout": 0.5, "bidirectional": True}])
def test_repr_matches_torch(pair, kw):
    torch_cls, ours_cls = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert repr(ours_cls(3, 5, **kw)) == repr(torch_cls(3, 5, **kw))


def test_repr_lstm_projection_and_rnn_relu_match_torch():
    assert repr(rnnlab.LSTM(3, 5, proj_size=2, num_layers=2)) == repr(torch.nn.LSTM(3, 5, proj_size=2, num_layers=2))
    assert repr(rnnlab.RNN(3, 5, nonlinearity="relu")) == repr(torch.nn.RNN(3, 5, nonlinearity="relu"))


def test_repr_shows_rnnlab_options_after_torch_ones():
    assert repr(rnnlab.GRU(3, 5, zoneout=0.1, reset_after=False)) == "GRU(3, 5, zoneout=0.1, reset_after=False)"
    assert repr(rnnlab.Recurrent("peephole", 3, 5, num_layers=2)) == "Recurrent('peephole', 3, 5, num_layers=2)"
    assert repr(rnnlab.Recurrent(rnnlab.GRUCell, 3, 5, backend="reference")) == \
        "Recurrent(GRUCell, 3, 5, backend='reference')"
