"""The sequence wrapper: variable lengths, stateful chunks, dropout, recurrent dropout, zoneout, recording."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab
from rnnlab import Recurrent
from rnnlab.cells.base import ParamSpec, RecurrentCell

I, H, B, T = 4, 6, 4, 7
LENGTHS = [7, 3, 5, 1]  # unsorted, one full, one of length 1
CELLS = rnnlab.cell_names()


def build(cell: str, **kw) -> Recurrent:
    """A small float64 stack (float64: the comparisons below are exact up to rounding)."""
    torch.manual_seed(0)
    return Recurrent(cell, I, H, **kw).double()


def parts(state) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def random_state(rnn: Recurrent, batch: int, seed: int = 1) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(0.5 * torch.randn(s, generator=g, dtype=torch.float64) for s in rnn.state_shapes(batch))


def as_hx(state: tuple[Tensor, ...]):
    return state[0] if len(state) == 1 else state


# --- variable lengths -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_equal_running_each_sequence_alone(cell, bidirectional):
    rnn = build(cell, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = random_state(rnn, B)
    out, h_n = rnn(x, as_hx(hx), lengths=LENGTHS)
    D = rnn.num_directions
    assert out.shape == (T, B, D * rnn.cell.output_size)
    for b, L in enumerate(LENGTHS):
        alone_out, alone_h = rnn(x[:L, b:b + 1], as_hx(tuple(s[:, b:b + 1] for s in hx)))
        torch.testing.assert_close(out[:L, b:b + 1], alone_out, atol=1e-10, rtol=1e-10)
        assert bool((out[L:, b] == 0).all()), f"sequence {b}: padded outputs must be exactly zero"
        for k, (s, a) in enumerate(zip(parts(h_n), parts(alone_h))):
            # every layer and both directions: the state at each sequence's own last valid step
            torch.testing.assert_close(s[:, b:b + 1], a, atol=1e-10, rtol=1e-10, msg=lambda m: f"h_n[{k}] {m}")


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_lengths_match_torch_with_packed_input(cls):
    torch.manual_seed(0)
    ref = getattr(nn, cls)(I, H, num_layers=2, bidirectional=True, batch_first=True)
    ours = getattr(rnnlab, cls)(I, H, num_layers=2, bidirectional=True, batch_first=True)
    ours.load_state_dict(ref.state_dict())
    lengths = [5, 3, 4, 1]  # max < T: the padding past the longest sequence must also be zero
    x = torch.randn(B, T, I)
    out_r, h_r = ref(pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False))
    out_r, _ = pad_packed_sequence(out_r, batch_first=True, total_length=T)
    out_o, h_o = ours(x, lengths=torch.tensor(lengths, dtype=torch.int32))
    torch.testing.assert_close(out_o, out_r, atol=1e-5, rtol=1e-5)
    for a, b in zip(parts(h_o), parts(h_r)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_lengths_forms_are_equivalent_and_full_lengths_equal_none():
    rnn = build("lstm", bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    a = rnn(x, lengths=LENGTHS)
    for form in (torch.tensor(LENGTHS), torch.tensor(LENGTHS, dtype=torch.int32), tuple(LENGTHS)):
        b = rnn(x, lengths=form)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0])
    full, none = rnn(x, lengths=[T] * B), rnn(x)
    assert torch.equal(full[0], none[0]) and torch.equal(full[1][1], none[1][1])


def test_unbatched_equals_a_batch_of_one():
    rnn = build("gru", num_layers=2, bidirectional=True)
    x = torch.randn(T, I, dtype=torch.float64)
    hx = random_state(rnn, 1)[0]
    out_u, h_u = rnn(x, hx[:, 0])
    out_b, h_b = rnn(x.unsqueeze(1), hx)
    assert out_u.shape == (T, 2 * H) and h_u.shape == (4, H)
    assert torch.equal(out_u, out_b[:, 0]) and torch.equal(h_u, h_b[:, 0])


# --- stateful use (truncated BPTT) ------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_carrying_the_final_state_equals_one_long_run(cell):
    rnn = build(cell, num_layers=2, batch_first=True)
    x = torch.randn(B, 9, I, dtype=torch.float64)
    full_out, full_h = rnn(x)
    state, outs = None, []
    for lo, hi in ((0, 4), (4, 5), (5, 9)):
        out, state = rnn(x[:, lo:hi], state)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()  # TBPTT
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full_out, atol=1e-10, rtol=1e-10)
    for a, b in zip(parts(state), parts(full_h)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


# --- dropout between layers -------------------------------------------------------------------------------------
class PassThroughCell(RecurrentCell):
    r"""Test cell :math:`h_t = W_{ih} x_t` (no recurrence): with W = I a stack shows exactly what the wrapper
    does between layers."""

    kind = "test_pass_through"

    def __init__(self, input_size, hidden_size, bias=True, **kw):
        super().__init__(input_size, hidden_size, False, **kw)
        self._register_params()

    def param_specs(self):
        return [ParamSpec("weight_ih", (self.hidden_size, self.input_size))]

    def step(self, xp_t, state, p, ctx):
        return (xp_t,)


def pass_through_stack(num_layers: int, dropout: float) -> Recurrent:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with num_layers=1 warns like torch.nn
        rnn = Recurrent(PassThroughCell, 64, 64, num_layers=num_layers, dropout=dropout)
    with torch.no_grad():
        for w in rnn.parameters():
            w.copy_(torch.eye(64))
    return rnn


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_dropout_is_applied_between_layers_only(num_layers):
    p = 0.3
    rnn = pass_through_stack(num_layers, p)
    x = torch.rand(5, 16, 64) + 0.5  # no zeros in the input
    assert torch.equal(rnn.eval()(x)[0], x), "eval: dropout must be off"
    torch.manual_seed(0)
    out = rnn.train()(x)[0]
    keep = (1 - p) ** (num_layers - 1)  # one dropout after each layer except the last
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / keep)
    if num_layers == 1:
        assert bool(kept.all())
    else:
        assert abs(float(kept.float().mean()) - keep) < 0.03, "fraction kept does not match the layer count"


def test_dropout_in_training_changes_lstm_outputs_and_is_seeded():
    rnn = build("lstm", num_layers=2, dropout=0.5).train()
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(3)
    a = rnn(x)[0]
    torch.manual_seed(3)
    assert torch.equal(a, rnn(x)[0])
    assert not torch.allclose(a, rnn.eval()(x)[0])


# --- variational recurrent dropout ------------------------------------------------------------------------------
class MaskProbeCell(RecurrentCell):
    r"""Test cell :math:`h_t = \mathrm{drop}(\mathbf{1})`: each output step *is* the recurrent dropout mask."""

    kind = "test_mask_probe"

    def __init__(self, input_size, hidden_size, bias=True, **kw):
        super().__init__(input_size, hidden_size, False, **kw)
        self._register_params()

    def param_specs(self):
        return [ParamSpec("weight_ih", (self.hidden_size, self.input_size))]

    def step(self, xp_t, state, p, ctx):
        return (ctx.drop(torch.ones_like(state[0])),)


def test_recurrent_dropout_uses_one_mask_for_every_step():
    p = 0.25
    rnn = Recurrent(MaskProbeCell, 2, 64, bidirectional=True, recurrent_dropout=p)
    x = torch.randn(6, 32, 2)
    torch.manual_seed(0)
    out = rnn.train()(x)[0]  # (T, B, 2*64)
    masks = out[0]
    assert torch.equal(out, masks.expand_as(out)), "the mask must be the same at every step"
    dropped = masks == 0
    torch.testing.assert_close(masks[~dropped], torch.full_like(masks[~dropped], 1 / (1 - p)))  # inverted scaling
    assert abs(float(dropped.float().mean()) - p) < 0.04
    fwd, bwd = masks[:, :64], masks[:, 64:]
    assert not torch.equal(fwd, bwd), "each direction draws its own mask"
    assert not torch.equal(masks[0], masks[1]), "each sequence draws its own mask"
    assert not torch.equal(rnn(x)[0][0], masks), "a new mask on every forward call"
    assert torch.equal(rnn.eval()(x)[0], torch.ones(6, 32, 128)), "eval: no recurrent dropout"


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_builtin_cells_apply_recurrent_dropout_in_training_only(cls):
    torch.manual_seed(0)
    ref = getattr(nn, cls)(I, H)
    ours = getattr(rnnlab, cls)(I, H, recurrent_dropout=0.5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    torch.testing.assert_close(ours.eval()(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
    train_out = ours.train()(x)[0]
    torch.testing.assert_close(train_out[0], ref(x)[0][0], atol=1e-5, rtol=1e-5)  # h_0 = 0: step 1 unaffected
    assert not torch.allclose(train_out[1:], ref(x)[0][1:], atol=1e-3)


# --- zoneout ----------------------------------------------------------------------------------------------------
def test_zoneout_eval_is_the_expectation():
    z = 0.3
    torch.manual_seed(0)
    ours = rnnlab.LSTM(I, H, zoneout=z).double().eval()
    cell = nn.LSTMCell(I, H).double()
    cell.load_state_dict({k[:-3]: v for k, v in ours.state_dict().items()})  # weight_ih_l0 -> weight_ih
    x = torch.randn(T, B, I, dtype=torch.float64)
    h = c = torch.zeros(B, H, dtype=torch.float64)
    expected = []
    for t in range(T):  # Krueger et al. 2016, test time: h_t = z h_{t-1} + (1 - z) h̃_t, same for c
        h_new, c_new = cell(x[t], (h, c))
        h, c = z * h + (1 - z) * h_new, z * c + (1 - z) * c_new
        expected.append(h)
    out, (h_n, c_n) = ours(x)
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(c_n[0], c, atol=1e-12, rtol=1e-12)


def test_zoneout_training_keeps_each_unit_old_or_new():
    z = 0.4
    torch.manual_seed(0)
    ours = rnnlab.RNN(I, 32, zoneout=z).double().train()
    cell = nn.RNNCell(I, 32).double()
    cell.load_state_dict({k[:-3]: v for k, v in ours.state_dict().items()})
    x = torch.randn(T, 16, I, dtype=torch.float64)
    out = ours(x)[0]
    prev = torch.zeros(16, 32, dtype=torch.float64)
    kept_total = 0.0
    for t in range(T):
        new = cell(x[t], prev)
        kept = (out[t] - prev).abs() < 1e-12
        updated = (out[t] - new).abs() < 1e-12
        assert bool((kept | updated).all()), f"step {t}: a unit is neither its old nor its new value"
        kept_total += float(kept.double().mean())
        prev = out[t]
    assert abs(kept_total / T - z) < 0.05
    assert not torch.equal(out, ours(x)[0]), "training zoneout must be stochastic"


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_zoneout_towards_zero_is_a_no_op(training):
    torch.manual_seed(0)
    ref = nn.GRU(I, H)
    ours = rnnlab.GRU(I, H, zoneout=1e-9)
    ours.load_state_dict(ref.state_dict())
    ours.train(training)
    x = torch.randn(T, B, I)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)


# --- check_finite -----------------------------------------------------------------------------------------------
def test_check_finite_rejects_nan_input_and_inf_state():
    rnn = rnnlab.LSTM(I, H, check_finite=True)
    x = torch.randn(T, B, I)
    bad = x.clone()
    bad[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"input: contains 1 non-finite value\(s\)"):
        rnn(bad)
    h0, c0 = torch.zeros(1, B, H), torch.zeros(1, B, H)
    c0[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"hx \(c\): contains 1 non-finite"):
        rnn(x, (h0, c0))
    rnn(x, (h0, torch.zeros(1, B, H)))  # finite: fine
    assert torch.isnan(rnnlab.LSTM(I, H)(bad)[0]).any(), "without check_finite NaN passes through"
    with pytest.raises(ValueError, match="loss: contains 1 non-finite"):
        rnnlab.check_finite("loss", torch.tensor(float("nan")))


# --- recording --------------------------------------------------------------------------------------------------
GATES = {"lstm": {"i", "f", "g", "o", "c", "h"}, "gru": {"r", "z", "n", "h"}, "rnn": {"pre", "h"},
         "peephole": {"i", "f", "g", "o", "c", "h"}, "cifg": {"i", "f", "g", "o", "c", "h"},
         "greff_nig": {"f", "g", "o", "c", "h"}}


@pytest.mark.parametrize("cell", CELLS)
def test_recording_does_not_change_outputs_and_is_complete(cell):
    rnn = build(cell, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(B, T, I, dtype=torch.float64)
    plain_out, plain_h = rnn(x, lengths=LENGTHS)
    with rnn.recording() as rec:
        out, h = rnn(x, lengths=LENGTHS)
    # recording may move the call from a fused backend to the reference one: equal up to float64 rounding
    torch.testing.assert_close(out, plain_out, atol=1e-12, rtol=1e-12)
    for a, b in zip(parts(h), parts(plain_h)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert set(rec.gates) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for key, gates in rec.gates.items():
        if cell in GATES:
            assert set(gates) == GATES[cell], key
        assert "h" in gates and len(gates) >= 2, f"{key}: the cell emitted no gate"
        for name, v in gates.items():
            assert v.shape[:2] == (B, T), f"{key} {name}: expected batch_first (B, T, ...), got {tuple(v.shape)}"
            for b, L in enumerate(LENGTHS):
                assert bool((v[b, L:] == 0).all()), f"{key} {name}: padded steps must be zero"
    D = 2
    torch.testing.assert_close(torch.cat([rec[(1, d)]["h"] for d in range(D)], dim=-1), out)


def test_recorded_lstm_gates_equal_the_published_equations():
    rnn = build("lstm", bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with rnn.recording() as rec:
        rnn(x, lengths=LENGTHS)
    for d in (0, 1):
        p = rnn.layer_params(0, d)
        for b, L in enumerate(LENGTHS):
            steps = range(L - 1, -1, -1) if d else range(L)
            h = c = torch.zeros(H, dtype=torch.float64)
            for t in steps:  # Hochreiter & Schmidhuber 1997 with forget gate, torch.nn gate order i, f, g, o
                pre = p["weight_ih"] @ x[t, b] + p["bias_ih"] + p["weight_hh"] @ h + p["bias_hh"]
                i, f, g, o = pre.chunk(4)
                i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                c = f * c + i * g
                h = o * torch.tanh(c)
                for name, v in (("i", i), ("f", f), ("g", g), ("o", o), ("c", c), ("h", h)):
                    torch.testing.assert_close(rec[(0, d)][name][t, b], v, atol=1e-12, rtol=1e-12,
                                               msg=lambda m: f"dir {d} seq {b} step {t} gate {name}: {m}")


def test_recording_of_packed_input_equals_lengths_mode():
    rnn = build("lstm", bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with rnn.recording() as rec_len:
        rnn(x, lengths=LENGTHS)
    with rnn.recording() as rec_packed:
        rnn(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False))
    for key in rec_len.gates:
        for name, v in rec_len[key].items():
            assert torch.equal(rec_packed[key][name], v), f"{key} {name}"


def test_recording_unbatched_layout_and_scope():
    rnn = build("gru")
    x = torch.randn(T, I, dtype=torch.float64)
    with rnn.recording() as rec:
        rnn(x)
    assert {k: tuple(v.shape) for k, v in rec[(0, 0)].items()} == {n: (T, H) for n in ("r", "z", "n", "h")}
    rnn(torch.randn(2, T, I, dtype=torch.float64))  # outside the block: nothing more is recorded
    assert rec[(0, 0)]["h"].shape == (T, H)


# --- backends ---------------------------------------------------------------------------------------------------
def test_explicit_reference_backend_equals_auto():
    x = torch.randn(T, B, I, dtype=torch.float64)
    auto = build("lstm", bidirectional=True, num_layers=2)
    ref = build("lstm", bidirectional=True, num_layers=2, backend="reference")
    torch.testing.assert_close(auto(x, lengths=LENGTHS)[0], ref(x, lengths=LENGTHS)[0], atol=1e-10, rtol=1e-10)
    assert "reference" in rnnlab.available_backends()
