"""The fused C++ backend "cpp" (the generic driver) against the reference backend, float64 gradcheck, fallback,
refusals, the build cache."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnlab import Recurrent
from rnnlab.backends import LayerCall, select_backend
from rnnlab.backends.cpp import CppBackend, load_generic
from rnnlab.backends.cpp import generic_loader as loader
from rnnlab.backends.reference import ReferenceBackend

ATOL = RTOL = 1e-5
I, H, B, T = 4, 6, 3, 7
LENGTHS = [7, 2, 5]  # unsorted, one full-length sequence

# (cell name, options) for every rule of the driver and the LSTM's options (the projection included)
CASES = {
    "lstm": ("lstm", {}),
    "lstm_proj": ("lstm", {"proj_size": 3}),
    "peephole": ("peephole", {}),
    "cifg": ("cifg", {}),
    "greff_nig": ("greff_nig", {}),
    "greff_nfg": ("greff_nfg", {}),
    "greff_nog": ("greff_nog", {}),
    "greff_niaf": ("greff_niaf", {}),
    "greff_noaf": ("greff_noaf", {}),
    "lstm_peep_f_proj": ("lstm", {"peepholes": "f", "proj_size": 2}),
    "gru": ("gru", {}),
    "gru_before": ("gru", {"reset_after": False}),
    "rnn_tanh": ("rnn", {}),
    "rnn_relu": ("rnn", {"nonlinearity": "relu"}),
    "mut1": ("mut1", {}),  # layer 1 of the plain layout has I == H: the paper's raw-x term
    "mut2": ("mut2", {}),
    "mut3": ("mut3", {}),
    "mut2_nobias": ("mut2", {"bias": False}),
    "ln_gru": ("ln_gru", {}),
    "ln_gru_nobias": ("ln_gru", {"bias": False}),
    "ln_lstm": ("ln_lstm", {"forget_bias": 1.0}),
    "ln_lstm_nobias": ("ln_lstm", {"bias": False, "eps": 1e-3}),
    "clockwork": ("clockwork", {"periods": (1, 2, 4)}),
    "clockwork_default": ("clockwork", {}),
    "depth_gated": ("depth_gated", {}),  # two layers: the upper one reads the lower one's c
    "depth_gated_3layers_nopeep": ("depth_gated", {"num_layers": 3, "peepholes": False}),
    "depth_gated_1layer": ("depth_gated", {"num_layers": 1}),
    "depth_gated_nopeep": ("depth_gated", {"num_layers": 1, "peepholes": False, "forget_bias": 1.0}),
    "mingru": ("mingru", {}),
    "minlstm": ("minlstm", {"scan": "sequential"}),
}

needs_kernels = pytest.mark.skipif(load_generic() is None, reason="the C++ driver could not be built here")


def _run(mod: Recurrent, backend: str, x, hx, lengths=None, packed=False, batch_first=False):
    """Outputs, final states and every gradient (input, initial state, parameters) of a fixed random loss."""
    mod.backend = backend
    mod.zero_grad()
    x = x.clone().requires_grad_()
    hx = tuple(h.clone().requires_grad_() for h in hx)
    inp = x
    if packed:
        inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        out, hn = mod(inp, hx if len(hx) > 1 else hx[0])
        out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first)[0]
    else:
        lens = None if lengths is None else torch.tensor(lengths)
        out, hn = mod(inp, hx if len(hx) > 1 else hx[0], lengths=lens)
    hn = hn if isinstance(hn, tuple) else (hn,)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    loss = (out * w).sum() + sum((s * (k + 2)).sum() for k, s in enumerate(hn))
    loss.backward()
    grads = [x.grad] + [h.grad for h in hx] + [p.grad for p in mod.parameters()]
    return [out, *hn], grads


@needs_kernels
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", ["plain", "bidir_lengths", "packed_batch_first"])
def test_kernel_equals_reference(case: str, layout: str) -> None:
    cell, opts = CASES[case]
    torch.manual_seed(0)
    batch_first = layout == "packed_batch_first"
    opts = {"num_layers": 2, **opts}
    mod = Recurrent(cell, I, H, bidirectional=layout != "plain", batch_first=batch_first, **opts)
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    hx = tuple(torch.randn(s) for s in mod.state_shapes(B))
    lengths = None if layout == "plain" else LENGTHS
    packed = layout == "packed_batch_first"
    # the call really goes to the driver
    call = LayerCall(cell=mod.cell, params=mod.layer_params(0, 0), x=torch.randn(T, B, I),
                     state=tuple(s[0] for s in hx))
    assert select_backend(call).name == "cpp"
    ref_out, ref_grads = _run(mod, "reference", x, hx, lengths, packed, batch_first)
    out, grads = _run(mod, "cpp", x, hx, lengths, packed, batch_first)
    # float32 layer norm over a few units amplifies rounding (float64 agrees to 1e-14, see the gradchecks)
    tol = 1e-4 if cell.startswith("ln_") else ATOL
    for a, b in zip(out + grads, ref_out + ref_grads):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@needs_kernels
def test_kernel_unbatched_and_default_state() -> None:
    torch.manual_seed(0)
    mod = Recurrent("lstm", I, H, proj_size=2)
    x = torch.randn(T, I)
    mod.backend = "reference"
    ref = mod(x)
    mod.backend = "cpp"
    got = mod(x)
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])


@needs_kernels
@pytest.mark.parametrize("case", ["lstm_proj", "peephole", "cifg", "greff_noaf", "greff_niaf", "greff_nog",
                                  "lstm_peep_f_proj"])
def test_gradcheck_float64(case: str) -> None:
    """The LSTM options' BPTT on the driver (the projection included) against finite differences: the whole
    layer with lengths, every input, initial state and parameter."""
    cell, opts = CASES[case]
    torch.manual_seed(0)
    mod = Recurrent(cell, 3, 4, backend="cpp", dtype=torch.float64, **opts)
    names = [n for n, _ in mod.named_parameters()]
    lens = torch.tensor([4, 2, 3])
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(s, dtype=torch.float64, requires_grad=True) for s in mod.state_shapes(3))
    leaves = tuple(p.detach().clone().requires_grad_() for p in mod.parameters())

    def f(x, h, c, *ps):
        out, (hn, cn) = torch.func.functional_call(mod, dict(zip(names, ps)), (x, (h, c)), {"lengths": lens})
        return out, hn, cn

    assert torch.autograd.gradcheck(f, (x, *hx, *leaves), eps=1e-6, atol=1e-6)


def test_fallback_when_build_fails(monkeypatch, caplog) -> None:
    """A failed build warns once on the 'rnnlab.backends' logger and every call runs on the reference."""
    saved = dict(loader._state)

    def broken():
        raise RuntimeError("simulated: no C++ compiler")

    monkeypatch.setattr(loader, "_compile", broken)
    loader.reset()
    try:
        torch.manual_seed(0)
        mod = Recurrent("lstm", I, H, proj_size=3)
        x = torch.randn(T, B, I)
        with caplog.at_level(logging.WARNING, logger="rnnlab.backends"):
            out = mod(x)[0]
            mod(x)
        warnings = [r for r in caplog.records if r.name == "rnnlab.backends" and "C++ driver" in r.getMessage()]
        assert len(warnings) == 1 and "simulated" in warnings[0].getMessage()
        call = LayerCall(cell=mod.cell, params=mod.layer_params(0, 0), x=x,
                         state=mod.cell.init_state(B, dtype=x.dtype, device=x.device))
        assert select_backend(call).name == "reference"
        mod.backend = "reference"
        torch.testing.assert_close(out, mod(x)[0], atol=0, rtol=0)
    finally:
        loader._state.clear()
        loader._state.update(saved)


def test_env_switch_disables(monkeypatch) -> None:
    monkeypatch.setenv("RNNLAB_BACKEND", "reference")
    mod = Recurrent("gru", I, H)
    call = LayerCall(cell=mod.cell, params=mod.layer_params(0, 0), x=torch.randn(T, B, I),
                     state=mod.cell.init_state(B, dtype=torch.float32, device=torch.device("cpu")))
    assert not CppBackend().supports(call)


@needs_kernels
@pytest.mark.parametrize("change", ["log_scan", "int"])
def test_supports_refuses_what_it_does_not_implement(change: str) -> None:
    mod = Recurrent("mingru", I, H, scan="log") if change == "log_scan" else Recurrent("lstm", I, H)
    x = torch.randn(T, B, I)
    state = mod.cell.init_state(B, dtype=x.dtype, device=x.device)
    base = dict(cell=mod.cell, params=mod.layer_params(0, 0), x=x, state=state)
    assert change == "log_scan" or CppBackend().supports(LayerCall(**base))
    if change == "int":
        base["x"] = x.long()
    call = LayerCall(**base)
    assert not CppBackend().supports(call)
    if change == "log_scan":
        assert select_backend(call).name == "reference"


@needs_kernels
@pytest.mark.parametrize("cell,kw", [("lstm", {}), ("lstm", {"proj_size": 2}), ("gru", {}), ("clockwork", {}),
                                     ("greff_fgr", {})])
def test_every_step_state_from_the_driver_equals_the_reference(cell: str, kw: dict) -> None:
    """want_states (what a layer above reads): every step's state in input order, reversed within lengths,
    and the gradient of a loss on them (the driver's per-row state gradients) equal the reference's."""
    torch.manual_seed(0)
    mod = Recurrent(cell, I, H, dtype=torch.float64, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = tuple(0.5 * torch.randn(B, s, dtype=torch.float64) for s in mod.cell.state_sizes())
    got = {}
    for backend in (CppBackend(), ReferenceBackend()):
        xi = x.clone().requires_grad_()
        params = {k: v.detach().clone().requires_grad_() for k, v in mod.layer_params(0, 0).items()}
        call = LayerCall(cell=mod.cell, params=params, x=xi, state=state, lengths=torch.tensor(LENGTHS), reverse=True,
                         want_states=True)
        assert backend.supports(call)
        res = backend.run(call)
        g = torch.Generator().manual_seed(1)
        loss = sum((s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
                   for name, s in zip(mod.state_names, res.states) if name != "n")
        got[backend.name] = (res.states, torch.autograd.grad(loss, [xi, *params.values()]))
    (states, grads), (ref_states, ref_grads) = got["cpp"], got["reference"]
    for a, b in zip(states + grads, ref_states + ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@needs_kernels
@pytest.mark.parametrize("change", ["rec_mask", "zoneout"])
def test_options_run_on_the_driver(change: str) -> None:
    """Recurrent dropout and zoneout are the generic driver's own options (test_generic_options.py checks them
    against the reference)."""
    mod = Recurrent("lstm", I, H)
    x = torch.randn(T, B, I)
    base = dict(cell=mod.cell, params=mod.layer_params(0, 0), x=x,
                state=mod.cell.init_state(B, dtype=x.dtype, device=x.device))
    if change == "rec_mask":
        base["rec_mask"] = torch.ones(B, H)
    else:
        base["zoneout"] = 0.1
    assert CppBackend().supports(LayerCall(**base))


@needs_kernels
def test_recording_and_dropout_run_through_the_wrapper() -> None:
    """The wrapper with recurrent dropout, zoneout and recording (the driver's own options)."""
    torch.manual_seed(0)
    mod = Recurrent("lstm", I, H, recurrent_dropout=0.3, zoneout=0.1)
    mod.train()
    out, _ = mod(torch.randn(T, B, I))
    assert out.shape == (T, B, H)
    mod.eval()
    with mod.recording() as rec:
        mod(torch.randn(T, B, I))
    assert "i" in rec.gates[(0, 0)]


def test_cache_dir_respects_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path))
    d = loader.cache_dir()
    assert d.parent == tmp_path and d.name.startswith("generic-") and len(d.name) == len("generic-") + 16


@needs_kernels
@pytest.mark.parametrize("cell,Hl,Bl", [(c, 256, 64) for c in ("lstm", "gru", "gru_paper", "rnn", "mut1", "mut2", "mut3",
                                                                 "ln_gru", "ln_lstm", "clockwork", "lstm_proj", "slstm",
                                                                 "slstm_2heads")]
                         + [("lstm", 512, 16), ("lstm_proj", 512, 16)])
@pytest.mark.parametrize("gemm", ["onednn", "aten"])
def test_large_products_take_the_library_paths(cell: str, Hl: int, Bl: int, gemm: str) -> None:
    """Per-step products of >= 4M multiply-adds run on oneDNN (forward; backward too when the weight has >= 128 K
    entries: H >= 181 for an LSTM) or ATen, not the inline loops: same results as the reference."""
    ext = load_generic()
    ext.set_gemm_backend(gemm)
    try:
        assert ext.gemm_backend() in (gemm, "aten")
        torch.manual_seed(0)
        # the projection's own per-step product (B, H) x (H, P) is large too
        if cell == "lstm_proj":
            mod = Recurrent("lstm", Hl, Hl, proj_size=Hl // 2)
        elif cell == "slstm_2heads":  # per-head products of >= 4M multiply-adds (oneDNN); 4 heads: ATen mm
            mod = Recurrent("slstm", Hl, Hl, num_heads=2)
        else:
            mod = Recurrent(cell, Hl, Hl)
        x = torch.randn(3, Bl, Hl)
        hx = tuple(torch.randn(s) for s in mod.state_shapes(Bl))
        if cell.startswith("slstm"):  # exponential gates: unit-scale inputs at I = 256 give e^(±40) in float32
            x, hx = x * 0.05, tuple(h.abs() * 0.05 + (1.0 if k == 2 else 0.0) for k, h in enumerate(hx))
        lengths = [3, 1, 2] * (Bl // 3) + [3] * (Bl % 3)
        ref_out, ref_grads = _run(mod, "reference", x, hx, lengths)
        out, grads = _run(mod, "cpp", x, hx, lengths)
        for a, b in zip(out + grads, ref_out + ref_grads):
            torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    finally:
        ext.set_gemm_backend("onednn")


@needs_kernels
def test_onednn_backward_threshold_is_settable_and_checked() -> None:
    """The benchmark knob for the backward product's library: every threshold gives the reference's numbers."""
    ext = load_generic()
    with pytest.raises(RuntimeError, match="entries >= 0, got -1"):
        ext.set_onednn_nn_min_weight(-1)
    torch.manual_seed(0)
    mod = Recurrent("gru", 128, 128)
    x = torch.randn(3, 96, 128)
    hx = tuple(torch.randn(s) for s in mod.state_shapes(96))
    ref_out, ref_grads = _run(mod, "reference", x, hx, None)
    try:
        for entries in (0, 1 << 40):  # every backward product on oneDNN, none
            ext.set_onednn_nn_min_weight(entries)
            out, grads = _run(mod, "cpp", x, hx, None)
            for a, b in zip(out + grads, ref_out + ref_grads):
                torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    finally:
        ext.set_onednn_nn_min_weight(128 * 1024)


@needs_kernels
def test_log_scan_refused() -> None:
    """Only the element-wise scan is fused (its gradcheck is the driver's: test_generic_ops.py)."""
    mod = Recurrent("mingru", I, H, scan="log")
    call = LayerCall(cell=mod.cell, params=mod.layer_params(0, 0), x=torch.randn(T, B, I),
                     state=mod.cell.init_state(B, dtype=torch.float32, device=torch.device("cpu")))
    assert not CppBackend().supports(call)


@needs_kernels
@pytest.mark.parametrize("cell", ["clockwork", "minlstm", "mingru"])
def test_gradcheck_float64_through_the_wrapper(cell: str) -> None:
    """Cells whose kernel inputs are formed in Python (masks, scan coefficients): gradcheck the whole layer."""
    torch.manual_seed(0)
    mod = Recurrent(cell, 3, 4, backend="cpp", dtype=torch.float64)
    lens = torch.tensor([4, 2, 3])
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(s, dtype=torch.float64, requires_grad=True) for s in mod.state_shapes(3))

    def f(x, *hx):
        out, hn = mod(x, hx if len(hx) > 1 else hx[0], lengths=lens)
        return (out, *(hn if isinstance(hn, tuple) else (hn,)))

    assert torch.autograd.gradcheck(f, (x, *hx), eps=1e-6, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clockwork_counters_on_both_sides_of_the_vector_test_range(dtype) -> None:
    """Which modules update: the vectorised multiple test (|round(n)| < 2^22 in float32, 2^51 in float64) and the
    fmod test beyond it agree with the reference, negative and half-way counters included."""
    torch.manual_seed(0)
    mod = Recurrent("clockwork", 3, 12, periods=(1, 2, 3, 5, 7, 64), dtype=dtype)
    edge = 2.0 ** (22 if dtype == torch.float32 else 51)
    starts = [0.0, 2.5, -9.0, edge - 4, -edge + 2, edge + 8]  # two rows cross the edge within the 8 steps
    n0 = torch.tensor(starts, dtype=dtype).unsqueeze(-1)  # (B, 1)
    x = torch.randn(8, len(starts), 3, dtype=dtype)
    hx = (torch.randn(len(starts), 12, dtype=dtype).unsqueeze(0), n0.unsqueeze(0))
    ref_out, ref_grads = _run(mod, "reference", x, hx, None)
    out, grads = _run(mod, "cpp", x, hx, None)
    for a, b in zip(out + grads, ref_out + ref_grads):
        torch.testing.assert_close(a, b)


def test_build_key_covers_torch_install_and_compiler(monkeypatch) -> None:
    """Two environments with the same torch version (or another compiler) must not share one build."""
    base = loader.build_key()
    monkeypatch.setattr(torch, "__file__", "/elsewhere/venv/lib/python3/site-packages/torch/__init__.py")
    other_torch = loader.build_key()
    monkeypatch.undo()
    monkeypatch.setenv("CXX", "rnnlab-no-such-compiler++")
    other_cxx = loader.build_key()
    assert len({base, other_torch, other_cxx}) == 3
    assert "unavailable" in loader.compiler_id()


def test_build_lock_serialises_builders(monkeypatch, tmp_path) -> None:
    """The build lock is exclusive across open files (as between processes): a second builder waits."""
    import threading
    import time

    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path))
    events: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with loader._build_lock("k"):
            events.append("first in")
            first_in.set()
            time.sleep(0.3)
            events.append("first out")

    def second() -> None:
        first_in.wait()
        with loader._build_lock("k"):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert events == ["first in", "first out", "second in"]
    assert (tmp_path / "k.lock").exists()


def test_a_killed_builds_baton_does_not_block_the_next_build(monkeypatch, tmp_path) -> None:
    """torch's build baton (``<build>/lock``) left by a build killed mid-way made every later load wait forever."""
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path))
    build = tmp_path / f"generic-{loader.build_key()}"
    build.mkdir(parents=True)
    (build / "lock").touch()  # what the killed build left
    seen: list[bool] = []

    def fake_load(**kw):  # torch's load would wait on the baton; record whether it is still there
        seen.append((tmp_path / kw["build_directory"] / "lock").exists())
        return "module"

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    assert loader._compile() == "module"
    assert seen == [False]


@pytest.mark.slow
def test_two_processes_build_concurrently(tmp_path) -> None:
    """Two processes building into a fresh cache at once both get a working driver (one builds, one waits)."""
    import os
    import subprocess
    import sys

    script = ("import torch, rnnlab\n"
              "from rnnlab.backends.cpp import load_generic\n"
              "assert load_generic() is not None\n"
              "m = rnnlab.Recurrent('gru', 3, 4, backend='cpp')\n"
              "print(tuple(m(torch.randn(5, 2, 3))[0].shape))\n")
    env = {**os.environ, "RNNLAB_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == "(5, 2, 4)"
    assert len(list(tmp_path.glob("generic-*/*.so"))) == 1
