"""Benchmark of our recurrent layers against torch.nn.LSTM / torch.nn.GRU and the eager reference loop.

Everything is measured in one run and reported as ratios (time of ours / time of the other, so < 1 means
we are faster), because absolute times on a shared machine are noisy: the implementations are interleaved
repeat by repeat and medians are taken.  Also measured: the GEMM peak of this machine (fp32, the best of
``torch.mm`` and oneDNN's linear), the GFLOP/s our training step achieves as a fraction of that peak, and
the per-step overhead at B=1, H=32.  ``device="cuda"`` times the same on a GPU (each call closed by
``torch.cuda.synchronize``, peers nn.LSTM / nn.GRU / nn.RNN on that GPU, the GEMM peak measured there) and
records the GPU, its driver and the CUDA, cuDNN, torch and Triton versions with the report.

Example:
    >>> from rnnlab.bench import run_bench
    >>> report = run_bench(cells=["gru"], shapes=[(5, 2, 8)], repeats=1, overhead_steps=10)  # doctest: +SKIP
    >>> sorted(report)  # doctest: +SKIP
    ['gemm_peak_gflops', 'overhead', 'rows', 'settings', 'summary']
"""

from __future__ import annotations

import contextlib

import platform
import statistics
import time
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from rnnlab.recurrent import Recurrent

#: (T, B, H) grid: T 50-1000, B 1-128, H 64-1024
FULL_SHAPES: list[tuple[int, int, int]] = [
    (50, 1, 64), (1000, 1, 64), (100, 16, 128), (100, 64, 256), (50, 128, 256), (200, 16, 256),
    (100, 32, 512), (50, 64, 1024),
]
QUICK_SHAPES: list[tuple[int, int, int]] = [(50, 1, 64), (30, 32, 256)]
DEFAULT_CELLS = ["lstm", "gru", "rnn"]
#: issue targets: plain LSTM training <= 1.0x nn.LSTM; every other cell <= 1.25x nn.LSTM and >= 10x its eager loop
TARGET_VS_LSTM = {"lstm": 1.0}
TARGET_VS_LSTM_OTHER = 1.25
TARGET_SPEEDUP_VS_EAGER = 10.0


def all_cells() -> list[str]:
    """Every registered cell name (aliases included: ``rnn`` and ``rnn_tanh`` are both measured)."""
    from rnnlab.cells import cell_names

    return list(cell_names())


def _median_times(fns: dict[str, Callable[[], object]], repeats: int, best: bool = False) -> dict[str, float]:
    """Seconds per call of each function: one warm-up each, then ``repeats`` interleaved rounds, medians
    (``best=True``: minima, for a peak that other work on a shared machine should not pull down)."""
    for f in fns.values():
        f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - t0)
    return {k: (min(v) if best else statistics.median(v)) for k, v in samples.items()}


def _synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` timed to the end of its GPU work: CUDA calls return before their kernels finish."""
    if device == "cpu":
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize()
    return call


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version (``nvidia-smi``), or None where it cannot be asked."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def device_metadata(device: str) -> dict[str, object]:
    """What makes a figure traceable: the device, and on CUDA the GPU, its driver, the CUDA runtime, cuDNN,
    torch and Triton versions."""
    meta: dict[str, object] = {"type": device, "torch": torch.__version__}
    if device != "cuda":
        return meta
    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    major, minor = torch.cuda.get_device_capability()
    meta.update({"gpu": torch.cuda.get_device_name(), "capability": f"{major}.{minor}",
                 "driver": _nvidia_driver(), "cuda_runtime": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version(), "triton": triton_version,
                 "tf32_matmul": torch.backends.cuda.matmul.allow_tf32})
    return meta


def gemm_flops(params: dict[str, torch.Tensor], T: int, B: int) -> float:
    """Forward FLOPs of one layer's GEMMs over (T, B): every matrix weight is one multiply-add per entry, row and
    step (input, recurrent, projection, FGR's gate-to-gate ``weight_gg``; minGRU/minLSTM have no ``weight_hh``).
    Diagonal weights (peepholes, IndRNN's ``weight_hh``) are element-wise work and not counted."""
    return 2.0 * T * B * sum(v.numel() for k, v in params.items() if k.startswith("weight_") and v.dim() == 2)


def gemm_peak(repeats: int = 5, n: int = 1024, device: str = "cpu") -> float:
    """Best fp32 GEMM GFLOP/s reachable from PyTorch here: max of torch.mm and oneDNN linear, (n x n x n),
    fastest repeat (a median would drop on a busy machine and inflate every %peak); on CUDA torch.mm
    (cuBLAS), synchronised, at n = 4096 so that the GPU is busy."""
    if device != "cpu":
        n = max(n, 4096)
        a, w = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        times = _median_times({"mm": _synced(lambda: torch.mm(a, w), device)}, repeats, best=True)
        return 2.0 * n ** 3 / times["mm"] / 1e9
    a, w = torch.randn(n, n), torch.randn(n, n)
    fns: dict[str, Callable[[], object]] = {"mm": lambda: torch.mm(a, w)}
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, n)
        fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
        fns["onednn"]()
    except Exception:  # oneDNN ops absent in this torch build
        fns.pop("onednn", None)
    for f in fns.values():
        f()  # warm-up: thread pool start, oneDNN kernel generation
    times = _median_times(fns, repeats, best=True)
    return 2.0 * n ** 3 / min(times.values()) / 1e9


def parse_cell_spec(spec: str) -> tuple[str, dict[str, object], bool]:
    """A cell with options: ``"lstm"``, ``"lstm:recurrent_dropout=0.25,zoneout=0.1"``, ``"gru:weight_drop=0.5"``
    or ``"lstm:record"`` (gate recording on) -> (cell name, Recurrent options, record).

    Example:
        >>> parse_cell_spec("lstm:zoneout=0.1,record")
        ('lstm', {'zoneout': 0.1}, True)
    """
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    record = False
    for item in filter(None, (part.strip() for part in rest.split(","))):
        if item == "record":
            record = True
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"cells: expected KEY=VALUE or 'record' after ':', got {item!r} in {spec!r}")
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return name, options, record


#: ``autocast=bf16`` / ``autocast=fp16`` in a cell spec: every module of that row (ours and the peers) runs
#: under ``torch.autocast`` with this dtype, so the row against the plain one gives the mixed-precision ratio
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _is_recording(mod: nn.Module) -> bool:
    return bool(getattr(mod, "bench_record", False))


def _autocast(mod: nn.Module, x: torch.Tensor):
    dtype = getattr(mod, "bench_autocast", None)
    return torch.autocast(x.device.type, dtype) if dtype is not None else contextlib.nullcontext()


def _train_fn(mod: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def step() -> None:
        with _autocast(mod, x):
            if _is_recording(mod):
                with mod.recording():  # type: ignore[operator]
                    out = mod(x)[0]
            else:
                out = mod(x)[0]
        out.float().sum().backward()
    return step


def _infer_fn(mod: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def fwd() -> None:
        with torch.no_grad(), _autocast(mod, x):
            if _is_recording(mod):
                with mod.recording():  # type: ignore[operator]
                    mod(x)
            else:
                mod(x)
    return fwd


def _ours(spec: str, H: int, backend: str, device: str = "cpu") -> nn.Module:
    """rnnlab's module for a cell spec; ``backend`` "auto" yields to the spec's own ``backend=`` (a peer built
    with "reference" keeps it)."""
    name, options, record = parse_cell_spec(spec)
    chosen = options.pop("backend", None)
    if chosen is not None and backend == "auto":
        backend = str(chosen)
    autocast = options.pop("autocast", None)
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"cells: autocast must be one of {sorted(AUTOCAST_DTYPES)}, got {autocast!r} in {spec!r}")
    mod = Recurrent(name, H, H, backend=backend, device=device, **options)  # type: ignore[arg-type]
    mod.bench_record = record  # type: ignore[attr-defined]  # the timed calls run inside mod.recording()
    mod.bench_autocast = AUTOCAST_DTYPES.get(autocast)  # type: ignore[attr-defined,arg-type]
    return mod


def backend_used(mod: Recurrent, x: torch.Tensor) -> str:
    """Name of the backend that ``backend="auto"`` picks for layer 0 of ``mod`` on input ``x`` (T, B, I), with
    the module's options (recurrent dropout, zoneout, weight drop, recording) as its training calls have them.
    On CUDA a plain LSTM/GRU/RNN stack runs torch.nn's own op instead of any backend: ``"cudnn"``; so does it
    under CPU autocast (an autocast row): ``"aten"``.  The C++ driver under bf16 CPU autocast with its products
    in bf16 (generic_ops.py): ``"cpp:bf16"``."""
    from rnnlab.backends import LayerCall, aten_stack, select_backend

    if not _is_recording(mod) and not mod.check_finite and aten_stack.aten_mode(mod) is not None:
        if x.is_cuda:
            return "cudnn" if torch.backends.cudnn.is_acceptable(x) else "aten"
        with _autocast(mod, x):  # the row's own autocast, if any: under bf16 CPU autocast the route applies
            if aten_stack.route_applies(x):
                return "aten"
    B = x.shape[1]
    rec_mask = torch.ones(B, mod.cell.output_size, device=x.device) if mod.recurrent_dropout and mod.training \
        else None
    call = LayerCall(cell=mod.cell, params=mod.layer_params(0, 0), x=x,
                     state=mod.cell.init_state(B, dtype=x.dtype, device=x.device), rec_mask=rec_mask,
                     zoneout=mod.zoneout, training=mod.training, record=_is_recording(mod))
    name = select_backend(call).name
    if name == "cpp" and getattr(mod, "bench_autocast", None) == torch.bfloat16 and x.device.type == "cpu":
        from rnnlab.backends.cpp import generic_ops

        with torch.no_grad(), _autocast(mod, x):  # what the op's autocast rule asks for (generic_ops.py)
            xp, w, _, _, opt = mod.cell.driver_inputs(x, call.params)
            if generic_ops.autocast_inputs(opt, xp, w, [])[0] & generic_ops.BF16_PRODUCTS_BIT:
                return "cpp:bf16"  # the driver's products in bf16
    return name


def bench_shape(cell: str, T: int, B: int, H: int, repeats: int, device: str = "cpu") -> list[dict[str, object]]:
    """Train and inference rows for one cell and shape (input size = H); on CUDA also against nn.RNN."""
    torch.manual_seed(0)
    x = torch.randn(T, B, H, device=device)
    mods = {"ours": _ours(cell, H, "auto", device), "eager": _ours(cell, H, "reference", device),
            "nn.LSTM": nn.LSTM(H, H, device=device), "nn.GRU": nn.GRU(H, H, device=device)}
    if device != "cpu":
        mods["nn.RNN"] = nn.RNN(H, H, device=device)
    for m in mods.values():  # an autocast row runs the peers under the same autocast
        m.bench_autocast = mods["ours"].bench_autocast  # type: ignore[attr-defined]
    base = cell.partition(":")[0]
    if base != cell:  # an option variant: the same cell without options (fp32) is timed in the same interleaving
        mods["plain"] = _ours(base, H, "auto", device)
    backend = backend_used(mods["ours"], x)  # type: ignore[arg-type]
    flops_fwd = gemm_flops(mods["ours"].layer_params(0, 0), T, B)  # type: ignore[operator]
    rows = []
    for mode, make, flops in (("train", _train_fn, 3.0 * flops_fwd), ("infer", _infer_fn, flops_fwd)):
        t = _median_times({k: _synced(make(m, x), device) for k, m in mods.items()}, repeats)
        gflops = flops / t["ours"] / 1e9
        rows.append({
            "cell": cell, "backend": backend, "T": T, "B": B, "H": H, "mode": mode,
            "ours_ms": 1e3 * t["ours"], "eager_ms": 1e3 * t["eager"],
            "lstm_ms": 1e3 * t["nn.LSTM"], "gru_ms": 1e3 * t["nn.GRU"],
            "vs_lstm": t["ours"] / t["nn.LSTM"], "vs_gru": t["ours"] / t["nn.GRU"],
            "speedup_vs_eager": t["eager"] / t["ours"],
            "gflops": gflops, "peak_fraction": None,  # set by run_bench once the peak is known
        })
        if "nn.RNN" in t:
            rows[-1].update({"rnn_ms": 1e3 * t["nn.RNN"], "vs_rnn": t["ours"] / t["nn.RNN"]})
        if "plain" in t:
            rows[-1].update({"plain_ms": 1e3 * t["plain"], "vs_plain": t["ours"] / t["plain"]})
    return rows


def per_step_overhead(cell: str, steps: int, repeats: int, H: int = 32, device: str = "cpu") -> dict[str, float]:
    """Microseconds per time step of an inference forward at B=1 (ours, eager loop, nn.LSTM)."""
    x = torch.randn(steps, 1, H, device=device)
    mods = {"ours": _ours(cell, H, "auto", device), "eager": _ours(cell, H, "reference", device),
            "nn.LSTM": nn.LSTM(H, H, device=device)}
    t = _median_times({k: _synced(_infer_fn(m, x), device) for k, m in mods.items()}, repeats)
    return {f"{k}_us": 1e6 * v / steps for k, v in t.items()}


def _median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


def summarize(rows: Sequence[dict[str, object]]) -> dict[str, dict[str, float]]:
    """Median ratios per cell and mode over the grid, plus the training peak fraction at H >= 256, B >= 16."""
    out: dict[str, dict[str, float]] = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        mine = [r for r in rows if r["cell"] == cell]
        s: dict[str, float] = {}
        for mode in ("train", "infer"):
            m = [r for r in mine if r["mode"] == mode]
            s[f"{mode}_vs_lstm"] = _median(r["vs_lstm"] for r in m)  # type: ignore[misc]
            s[f"{mode}_vs_gru"] = _median(r["vs_gru"] for r in m)  # type: ignore[misc]
            s[f"{mode}_speedup_vs_eager"] = _median(r["speedup_vs_eager"] for r in m)  # type: ignore[misc]
        big = [r["peak_fraction"] for r in mine if r["mode"] == "train" and r["H"] >= 256 and r["B"] >= 16]
        s["train_peak_fraction_big"] = _median(big)  # type: ignore[arg-type]
        target = TARGET_VS_LSTM.get(str(cell), TARGET_VS_LSTM_OTHER)
        s["target_train_vs_lstm"] = target
        # per row, not just the median: a target is met only if it holds at every shape of the grid
        train = [r for r in mine if r["mode"] == "train"]
        s["meets_vs_lstm"] = all(r["vs_lstm"] <= target for r in train)  # type: ignore[operator]
        s["meets_vs_eager"] = all(r["speedup_vs_eager"] >= TARGET_SPEEDUP_VS_EAGER  # type: ignore[operator]
                                  for r in train) if cell != "lstm" else True
        s["backend"] = ",".join(sorted({str(r["backend"]) for r in mine}))  # type: ignore[assignment]
        if any("vs_rnn" in r for r in train):  # (nn.RNN is a peer on CUDA only)
            s["train_vs_rnn"] = _median(r["vs_rnn"] for r in train if "vs_rnn" in r)  # type: ignore[misc]
        # an option variant against the same cell without the options, timed in the same interleaved repeats
        # (two rows measured minutes apart drifted by 10-20% against each other on the shared dev machine)
        if any("vs_plain" in r for r in train):
            s["train_vs_plain"] = _median(r["vs_plain"] for r in train if "vs_plain" in r)  # type: ignore[misc]
        out[str(cell)] = s
    return out


def run_bench(cells: Sequence[str] = tuple(DEFAULT_CELLS), shapes: Sequence[tuple[int, int, int]] = tuple(QUICK_SHAPES),
              repeats: int = 5, threads: int | None = None, overhead_steps: int = 500,
              progress: Callable[[str], None] | None = None, device: str = "cpu") -> dict[str, object]:
    """Run the whole benchmark on ``device`` ("cpu" or "cuda") and return the report (a JSON-serialisable
    dict; ``settings["device"]`` says what ran it)."""
    if threads is not None:
        torch.set_num_threads(threads)
    say = progress or (lambda s: None)
    say("measuring GEMM peak")
    peak_before = gemm_peak(repeats=max(7, repeats), device=device)
    rows: list[dict[str, object]] = []
    overhead: dict[str, dict[str, float]] = {}
    for cell in cells:
        for T, B, H in shapes:
            say(f"{cell} T={T} B={B} H={H}")
            rows.extend(bench_shape(cell, T, B, H, repeats, device))
        overhead[cell] = per_step_overhead(cell, overhead_steps, repeats, device=device)
    # the peak again at the end, keeping the best: one measurement taken during a burst of other work on a
    # shared machine came out at half the real peak and made fractions above 100%
    peak = max(peak_before, gemm_peak(repeats=max(7, repeats), device=device))
    for r in rows:
        r["peak_fraction"] = r["gflops"] / peak  # type: ignore[operator]
    if device == "cpu":
        from rnnlab.backends.cpp import load_generic

        ext = load_generic()
        gemm = ext.gemm_backend() if ext is not None else "none (driver not built)"
    else:
        gemm = "torch.mm (cuBLAS)"
    return {
        "settings": {"cells": list(cells), "shapes": [list(s) for s in shapes], "repeats": repeats,
                     "threads": torch.get_num_threads(), "torch": torch.__version__, "gemm": gemm,
                     "machine": platform.machine(), "processor": platform.processor(),
                     "device": device_metadata(device)},
        "gemm_peak_gflops": peak,
        "rows": rows,
        "overhead": overhead,
        "summary": summarize(rows),
    }


def format_table(report: dict[str, object]) -> str:
    """Human-readable table of a :func:`run_bench` report."""
    dev = report["settings"].get("device", {"type": "cpu"})  # type: ignore[union-attr]
    where = "this machine" if dev["type"] == "cpu" else f"{dev.get('gpu')}, driver {dev.get('driver')}, " \
        f"CUDA {dev.get('cuda_runtime')}, triton {dev.get('triton')}"
    lines = [f"GEMM peak (fp32, {where}): {report['gemm_peak_gflops']:.0f} GFLOP/s, "
             f"threads {report['settings']['threads']}, kernel GEMMs: "  # type: ignore[index]
             f"{report['settings'].get('gemm', '?')}",  # type: ignore[index, union-attr]
             "ratios are time(ours) / time(other): < 1 is faster; speedup = eager time / ours", ""]
    head = f"{'cell':<12}{'backend':<10}{'mode':<6}{'T':>5}{'B':>5}{'H':>6}{'ours ms':>10}{'/nn.LSTM':>10}{'/nn.GRU':>9}" \
           f"{'x eager':>9}{'GFLOP/s':>9}{'%peak':>7}"
    lines += [head, "-" * len(head)]
    for r in report["rows"]:  # type: ignore[union-attr]
        frac = r["peak_fraction"]
        lines.append(f"{r['cell']:<12}{r['backend']:<10}{r['mode']:<6}{r['T']:>5}{r['B']:>5}{r['H']:>6}{r['ours_ms']:>10.2f}"
                     f"{r['vs_lstm']:>10.2f}{r['vs_gru']:>9.2f}{r['speedup_vs_eager']:>9.1f}{r['gflops']:>9.1f}"
                     f"{(100 * frac if frac is not None else float('nan')):>7.0f}")
    lines += ["", "per-step overhead, inference, B=1, H=32 (µs/step):"]
    for cell, o in report["overhead"].items():  # type: ignore[union-attr]
        lines.append(f"  {cell:<12} ours {o['ours_us']:.1f}   eager {o['eager_us']:.1f}   "
                     f"nn.LSTM {o['nn.LSTM_us']:.1f}")
    lines += ["", "median over the grid (targets: train <= 1.0x nn.LSTM for lstm, <= 1.25x for every other cell "
              "and >= 10x its eager loop, at every shape):"]
    for cell, s in report["summary"].items():  # type: ignore[union-attr]
        misses = [m for m, ok in (("vs nn.LSTM", s["meets_vs_lstm"]), ("vs eager", s["meets_vs_eager"])) if not ok]
        met = "meets" if not misses else "MISSES " + " & ".join(misses)
        lines.append(f"  {cell:<12} [{s['backend']}] {met} | train {s['train_vs_lstm']:.2f}x nn.LSTM, {s['train_vs_gru']:.2f}x nn.GRU, "
                     f"{s['train_speedup_vs_eager']:.1f}x faster than eager | infer {s['infer_vs_lstm']:.2f}x "
                     f"nn.LSTM, {s['infer_speedup_vs_eager']:.1f}x eager | train %peak (H>=256,B>=16) "
                     f"{100 * s['train_peak_fraction_big']:.0f}%"
                     + (f" | train {s['train_vs_plain']:.2f}x the plain cell" if "train_vs_plain" in s else ""))
    return "\n".join(lines)
