"""Inspection: recording for every cell, gradient flow through time, unit ranking, plots, page and CLI."""

from __future__ import annotations

import base64
import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib import colormaps  # noqa: E402

from rnnlab import Recurrent, cell_names  # noqa: E402
from rnnlab.inspection import (Activations, compare_cells, exploding_demo, gradient_flow, rank_units,  # noqa: E402
                            record_activations, text_features)
from rnnlab.inspection.html import page_data, render_page  # noqa: E402
from rnnlab.inspection.plots import (plot_cell_trajectories, plot_exploding, plot_gate_heatmaps,  # noqa: E402
                                  plot_gradient_flow)
from rnnlab.models import ModelConfig, SequenceModel  # noqa: E402

CELLS = cell_names()


def _rnn(name: str, **kw) -> Recurrent:
    torch.manual_seed(0)
    return Recurrent(name, 3, 5, num_layers=2, bidirectional=True, batch_first=True, **kw)


# --- recording -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CELLS)
def test_recording_every_cell_layer_and_direction(name):
    x = torch.randn(3, 7, 3)
    lengths = torch.tensor([7, 4, 2])
    rnn = _rnn(name, backend="reference").eval()
    plain, _ = rnn(x, lengths=lengths)
    with rnn.recording():
        out, _ = rnn(x, lengths=lengths)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)  # recording never changes the outputs
    rnn = _rnn(name).eval()  # "auto" may run a compiled backend when not recording: same up to rounding
    plain, _ = rnn(x, lengths=lengths)
    with rnn.recording() as rec:
        out, _ = rnn(x, lengths=lengths)
    torch.testing.assert_close(out, plain)
    assert set(rec.gates) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    H_out = rnn.cell.output_size
    for (layer, direction), gates in rec.gates.items():
        emitted = set(gates) - {"h"}
        # a cell must emit at least one activation per gate block of its weights (G*H rows of weight_ih)
        blocks = rnn.layer_params(layer, direction)["weight_ih"].shape[0] // rnn.hidden_size
        assert len(emitted) >= blocks, f"{name} emits {sorted(emitted)} for {blocks} gate blocks"
        if layer == rnn.num_layers - 1:  # the last layer's h is the output
            torch.testing.assert_close(gates["h"], out[..., direction * H_out:(direction + 1) * H_out])
        for g, v in gates.items():
            assert v.shape[:2] == (3, 7), (name, g)
            assert torch.isfinite(v).all()
            assert (v[1, 4:] == 0).all() and (v[2, 2:] == 0).all(), f"{name}.{g}: padded steps not zero"
            assert v[0].abs().sum() > 0, f"{name}.{g}: nothing recorded"


@pytest.mark.parametrize("name", [n for n in CELLS if n in ("lstm", "peephole", "cifg") or n.startswith("greff")])
def test_recording_lstm_family_emits_its_gates_and_they_explain_h(name):
    rnn = _rnn(name).eval()
    with rnn.recording() as rec:
        rnn(torch.randn(2, 6, 3))
    for key, gates in rec.gates.items():
        cell = rnn._cells[key[0]][key[1]]
        assert set(cell.gates) | {"c"} <= set(gates), f"{name} misses {set(cell.gates) - set(gates)}"
        if cell.output_activation and not cell.proj_size and "o" in gates:
            torch.testing.assert_close(gates["h"], gates["o"] * torch.tanh(gates["c"]))


def test_recording_gru_and_elman_values_follow_their_equations():
    rnn = _rnn("gru").eval()
    with rnn.recording() as rec:
        rnn(torch.randn(2, 6, 3))
    g = rec[(0, 0)]
    h_prev = torch.cat([torch.zeros_like(g["h"][:, :1]), g["h"][:, :-1]], dim=1)
    torch.testing.assert_close(g["h"], (1 - g["z"]) * g["n"] + g["z"] * h_prev)
    rnn = _rnn("rnn").eval()
    with rnn.recording() as rec:
        rnn(torch.randn(2, 6, 3))
    torch.testing.assert_close(rec[(1, 1)]["h"], torch.tanh(rec[(1, 1)]["pre"]))


def test_record_activations_layout_and_model():
    model = SequenceModel(ModelConfig(cell="gru", hidden_size=6, embedding_dim=4), input_size=1, output_size=9,
                          target="seq_class", vocab_size=9)
    acts = record_activations(model, torch.randint(0, 9, (2, 11)))
    assert acts.cell == "gru" and acts.gates() == ["r", "z", "n", "h"]
    assert acts.values[(0, 0)]["z"].shape == (2, 11, 6) and acts.lengths.tolist() == [11, 11]
    time_major = Recurrent("lstm", 3, 4)  # (T, B, I) in, (B, T, H) out
    acts = record_activations(time_major, torch.randn(9, 2, 3))
    assert acts.values[(0, 0)]["c"].shape == (2, 9, 4)


# --- gradient flow ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CELLS)
def test_probing_leaves_the_outputs_unchanged(name):
    """Probes add zeros (the scan cells minGRU/minLSTM run their step loop instead of the scan: rounding)."""
    rnn = _rnn(name, backend="reference", zoneout=0.2).eval()
    x = torch.randn(3, 6, 3)
    ref, ref_state = rnn(x, lengths=[6, 4, 1])
    with rnn.probing() as probes:
        out, state = rnn(x, lengths=[6, 4, 1])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(state, ref_state, rtol=0, atol=1e-6)
    assert sorted(probes) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert probes[(1, 1)].shape == (6, 3, rnn.cell.output_size) and probes[(1, 1)].requires_grad
    assert rnn._probes is None  # the block is over: the next forward adds nothing


def test_probe_gradients_equal_retained_gradients_of_a_hand_written_loop():
    """∂L/∂h_t per step and direction, on the default backend (probing must leave the fused kernel aside)."""
    torch.manual_seed(2)
    rnn = Recurrent("lstm", 3, 5, bidirectional=True).double()
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    w = torch.randn(7, 2, 10, dtype=torch.float64)
    with rnn.probing() as probes:
        out, _ = rnn(x)
    (out.tanh() * w).sum().backward()
    per_dir: list[dict[int, torch.Tensor]] = []
    for d in (0, 1):
        cell, p = rnn._cells[0][d], rnn.layer_params(0, d)
        state = cell.init_state(2, dtype=x.dtype, device=x.device)
        hs = {}
        for t in (range(6, -1, -1) if d else range(7)):
            state = cell.step(cell.project_input(x[t], p), state, p)
            state[0].retain_grad()
            hs[t] = state[0]
        per_dir.append(hs)
    hand = torch.cat([torch.stack([hs[t] for t in range(7)]) for hs in per_dir], -1)  # (T, B, 2H)
    torch.testing.assert_close(hand, out)
    (hand.tanh() * w).sum().backward()
    for d, hs in enumerate(per_dir):
        torch.testing.assert_close(probes[(0, d)].grad, torch.stack([hs[t].grad for t in range(7)]))


def test_gradient_flow_runs_in_eval_mode_and_restores_training():
    rnn = _rnn("gru", dropout=0.5, zoneout=0.3)
    x = torch.randn(2, 8, 3)
    first = gradient_flow(rnn, x, lambda out: out[:, -1].sum())
    assert rnn.training and all(c.training for _, _, c in rnn.cells())
    second = gradient_flow(rnn.eval(), x, lambda out: out[:, -1].sum())
    for key in first.h:  # no random dropout or zoneout masks: the same curves
        np.testing.assert_array_equal(first.h[key], second.h[key])
    assert first.h[(0, 1)][0] > 0 and first.h[(0, 0)][3] > 0


def test_hidden_gradients_match_backprop_from_the_equations():
    """Elman tanh: g_{t-1} = W_hhᵀ (g_t ⊙ (1 - h_t²)) from h_t = tanh(W_ih x_t + W_hh h_{t-1} + b)."""
    torch.manual_seed(1)
    rnn = Recurrent("rnn", 2, 6, batch_first=True).double()
    x = torch.randn(3, 12, 2, dtype=torch.float64)
    w = torch.randn(6, dtype=torch.float64)
    flow = gradient_flow(rnn, x, lambda out: (out[:, -1] @ w).sum())
    with torch.no_grad():
        out, _ = rnn(x)
        W = rnn.weight_hh_l0
        g = w.expand(3, 6).clone()  # ∂L/∂h_T
        expected = [float(g.norm())]
        for t in range(11, 0, -1):
            g = (g * (1 - out[:, t] ** 2)) @ W
            expected.append(float(g.norm()))
    np.testing.assert_allclose(flow.h[(0, 0)], expected, rtol=1e-10)
    assert flow.x.shape == (12,) and flow.x[0] > 0


def test_vanishing_in_elman_but_not_in_lstm_or_gru():
    flows = compare_cells(("rnn", "lstm", "gru"), length=60, hidden=32, batch=16, seed=0)
    rnn, lstm, gru = flows["rnn"], flows["lstm"], flows["gru"]
    assert rnn.ratio(50) < 1e-3  # tanh RNN with small weights: gone after 50 steps
    assert lstm.ratio(50) > 1e4 * rnn.ratio(50)  # the forget-gate path keeps it (forget bias 1)
    assert gru.ratio(50) > 1e3 * rnn.ratio(50)
    assert lstm.x[50] / lstm.x[1] > 1e4 * rnn.x[50] / rnn.x[1]
    assert np.all(np.diff(np.log(rnn.h[(0, 0)][5:])) < 0)  # monotone decay after the first steps


def test_exploding_gradients_and_clipping():
    demo = exploding_demo(length=50, hidden=32, scale=1.5, steps=5, seed=0)
    g = demo["flow"].h[(0, 0)]
    assert g[40:].mean() > 5 * g[:3].mean()  # grows with the distance from the loss
    no_clip, clip = demo["no_clip"]["loss"], demo["clip"]["loss"]
    assert not np.isfinite(no_clip).all() or max(no_clip) > 1e6
    assert np.isfinite(clip).all() and len(clip) == 5 and min(clip[1:]) < clip[0]
    assert demo["clip"]["grad_norm"][0] == pytest.approx(demo["no_clip"]["grad_norm"][0])  # same start


def test_gradient_flow_rejects_bad_input():
    rnn = Recurrent("rnn", 2, 4)
    with pytest.raises(ValueError, match="x: expected"):
        gradient_flow(rnn, torch.randn(5, 3), lambda out: out.sum())
    with pytest.raises(ValueError, match="loss_fn"):
        gradient_flow(rnn, torch.randn(5, 3, 2), lambda out: out)


# --- units ---------------------------------------------------------------------------------------------------
def test_text_features():
    f = text_features('Ab "c(d[e])"\nxy')
    assert f["inside quotes"].tolist()[3:12] == [1.0] * 8 + [0.0]
    assert f["bracket depth"].tolist()[5:11] == [1, 1, 2, 2, 1, 0]
    assert f["position in line"][-1] == 2 and f["is newline"][12] == 1
    assert f["is uppercase"][0] == 1 and f["is vowel"][:2].tolist() == [1, 0]


def test_rank_units_finds_the_planted_units():
    rng = np.random.default_rng(0)
    text = ('say "hello there" (to [him]) and go\n' * 30)
    feats = text_features(text)
    T, H = len(text), 12
    h = rng.normal(size=(1, T, H))
    h[0, :, 7] = feats["inside quotes"] + 0.1 * rng.normal(size=T)  # a quote-detection unit
    f = rng.random((1, T, H))
    f[0, :, 2] = -feats["bracket depth"] + 0.2 * rng.normal(size=T)  # anti-correlated with depth
    acts = Activations({(0, 0): {"f": f, "h": h}}, np.array([T]), "lstm")
    ranking = rank_units(acts, feats, top=5)
    found = {(u["gate"], u["unit"], u["feature"]) for u in ranking["top_units"][:2]}
    assert found == {("h", 7, "inside quotes"), ("f", 2, "bracket depth")}
    assert ranking["by_feature"]["bracket depth"][0]["r"] < -0.9
    assert all(abs(u["r"]) < 0.5 for u in ranking["top_units"][2:])
    json.dumps(ranking)  # JSON-ready


# --- plots ----------------------------------------------------------------------------------------------------
def _cell_pixels(fig, ax, path, rows: int, cols: int) -> np.ndarray:
    """RGB of the PNG at the centre of each heatmap cell (rows from the bottom, origin='lower')."""
    img = mpimg.imread(path)[..., :3]
    x0, y0, x1, y1 = ax.get_window_extent().extents
    H = img.shape[0]
    out = np.zeros((rows, cols, 3))
    for r in range(rows):
        for c in range(cols):
            px = x0 + (c + 0.5) / cols * (x1 - x0)
            py = y0 + (r + 0.5) / rows * (y1 - y0)
            out[r, c] = img[int(H - py), int(px)]
    return out


@pytest.mark.parametrize("signed", [False, True])
def test_heatmap_pixels_show_the_recorded_values(tmp_path, signed):
    rng = np.random.default_rng(0)
    v = rng.random((30, 6)) * (2 - 1 if not signed else 2)  # (T, H)
    if signed:
        v = v - 1.0
    path = tmp_path / "g.png"
    fig = plot_gate_heatmaps({"g": v, "h": np.tanh(v)}, path)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), v.T)
    got = _cell_pixels(fig, ax, path, 6, 30)
    cmap, lo, hi = ("RdBu_r", -np.abs(v).max(), np.abs(v).max()) if signed else ("viridis", 0.0, 1.0)
    expected = colormaps[cmap]((v.T - lo) / (hi - lo))[..., :3]
    assert np.abs(got - expected).mean() < 0.02
    assert np.corrcoef(got.reshape(-1), expected.reshape(-1))[0, 1] > 0.98


def test_trajectory_and_gradient_plots_draw_their_data(tmp_path):
    rng = np.random.default_rng(1)
    c = np.cumsum(rng.normal(size=(40, 10)), axis=0)
    c[:, 3] *= 10  # the most variable unit
    fig = plot_cell_trajectories(c, tmp_path / "c.png", units=4)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4 and np.allclose(lines[0].get_ydata(), c[:, 3])
    flows = compare_cells(("rnn", "lstm"), length=20, hidden=8, batch=4)
    fig = plot_gradient_flow(flows, tmp_path / "gf.png")
    ax_h = fig.axes[0]
    assert [ln.get_label() for ln in ax_h.get_lines()] == ["rnn", "lstm"]
    np.testing.assert_allclose(ax_h.get_lines()[0].get_ydata(), flows["rnn"].h[(0, 0)])
    assert ax_h.get_yscale() == "log"
    demo = exploding_demo(length=20, hidden=8, batch=4, steps=2)
    fig = plot_exploding(demo, tmp_path / "ex.png")
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), demo["flow"].h[(0, 0)])
    for name in ("c.png", "gf.png", "ex.png"):
        img = mpimg.imread(tmp_path / name)[..., :3]
        assert img.std() > 0.05 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50


# --- page ---------------------------------------------------------------------------------------------------
def test_page_is_self_contained_and_carries_the_values():
    rng = np.random.default_rng(2)
    vals = {"i": rng.random((2, 8, 3)).astype(np.float32), "c": rng.normal(size=(2, 8, 3)).astype(np.float32)}
    vals["h"] = np.tanh(vals["c"])
    acts = Activations({(0, 0): vals}, np.array([8, 5]), "lstm")
    page = render_page(page_data(acts, title="t <x>", texts=["</scrip>", "a<b>c"]))
    assert "<title>t &lt;x&gt;</title>" in page
    assert not re.search(r"(src|href)=\"https?:", page) and "http://" not in page.split("<script>")[1]
    payload = page.split("const DATA = ", 1)[1].split(";\n", 1)[0]
    data = json.loads(payload.replace("<\\/", "</"))
    g = data["layers"][0]["gates"]["c"]
    q = np.frombuffer(base64.b64decode(g["data"]), dtype=np.uint8).reshape(g["shape"])
    back = g["lo"] + q / 255 * (g["hi"] - g["lo"])
    assert np.abs(back - vals["c"]).max() <= (g["hi"] - g["lo"]) / 255
    assert g["signed"] and not data["layers"][0]["gates"]["i"]["signed"]
    assert data["text"] == ["</scrip>", "a<b>c"]
    with pytest.raises(ValueError, match="texts\\[1\\]: expected 5"):
        page_data(acts, title="t", texts=["abcdefgh", "abc"])


# --- CLI ---------------------------------------------------------------------------------------------------
def _checkpoint(tmp_path, task_name, options, cell, **model_io):
    from rnnlab.tasks import make_task
    from rnnlab.train.checkpoint import save_checkpoint

    task = make_task(task_name, **options)
    cfg = ModelConfig(cell=cell, hidden_size=8, num_layers=1, embedding_dim=6)
    torch.manual_seed(0)
    model = SequenceModel(cfg, input_size=task.input_size, output_size=task.output_size, target=task.target,
                          vocab_size=task.vocab_size)
    from rnnlab.train.datafiles import with_data_hashes

    config = {"model": cfg.to_dict(), "task": with_data_hashes({"name": task_name, "options": options}),
              "model_io": {"input_size": task.input_size, "output_size": task.output_size, "target": task.target,
                           "vocab_size": task.vocab_size}, "step": 0}
    return save_checkpoint(tmp_path / "ck", model, config)


def test_cli_inspect_char_model(tmp_path, capsys):
    from rnnlab.cli import main

    text = tmp_path / "t.txt"
    text.write_text('A "quoted (text)" line.\nAnother [one] here.\n' * 40)
    ck = _checkpoint(tmp_path, "charlm", {"path": str(text), "seq_len": 16}, "lstm")
    out = tmp_path / "out"
    # the checkpoint never decides which file is read: the user names the text again (hash checked)
    assert main(["inspect", str(ck), "--out", str(out), "--no-reference", "--length", "50", "--top", "7",
                 "--split", "train", "--data", str(text)]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"index.html", "units.json", "gates_l0.png", "states_l0.png", "gradflow_model.png"} <= files
    summary = json.loads((out / "units.json").read_text())
    assert len(summary["top_units"]) == 7 and "inside quotes" in summary["features"]
    page = (out / "index.html").read_text()
    data = json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0].replace("<\\/", "</"))
    assert data["mode"] == "text" and [len(s) for s in data["text"]] == [50, 50]
    assert "wrote" in capsys.readouterr().out


def test_cli_inspect_sequence_model(tmp_path):
    from rnnlab.cli import main

    ck = _checkpoint(tmp_path, "adding", {"lag": 12, "n_train": 8, "n_val": 8, "n_test": 8}, "gru")
    out = tmp_path / "out"
    assert main(["inspect", str(ck), "--out", str(out), "--no-reference", "--sequences", "3"]) == 0
    summary = json.loads((out / "units.json").read_text())
    assert "time step" in summary["features"] and summary["gates"] == ["r", "z", "n", "h"]
    assert len(summary["gradient_flow"]["model"]["0,0"]) >= 12


def test_cli_inspect_user_errors(tmp_path, capsys):
    from rnnlab.cli import main

    assert main(["inspect", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnlab inspect: error: CHECKPOINT") and "\n" not in err
    (tmp_path / "file").write_text("x")
    assert main(["inspect", str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path), "--out", str(tmp_path / "o"), "--length", "0"]) == 2
    assert "--length: expected a positive integer, got 0" in capsys.readouterr().err
