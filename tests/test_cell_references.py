"""Cells against independent references written here from the published equations (own weight slicing)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import rnnlab
from rnnlab import Recurrent
from rnnlab.cells import (ClockworkCell, DepthGatedLSTMCell, GreffLSTMCell, LayerNormLSTMCell, LSTMCell,
                          MinGRUCell, MinLSTMCell, PeepholeLSTMCell, resolve_cell)

F64 = torch.float64
T, B = 6, 3
pytestmark = pytest.mark.usefixtures("single_thread")

sig, tanh = torch.sigmoid, torch.tanh


def lin(x: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
    """x Wᵀ + b written out (not F.linear), so the reference shares no code path with the cells."""
    y = x @ W.T
    return y if b is None else y + b


def blocks(t: Tensor, names: str, H: int) -> dict[str, Tensor]:
    """Split the leading dim of a stacked weight/bias into named H-row blocks."""
    return {n: t[k * H:(k + 1) * H] for k, n in enumerate(names)}


def run(name: str, I: int, H: int, x: Tensor, hx=None, **kw):
    torch.manual_seed(0)
    rnn = Recurrent(name, I, H, dtype=F64, **kw)
    with torch.no_grad():  # non-trivial biases and peepholes so every term matters
        for p in rnn.parameters():
            p.add_(0.3 * torch.randn_like(p) * (p != 0))
    out, h_n = rnn(x, hx)
    return rnn, rnn.layer_params(0, 0), out, h_n


# --- the LSTM family: Greff et al. (2015) notation ------------------------------------------------------------
# y: output, c: cell, z: block input, i/f/o gates, p_*: peepholes, R_*: recurrent weights
def greff_reference(P: dict[str, Tensor], x: Tensor, H: int, variant: str) -> Tensor:
    present = {"i": variant != "NIG", "f": variant not in ("NFG", "CIFG"), "z": True, "o": variant != "NOG"}
    names = "".join(n for n in "ifzo" if present[n])  # torch order i, f, g(=z), o
    W, R = blocks(P["weight_ih"], names, H), blocks(P["weight_hh"], names, H)
    bW, bR = blocks(P["bias_ih"], names, H), blocks(P["bias_hh"], names, H)
    peep = {g: P.get(f"weight_c{g}") for g in "ifo"}
    if variant == "NP":
        assert not any(v is not None for v in peep.values())
    g_act = (lambda v: v) if variant == "NIAF" else tanh
    h_act = (lambda v: v) if variant == "NOAF" else tanh
    y = torch.zeros(x.shape[1], H, dtype=F64)
    c = torch.zeros_like(y)
    prev = {g: torch.zeros_like(y) for g in "ifo"}  # FGR: gate activations of the previous step
    Rgg = P.get("weight_gg")
    outs = []
    for x_t in x:
        def pre(g: str, cell: Tensor) -> Tensor:
            a = lin(x_t, W[g], bW[g]) + lin(y, R[g], bR[g])
            if peep.get(g) is not None:
                a = a + peep[g] * cell
            if variant == "FGR":  # R_{g'g}: rows of gate g, columns of the previous gate g'
                k = "ifo".index(g)
                for kk, g2 in enumerate("ifo"):
                    a = a + lin(prev[g2], Rgg[k * H:(k + 1) * H, kk * H:(kk + 1) * H])
            return a

        z = g_act(lin(x_t, W["z"], bW["z"]) + lin(y, R["z"], bR["z"]))
        i = sig(pre("i", c)) if present["i"] else torch.ones_like(c)
        if variant == "CIFG":
            f = 1 - i
        else:
            f = sig(pre("f", c)) if present["f"] else torch.ones_like(c)
        c = z * i + c * f
        o = sig(pre("o", c)) if present["o"] else torch.ones_like(c)
        y = h_act(c) * o
        prev = {"i": i, "f": f, "o": o}
        outs.append(y)
    return torch.stack(outs)


@pytest.mark.parametrize("variant", sorted(rnnlab.GREFF_VARIANTS))
def test_greff_variants_match_the_papers_equations(variant):
    x = torch.randn(T, B, 3, dtype=F64)
    _, P, out, _ = run(f"greff_{variant.lower()}", 3, 4, x)
    torch.testing.assert_close(out, greff_reference(P, x, 4, variant))


def test_peephole_and_cifg_cells_are_greff_v_and_cifg():
    x = torch.randn(T, B, 3, dtype=F64)
    _, P, out, _ = run("peephole", 3, 4, x)
    torch.testing.assert_close(out, greff_reference(P, x, 4, "V"))
    _, P, out, _ = run("cifg", 3, 4, x, peepholes="io")
    torch.testing.assert_close(out, greff_reference(P, x, 4, "CIFG"))


def test_peephole_subset_only_forget_gate():
    cell = PeepholeLSTMCell(3, 4, peepholes="f")
    assert [n for n, _ in cell.named_parameters() if n.startswith("weight_c")] == ["weight_cf"]
    x = torch.randn(T, B, 3, dtype=F64)
    _, P, out, _ = run("peephole", 3, 4, x, peepholes="f")
    P = dict(P, weight_ci=torch.zeros(4, dtype=F64), weight_co=torch.zeros(4, dtype=F64))  # absent = 0
    torch.testing.assert_close(out, greff_reference(P, x, 4, "V"))
    assert LSTMCell(3, 4, peepholes=("o", "i")).peepholes == ("i", "o")


def test_lstmp_matches_equations_and_torch():
    x = torch.randn(T, B, 3, dtype=F64)
    rnn, P, out, (h_n, c_n) = run("lstm", 3, 5, x, proj_size=2)
    W, R = blocks(P["weight_ih"], "ifgo", 5), blocks(P["weight_hh"], "ifgo", 5)
    bW, bR = blocks(P["bias_ih"], "ifgo", 5), blocks(P["bias_hh"], "ifgo", 5)
    r, c = torch.zeros(B, 2, dtype=F64), torch.zeros(B, 5, dtype=F64)
    outs = []
    for x_t in x:
        a = {g: lin(x_t, W[g], bW[g]) + lin(r, R[g], bR[g]) for g in "ifgo"}
        c = sig(a["f"]) * c + sig(a["i"]) * tanh(a["g"])
        r = lin(sig(a["o"]) * tanh(c), P["weight_hr"])  # Sak et al. 2014: r_t = W_rm m_t
        outs.append(r)
    torch.testing.assert_close(out, torch.stack(outs))
    torch.testing.assert_close(c_n[0], c)
    ref = torch.nn.LSTM(3, 5, proj_size=2, dtype=F64)
    ref.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(ref(x)[0], out)


@pytest.mark.parametrize("cls,gate_index", [(LSTMCell, 1), (PeepholeLSTMCell, 1), (DepthGatedLSTMCell, 1),
                                            (LayerNormLSTMCell, 1)])
def test_forget_bias_initialisation(cls, gate_index):
    cell = cls(3, 4, forget_bias=1.0)
    b_in = cell.bias_ln_ih if cls is LayerNormLSTMCell else cell.bias_ih
    assert torch.equal(b_in[4 * gate_index:4 * (gate_index + 1)], torch.ones(4))
    if hasattr(cell, "bias_hh"):
        assert torch.equal(cell.bias_hh[4:8], torch.zeros(4))
    assert not torch.equal(b_in[:4], torch.ones(4))  # other gates keep the uniform init
    rnn = Recurrent("lstm", 3, 4, num_layers=2, forget_bias=2.0)
    for layer in range(2):
        assert torch.equal(rnn.layer_params(layer)["bias_ih"][4:8], torch.full((4,), 2.0))
    cifg_like = GreffLSTMCell(3, 4, variant="NIG", forget_bias=1.0)  # gates f, g, o: f is block 0
    assert torch.equal(cifg_like.bias_ih[:4], torch.ones(4))


# --- MUT1-3: Jozefowicz, Zaremba & Sutskever (2015) -------------------------------------------------------------
def mut_reference(kind: str, P: dict[str, Tensor], x: Tensor, H: int) -> Tensor:
    I = x.shape[-1]
    h = torch.zeros(x.shape[1], H, dtype=F64)
    ih_names = {"mut1": "zr" if I == H else "zrh", "mut2": "zh" if I == H else "zrh", "mut3": "zrh"}[kind]
    hh_names = {"mut1": "rh", "mut2": "zrh", "mut3": "zrh"}[kind]
    W, bW = blocks(P["weight_ih"], ih_names, H), blocks(P["bias_ih"], ih_names, H)
    U, bU = blocks(P["weight_hh"], hh_names, H), blocks(P["bias_hh"], hh_names, H)
    outs = []
    for x_t in x:
        if kind == "mut1":
            z = sig(lin(x_t, W["z"], bW["z"]))
            r = sig(lin(x_t, W["r"], bW["r"]) + lin(h, U["r"], bU["r"]))
            x_term = tanh(x_t) if I == H else tanh(lin(x_t, W["h"], bW["h"]))
            h = tanh(lin(r * h, U["h"], bU["h"]) + x_term) * z + h * (1 - z)
        elif kind == "mut2":
            z = sig(lin(x_t, W["z"], bW["z"]) + lin(h, U["z"], bU["z"]))
            x_r = x_t if I == H else lin(x_t, W["r"], bW["r"])
            r = sig(x_r + lin(h, U["r"], bU["r"]))
            h = tanh(lin(r * h, U["h"], bU["h"]) + lin(x_t, W["h"], bW["h"])) * z + h * (1 - z)
        else:
            z = sig(lin(x_t, W["z"], bW["z"]) + lin(tanh(h), U["z"], bU["z"]))
            r = sig(lin(x_t, W["r"], bW["r"]) + lin(h, U["r"], bU["r"]))
            h = tanh(lin(r * h, U["h"], bU["h"]) + lin(x_t, W["h"], bW["h"])) * z + h * (1 - z)
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("kind", ["mut1", "mut2", "mut3"])
@pytest.mark.parametrize("I", [4, 3], ids=["I==H", "I!=H"])
def test_mut_cells_match_the_papers_equations(kind, I):
    x = torch.randn(T, B, I, dtype=F64)
    rnn, P, out, _ = run(kind, I, 4, x)
    torch.testing.assert_close(out, mut_reference(kind, P, x, 4))
    expected_rows = {"mut1": 2 if I == 4 else 3, "mut2": 2 if I == 4 else 3, "mut3": 3}[kind]
    assert P["weight_ih"].shape == (expected_rows * 4, I)


# --- Clockwork RNN: Koutník et al. (2014) -----------------------------------------------------------------------
def clockwork_reference(P: dict[str, Tensor], x: Tensor, sizes: list[int], periods: list[int],
                        t0: int = 0, h0: Tensor | None = None) -> Tensor:
    H = sum(sizes)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    h = torch.zeros(x.shape[1], H, dtype=F64) if h0 is None else h0.clone()
    outs = []
    for step, x_t in enumerate(x):
        t = t0 + step
        new = h.clone()
        for i, (si, ni, Ti) in enumerate(zip(starts, sizes, periods)):
            if t % Ti:
                continue  # module i is not clocked at t: keeps its value
            rows = slice(si, si + ni)
            a = lin(x_t, P["weight_ih"][rows], P["bias_ih"][rows]) + P["bias_hh"][rows]
            for sj, nj, Tj in zip(starts, sizes, periods):
                if Tj >= Ti:  # module i reads itself and the slower modules
                    a = a + lin(h[:, sj:sj + nj], P["weight_hh"][rows, sj:sj + nj])
            new[:, rows] = tanh(a)
        h = new
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("periods,H", [((1, 2, 4), 6), ((1, 3), 5), ((4, 1), 4)])
def test_clockwork_matches_the_papers_equations(periods, H):
    x = torch.randn(9, B, 2, dtype=F64)
    rnn, P, out, (h_n, n_n) = run("clockwork", 2, H, x, periods=periods)
    sizes = list(rnn.cell.module_sizes)
    assert sum(sizes) == H and max(sizes) - min(sizes) <= 1
    # the masked-out entries are not part of the model: randomise them, the output must not move
    with torch.no_grad():
        mask = rnn.cell.recurrent_mask(F64)
        rnn.weight_hh_l0.add_(torch.randn(H, H, dtype=F64) * (1 - mask))
    out2, _ = rnn(x)
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(out, clockwork_reference(P, x, sizes, list(periods)))
    assert torch.equal(n_n, torch.full((1, B, 1), 9.0, dtype=F64))


def test_clockwork_init_is_block_triangular_and_masked_weights_get_no_gradient():
    cell = ClockworkCell(2, 6, periods=(1, 2, 4))
    w = cell.weight_hh.detach()
    assert torch.equal(w[2:4, 0:2], torch.zeros(2, 2)) and torch.equal(w[4:, :4], torch.zeros(2, 4))
    assert bool((w[0:2, 2:] != 0).all())  # fast module reads the slower ones
    h, n = cell(torch.randn(3, 2), (torch.randn(3, 6), torch.zeros(3, 1)))
    h.sum().backward()
    assert torch.equal(cell.weight_hh.grad * (1 - cell.recurrent_mask()), torch.zeros(6, 6))


def test_clockwork_clock_continues_across_chunks_and_stops_on_padding():
    x = torch.randn(8, 2, 2, dtype=F64)
    rnn = Recurrent("clockwork", 2, 6, periods=(1, 2, 4), dtype=F64)
    full, _ = rnn(x)
    first, state = rnn(x[:3])
    second, _ = rnn(x[3:], state)
    torch.testing.assert_close(torch.cat([first, second]), full)
    # a sequence of length 5 ends with n = 5 and would continue its clock at t = 5
    _, (h_n, n_n) = rnn(x, lengths=[8, 5])
    assert n_n[0, :, 0].tolist() == [8.0, 5.0]
    P = rnn.layer_params(0)
    ref = clockwork_reference(P, x[5:, 1:], [2, 2, 2], [1, 2, 4], t0=5, h0=h_n[0, 1:])
    cont, _ = rnn(x[5:, 1:], (h_n[:, 1:], n_n[:, 1:]))
    torch.testing.assert_close(cont, ref)


# --- minGRU / minLSTM: Feng et al. (2024) ----------------------------------------------------------------------
def g_paper(v: Tensor) -> Tensor:
    return torch.where(v >= 0, v + 0.5, sig(v))


def min_reference(kind: str, P: dict[str, Tensor], x: Tensor, h0: Tensor) -> Tensor:
    """The sequential (non-log) form of the paper's algorithms, with its positive g for h̃."""
    H = h0.shape[-1]
    names = "zh" if kind == "mingru" else "fih"
    W, bW = blocks(P["weight_ih"], names, H), blocks(P["bias_ih"], names, H)
    h, outs = h0, []
    for x_t in x:
        h_tilde = g_paper(lin(x_t, W["h"], bW["h"]))
        if kind == "mingru":
            z = sig(lin(x_t, W["z"], bW["z"]))
            h = (1 - z) * h + z * h_tilde
        else:
            f, i = sig(lin(x_t, W["f"], bW["f"])), sig(lin(x_t, W["i"], bW["i"]))
            h = f / (f + i) * h + i / (f + i) * h_tilde
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
def test_min_cells_match_the_papers_equations(kind):
    x = torch.randn(T, B, 3, dtype=F64)
    h0 = torch.randn(1, B, 4, dtype=F64)  # any sign: the scan handles h_0 outside the log
    _, P, out, h_n = run(kind, 3, 4, x, h0)
    ref = min_reference(kind, P, x, h0[0])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(h_n[0], ref[-1])
    assert min_reference(kind, P, x, torch.zeros(B, 4, dtype=F64)).min() > 0  # h̃ > 0 keeps h > 0


def step_loop(cell, xp: Tensor, h0: Tensor, p, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    h, outs = h0, []
    for t in range(xp.shape[0]):
        new = cell.step(xp[t], (h,), p)[0]
        h = new if mask is None else torch.where(mask[t], new, h)
        outs.append(h if mask is None else h * mask[t])
    return torch.stack(outs), h


@pytest.mark.parametrize("cls", [MinGRUCell, MinLSTMCell])
@pytest.mark.parametrize("scale", [1.0, 8.0], ids=["normal", "saturated"])
@pytest.mark.parametrize("scan", ["log", "sequential"])
def test_sequence_scan_equals_step_loop_with_padding_and_gradients(cls, scale, scan):
    cell = cls(3, 4, dtype=F64, scan=scan)
    p = {n: t for n, t in cell.named_parameters()}
    x = (scale * torch.randn(7, B, 3, dtype=F64)).requires_grad_()
    h0 = torch.randn(B, 4, dtype=F64, requires_grad=True)
    mask = (torch.arange(7).unsqueeze(1) < torch.tensor([7, 3, 1])).unsqueeze(-1)  # (T, B, 1)
    w = torch.randn(7, B, 4, dtype=F64)
    results = []
    for fast in (True, False):
        xp = cell.project_input(x, p)
        out, final = cell.sequence(xp, (h0,), p, mask) if fast else step_loop(cell, xp, h0, p, mask)
        final = final[0] if fast else final
        loss = (out * w).sum() + final.pow(2).sum()
        grads = torch.autograd.grad(loss, [x, h0, *p.values()])
        results.append((out, final, grads))
    (o1, f1, g1), (o2, f2, g2) = results
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(f1, f2)
    for a, b in zip(g1, g2):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
@pytest.mark.parametrize("scan", ["log", "sequential"])
def test_wrapper_scan_equals_wrapper_step_loop_bidirectional_with_lengths(kind, scan, monkeypatch):
    """Through Recurrent (reverse within lengths, two layers): the sequence() fast path and the step loop
    give the same outputs, final states and parameter gradients."""
    rnn = Recurrent(kind, 3, 4, num_layers=2, bidirectional=True, dtype=F64, scan=scan)
    x = torch.randn(T, B, 3, dtype=F64)
    hx = torch.randn(4, B, 4, dtype=F64)
    lengths = [6, 2, 4]
    results = []
    for fast in (True, False):
        if not fast:
            for _, _, c in rnn.cells():
                monkeypatch.setattr(c, "sequence", lambda *a, **k: None)  # no fast path: the loop runs
        out, h_n = rnn(x, hx, lengths=lengths)
        grads = torch.autograd.grad((out * torch.arange(out.numel()).reshape(out.shape).sin()).sum()
                                    + h_n.sum(), list(rnn.parameters()))
        results.append((out, h_n, grads))
    (o1, h1, g1), (o2, h2, g2) = results
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(h1, h2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [MinGRUCell, MinLSTMCell])
@pytest.mark.parametrize("scan", ["log", "sequential"])
def test_scan_long_float32_sequence_stays_close_to_float64_loop(cls, scan):
    cell64 = cls(8, 16, dtype=F64)
    cell32 = cls(8, 16, scan=scan)
    cell32.load_state_dict({k: v.float() for k, v in cell64.state_dict().items()})
    x = torch.randn(2048, 2, 8, dtype=F64)
    h0 = torch.randn(2, 16, dtype=F64)
    p64 = dict(cell64.named_parameters())
    with torch.no_grad():
        ref, _ = step_loop(cell64, cell64.project_input(x, p64), h0, p64, None)
        out, _ = cell32.sequence(cell32.project_input(x.float(), dict(cell32.named_parameters())),
                                 (h0.float(),), dict(cell32.named_parameters()), None)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
@pytest.mark.parametrize("scan", ["log", "sequential"])
def test_scan_gradcheck_with_lengths_and_any_sign_initial_state(kind, scan):
    cell = resolve_cell(kind)(2, 3, dtype=F64, scan=scan)
    p = dict(cell.named_parameters())
    mask = (torch.arange(5).unsqueeze(1) < torch.tensor([5, 2])).unsqueeze(-1)
    xp = torch.randn(5, 2, p["weight_ih"].shape[0], dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda xp, h0: (lambda o, s: (o, *s))(*cell.sequence(xp, (h0,), p, mask)),
                                    (xp, h0))


def test_scan_option_is_validated_and_auto_picks_the_cpu_loop():
    with pytest.raises(ValueError, match="scan"):
        MinGRUCell(3, 4, scan="parallel")
    cell = MinGRUCell(3, 4)
    xp = cell.project_input(torch.randn(4, 2, 3), dict(cell.named_parameters()))
    out, _ = cell.sequence(xp, (torch.zeros(2, 4),), dict(cell.named_parameters()), None)
    assert "SequentialScan" in type(out.grad_fn).__name__ or "SequentialScan" in str(out.grad_fn.next_functions)


# --- layer-normalised LSTM / GRU: Ba, Kiros & Hinton (2016) -----------------------------------------------------
def layer_norm(v: Tensor, gain: Tensor, shift: Tensor, eps: float = 1e-5) -> Tensor:
    mu = v.mean(-1, keepdim=True)
    sigma = ((v - mu) ** 2).mean(-1, keepdim=True).add(eps).sqrt()
    return gain * (v - mu) / sigma + shift


def test_layer_norm_lstm_matches_the_papers_equations():
    x = torch.randn(T, B, 3, dtype=F64)
    _, P, out, (h_n, c_n) = run("ln_lstm", 3, 4, x)
    h = c = torch.zeros(B, 4, dtype=F64)
    outs = []
    for x_t in x:
        a = (layer_norm(lin(h, P["weight_hh"]), P["weight_ln_hh"], P["bias_ln_hh"])
             + layer_norm(lin(x_t, P["weight_ih"]), P["weight_ln_ih"], P["bias_ln_ih"]))
        i, f, g, o = a[:, :4], a[:, 4:8], a[:, 8:12], a[:, 12:]
        c = sig(f) * c + sig(i) * tanh(g)
        h = sig(o) * tanh(layer_norm(c, P["weight_ln_c"], P["bias_ln_c"]))
        outs.append(h)
    torch.testing.assert_close(out, torch.stack(outs))
    torch.testing.assert_close(c_n[0], c)


def test_layer_norm_gru_matches_its_equations_and_is_scale_invariant():
    x = torch.randn(T, B, 3, dtype=F64)
    rnn, P, out, _ = run("ln_gru", 3, 4, x)
    h = torch.zeros(B, 4, dtype=F64)
    outs = []
    for x_t in x:
        ax = layer_norm(lin(x_t, P["weight_ih"]), P["weight_ln_ih"], P["bias_ln_ih"])
        ah = layer_norm(lin(h, P["weight_hh"]), P["weight_ln_hh"], P["bias_ln_hh"])
        r, z = sig(ax[:, :4] + ah[:, :4]), sig(ax[:, 4:8] + ah[:, 4:8])
        n = tanh(ax[:, 8:] + r * ah[:, 8:])
        h = (1 - z) * n + z * h
        outs.append(h)
    torch.testing.assert_close(out, torch.stack(outs))
    with torch.no_grad():  # LN makes the step invariant to rescaling the input weights (up to eps)
        rnn.weight_ih_l0.mul_(1000.0)
    torch.testing.assert_close(rnn(x)[0], out, atol=1e-4, rtol=1e-4)


# --- depth-gated LSTM: Yao et al. (2015), a hand-written 2-layer loop --------------------------------------------
def depth_gated_reference(P0: dict, P1: dict, x: Tensor, H: int, lengths: list[int]) -> tuple[Tensor, Tensor]:
    """Layer 0: peephole LSTM; layer 1 adds d ⊙ c^0_t.  Each sequence alone, cut to its length."""
    out = torch.zeros(x.shape[0], x.shape[1], H, dtype=F64)
    c_fin = torch.zeros(2, x.shape[1], H, dtype=F64)
    for b, L in enumerate(lengths):
        hs = [torch.zeros(1, H, dtype=F64) for _ in range(2)]
        cs = [torch.zeros(1, H, dtype=F64) for _ in range(2)]
        for t in range(L):
            inp, c_low = x[t, b:b + 1], None
            for layer, P in enumerate((P0, P1)):
                W, bW = blocks(P["weight_ih"], "ifgod", H), blocks(P["bias_ih"], "ifgod", H)
                R, bR = blocks(P["weight_hh"], "ifgo", H), blocks(P["bias_hh"], "ifgo", H)
                h, c = hs[layer], cs[layer]
                a = {g: lin(inp, W[g], bW[g]) + lin(h, R[g], bR[g]) for g in "ifgo"}
                i = sig(a["i"] + P["weight_ci"] * c)
                f = sig(a["f"] + P["weight_cf"] * c)
                c_new = f * c + i * tanh(a["g"])
                if c_low is not None:
                    d = sig(lin(inp, W["d"], bW["d"]) + P["weight_cd"] * c + P["weight_ld"] * c_low)
                    c_new = c_new + d * c_low
                o = sig(a["o"] + P["weight_co"] * c_new)
                hs[layer], cs[layer] = o * tanh(c_new), c_new
                inp, c_low = hs[layer], c_new
            out[t, b] = hs[1][0]
        c_fin[:, b] = torch.cat(cs)
    return out, c_fin


def test_depth_gated_two_layers_match_a_hand_written_loop():
    x = torch.randn(T, B, 3, dtype=F64)
    lengths = [6, 4, 1]
    torch.manual_seed(0)
    rnn = Recurrent("depth_gated", 3, 4, num_layers=2, dtype=F64)
    out, (h_n, c_n) = rnn(x, lengths=lengths)
    ref_out, ref_c = depth_gated_reference(rnn.layer_params(0), rnn.layer_params(1), x, 4, lengths)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(c_n, ref_c)
    # the depth gate matters: zeroing w_ld and pushing d to 0 via its bias gives a plain peephole stack
    with torch.no_grad():
        rnn.weight_ld_l1.zero_()
        rnn.weight_cd_l1.zero_()
        rnn.weight_ih_l1[16:].zero_()
        rnn.bias_ih_l1[16:].fill_(-1e3)
    cut, _ = rnn(x, lengths=lengths)
    peep = Recurrent("peephole", 3, 4, num_layers=2, dtype=F64)
    with torch.no_grad():
        for layer in range(2):
            for n, v in peep.layer_params(layer).items():
                src = rnn.layer_params(layer)[n]
                v.copy_(src[:16] if n in ("weight_ih", "bias_ih") else src)
    torch.testing.assert_close(cut, peep(x, lengths=lengths)[0])
    assert not torch.allclose(cut, out)


def test_depth_gated_bidirectional_reads_the_same_direction_below():
    torch.manual_seed(0)
    rnn = Recurrent("depth_gated", 3, 4, num_layers=2, bidirectional=True, dtype=F64)
    x = torch.randn(T, B, 3, dtype=F64)
    out, _ = rnn(x)
    # the reverse direction of layer 1 on x equals the forward direction of an equal stack on reversed x
    fwd = Recurrent("depth_gated", 3, 4, num_layers=2, dtype=F64)
    with torch.no_grad():
        for n, v in fwd.layer_params(0).items():
            v.copy_(rnn.layer_params(0, 1)[n])
        for n, v in fwd.layer_params(1).items():
            src = rnn.layer_params(1, 1)[n]
            # layer 1 reads [fwd, rev] of layer 0; only the reverse half feeds this stack's single direction
            v.copy_(src[:, 4:] if n == "weight_ih" else src)
        rnn.weight_ih_l1_reverse[:, :4].zero_()
    out_rev = rnn(x)[0][..., 4:]
    torch.testing.assert_close(out_rev, fwd(x.flip(0))[0].flip(0))
    assert out.shape == (T, B, 8)


# --- bad options ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build,match", [
    (lambda: LSTMCell(3, 4, peepholes="x"), "peepholes"),
    (lambda: LSTMCell(3, 4, peepholes="ff"), "peepholes"),
    (lambda: LSTMCell(3, 4, forget_gate=False, peepholes="f"), "peepholes"),
    (lambda: LSTMCell(3, 4, proj_size=4), "proj_size"),
    (lambda: LSTMCell(3, 4, proj_size=-1), "proj_size"),
    (lambda: LSTMCell(3, 4, coupled=True, input_gate=False), "coupled"),
    (lambda: GreffLSTMCell(3, 4, variant="NFG", forget_bias=1.0), "forget_bias"),
    (lambda: GreffLSTMCell(3, 4, variant="XYZ"), "variant"),
    (lambda: ClockworkCell(3, 2, periods=(1, 2, 4)), "periods"),
    (lambda: ClockworkCell(3, 4, periods=(1, 0)), "periods"),
    (lambda: ClockworkCell(3, 4, periods=()), "periods"),
    (lambda: ClockworkCell(3, 4, periods="12"), "periods"),
    (lambda: resolve_cell("ln_lstm")(3, 4, eps=0.0), "eps"),
    (lambda: resolve_cell("ln_lstm")(3, 4, bias=False, forget_bias=1.0), "forget_bias"),
    (lambda: resolve_cell("rnn")(3, 4, nonlinearity="sigmoid"), "nonlinearity"),
    (lambda: Recurrent("nope", 3, 4), "cell"),
    (lambda: Recurrent("mingru", 0, 4), "input_size"),
])
def test_bad_cell_options_raise_value_error_naming_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("build,match", [
    (lambda: DepthGatedLSTMCell(3, 4, peepholes="ifo"), "peepholes"),
    (lambda: resolve_cell("gru")(3, 4, reset_after=1), "reset_after"),
    (lambda: resolve_cell("mut1")(3, 4.0), "hidden_size"),
    (lambda: Recurrent("clockwork", 3, 4, bias="yes"), "bias"),
    (lambda: Recurrent(LSTMCell(3, 4), 3, 4), "cell"),
])
def test_bad_cell_option_types_raise_type_error_naming_the_argument(build, match):
    with pytest.raises(TypeError, match=match):
        build()


def test_unknown_cell_option_is_rejected():
    with pytest.raises(TypeError, match="periods"):
        Recurrent("mingru", 3, 4, periods=(1, 2))
