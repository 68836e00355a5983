"""PyTorch's own module tests for nn.LSTM/GRU/RNN (module_db inputs and errors, test_nn.py's RNN tests) on rnnlab."""

from __future__ import annotations

import copy
import io
import pickle
import re
import warnings

import pytest
import torch
from torch import nn

import rnnlab

common_modules = pytest.importorskip("torch.testing._internal.common_modules",
                                     reason="torch's test helpers need expecttest (pip install -e .[test])")
ModuleErrorEnum = common_modules.ModuleErrorEnum

# torch.nn class -> the rnnlab drop-in that must behave the same
OURS = {nn.LSTM: rnnlab.LSTM, nn.GRU: rnnlab.GRU, nn.RNN: rnnlab.RNN,
        nn.LSTMCell: rnnlab.LSTMCell, nn.GRUCell: rnnlab.GRUCell, nn.RNNCell: rnnlab.ElmanCell}
INFOS = {info.module_cls: info for info in common_modules.module_db if info.module_cls in OURS}
DTYPES = [torch.float32, torch.float64]


def _ours(torch_cls, args, kwargs):
    kwargs = dict(kwargs)
    if torch_cls is nn.RNNCell and len(args) > 3:  # torch.nn.RNNCell takes nonlinearity positionally
        args, kwargs["nonlinearity"] = args[:3], args[3]
    if torch_cls in (nn.RNNCell, nn.GRUCell) and len(args) == 3 and isinstance(args[2], str):
        # module_db's RNNCell/GRUCell(10, 20, "relu") puts the nonlinearity into `bias`, which torch.nn does not
        # check (a non-empty string is a true bias); rnnlab rejects a non-bool bias at construction (TypeError,
        # as torch.nn.LSTM/GRU/RNN do), so build what the sample means, to test the forward error it is about
        if torch_cls is nn.RNNCell:
            kwargs["nonlinearity"] = args[2]
        args = args[:2]
    return OURS[torch_cls](*args, **kwargs)


def _samples(torch_cls, dtype, training):
    info = INFOS[torch_cls]
    kw = {"with_packed_sequence": True} if torch_cls in (nn.RNN, nn.GRU) else {}
    return info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training, **kw)


def _cases():
    for torch_cls in OURS:
        for dtype in DTYPES:
            for training in (True, False):
                torch.manual_seed(0)
                for i, _ in enumerate(_samples(torch_cls, dtype, training)):
                    yield pytest.param(torch_cls, dtype, training, i,
                                       id=f"{torch_cls.__name__}-{str(dtype)[6:]}-{'train' if training else 'eval'}-{i}")


CASES = list(_cases())


def _tensors(obj):
    """Every tensor in a (nested) output: PackedSequence -> its data, tuples flattened."""
    if isinstance(obj, nn.utils.rnn.PackedSequence):
        return [obj.data]
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _pair(torch_cls, sample, dtype, training):
    c = sample.constructor_input
    ref = torch_cls(*c.args, **c.kwargs).to(dtype).train(training)
    ours = _ours(torch_cls, c.args, c.kwargs).to(dtype).train(training)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("torch_cls, dtype, training, index", CASES)
def test_module_db_forward_and_gradients(torch_cls, dtype, training, index):
    """TestModule.test_forward / test_grad's comparison: same outputs and the same gradients as torch.nn."""
    torch.manual_seed(0)
    sample = _samples(torch_cls, dtype, training)[index]
    ref, ours = _pair(torch_cls, sample, dtype, training)
    f = sample.forward_input
    args_ref, kwargs_ref = copy.deepcopy((f.args, f.kwargs))
    args_ours, kwargs_ours = copy.deepcopy((f.args, f.kwargs))
    out_ref, out_ours = ref(*args_ref, **kwargs_ref), ours(*args_ours, **kwargs_ours)
    t_ref, t_ours = _tensors(out_ref), _tensors(out_ours)
    assert len(t_ref) == len(t_ours)
    for a, b in zip(t_ours, t_ref):
        torch.testing.assert_close(a, b, **_tol(dtype))
    if isinstance(out_ref, nn.utils.rnn.PackedSequence) or (isinstance(out_ref, tuple) and
                                                           isinstance(out_ref[0], nn.utils.rnn.PackedSequence)):
        packed_ref = out_ref[0] if isinstance(out_ref, tuple) else out_ref
        packed_ours = out_ours[0] if isinstance(out_ours, tuple) else out_ours
        assert torch.equal(packed_ours.batch_sizes, packed_ref.batch_sizes)
    # the same random weighting of every output on both sides, then one backward
    weights = [torch.randn_like(t) for t in t_ref]
    sum(((t * w).sum() for t, w in zip(t_ref, weights)), torch.zeros((), dtype=dtype)).backward()
    sum(((t * w).sum() for t, w in zip(t_ours, weights)), torch.zeros((), dtype=dtype)).backward()
    for a, b in zip(_tensors((args_ours, list(kwargs_ours.values()))), _tensors((args_ref, list(kwargs_ref.values())))):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, **_tol(dtype))
    for (name, p_ours), (_, p_ref) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, **_tol(dtype), msg=lambda m: f"{name}: {m}")
    packed = any(isinstance(a, nn.utils.rnn.PackedSequence) for a in f.args)
    if sample.reference_fn is not None and not packed:  # torch's no-batch-dim reference, on rnnlab's module
        expected = sample.reference_fn(ours, *f.args, **f.kwargs)  # it copies the inputs and passes the params
        for a, b in zip(t_ours, _tensors(expected)):
            torch.testing.assert_close(a, b, **_tol(dtype))


@pytest.mark.parametrize("torch_cls", list(OURS), ids=lambda c: c.__name__)
def test_module_db_gradcheck_and_pickle(torch_cls):
    """TestModule.test_grad (gradcheck in float64 w.r.t. inputs and parameters) and test_pickle."""
    torch.manual_seed(0)
    for sample in _samples(torch_cls, torch.float64, False)[:4]:
        _, ours = _pair(torch_cls, sample, torch.float64, False)
        f = sample.forward_input
        if any(isinstance(a, nn.utils.rnn.PackedSequence) for a in f.args):
            continue
        names = [n for n, _ in ours.named_parameters()]
        params = [p.detach().clone().requires_grad_() for p in ours.parameters()]
        flat_inputs = [t.detach().clone().requires_grad_() for t in _tensors(f.args)]
        structure = f.args

        def run(*flat, _n=len(flat_inputs)):
            it = iter(flat[:_n])

            def rebuild(o):
                if isinstance(o, torch.Tensor):
                    return next(it)
                return type(o)(rebuild(v) for v in o) if isinstance(o, (tuple, list)) else o
            args = rebuild(structure)
            out = torch.func.functional_call(ours, dict(zip(names, flat[_n:])), args)
            return tuple(_tensors(out))
        assert torch.autograd.gradcheck(run, (*flat_inputs, *params), fast_mode=True)
        buf = io.BytesIO()
        torch.save(ours, buf)
        buf.seek(0)
        again = torch.load(buf, weights_only=False)
        x = copy.deepcopy(f.args)
        for a, b in zip(_tensors(again(*x)), _tensors(ours(*x))):
            torch.testing.assert_close(a, b)
        assert pickle.loads(pickle.dumps(ours)).state_dict().keys() == ours.state_dict().keys()


def _error_cases():
    for torch_cls in OURS:
        info = INFOS[torch_cls]
        for dtype in DTYPES:
            errors = info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False,
                                                   training=True)
            for i, _ in enumerate(errors):
                yield pytest.param(torch_cls, dtype, i, id=f"{torch_cls.__name__}-{str(dtype)[6:]}-{i}")


ERROR_CASES = list(_error_cases())
@pytest.mark.parametrize("torch_cls, dtype, index", ERROR_CASES)
def test_module_db_errors_raise_torch_class(torch_cls, dtype, index):
    """TestModule.test_errors: the same exception class as torch.nn (rnnlab keeps its own one-line message)."""
    info = INFOS[torch_cls]
    err = info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False,
                                        training=True)[index]
    c, f = err.module_error_input.constructor_input, err.module_error_input.forward_input

    def attempt(build):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                m = build(c.args, c.kwargs)
                if "dtype" not in c.kwargs:  # the inputs are made in `dtype`: so is the module, so that the
                    m = m.to(dtype)         # error met is the one the sample is about, not a dtype mismatch
                if err.error_on == ModuleErrorEnum.FORWARD_ERROR:
                    m(*copy.deepcopy(f.args), **copy.deepcopy(f.kwargs))
            except Exception as e:  # noqa: BLE001 - the class is what is compared
                return e
        return None

    expected = attempt(lambda a, k: torch_cls(*a, **k))
    assert isinstance(expected, err.error_type) and re.search(err.error_regex, str(expected))  # the table holds
    got = attempt(lambda a, k: _ours(torch_cls, a, k))
    assert got is not None, f"rnnlab accepted what torch rejects with {err.error_type.__name__}: {err.error_regex}"
    assert isinstance(got, err.error_type), f"torch: {err.error_type.__name__}; rnnlab: {type(got).__name__}: {got}"
    message = str(got)
    assert "\n" not in message and re.match(r"^[A-Za-z_][\w\[\]() ]*: ", message), message  # names the argument
