"""`rnnlab bench --onnx`: ONNX Runtime (fp32 and int8) vs PyTorch eager inference, streaming and batched."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rnnlab.recurrent import Recurrent

#: LSTM and one variant no torch.nn module can export (coupled gates), both single native ONNX nodes
DEFAULT_CELLS = ("lstm", "cifg")


def _median_time(fn: Callable[[], Any], repeats: int, inner: int) -> float:
    """Median over ``repeats`` of the mean seconds per call over ``inner`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def _sessions(rnn: Recurrent, workdir: Path, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    from rnnlab.export.files import quantize_int8
    from rnnlab.export.model import recurrent_to_onnx, save_onnx

    fp32 = workdir / "fp32.onnx"
    int8 = workdir / "int8.onnx"
    proto, _ = recurrent_to_onnx(rnn)
    save_onnx(proto, fp32)
    quantize_int8(fp32, int8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            for k, p in (("onnx_fp32", fp32), ("onnx_int8", int8))}


def bench_cell(cell: str, *, input_size: int, hidden_size: int, batch: int, steps: int, stream_steps: int,
               repeats: int, threads: int) -> dict[str, Any]:
    """Timings of one cell: streaming (B=1, one step per call, state carried) and one (T, B) batch."""
    torch.manual_seed(0)
    rnn = Recurrent(cell, input_size, hidden_size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        sessions = _sessions(rnn, Path(tmp), threads)
        names = rnn.state_names
        row: dict[str, Any] = {"cell": cell}

        # streaming: one step per call, B=1
        x1 = torch.randn(1, 1, input_size)
        h1 = tuple(torch.zeros(s) for s in rnn.state_shapes(1))
        with torch.no_grad():
            row["stream_us_torch"] = 1e6 * _median_time(
                lambda: rnn(x1, h1 if len(h1) > 1 else h1[0]), repeats, stream_steps)
        feeds1 = {"input": x1.numpy(), "lengths": np.ones(1, np.int64)}
        feeds1.update({f"{n}_0": h.numpy() for n, h in zip(names, h1)})
        for k, sess in sessions.items():
            row[f"stream_us_{k}"] = 1e6 * _median_time(lambda: sess.run(None, feeds1), repeats, stream_steps)

        # batched: one (T, B) sequence batch per call
        x = torch.randn(steps, batch, input_size)
        hb = tuple(torch.zeros(s) for s in rnn.state_shapes(batch))
        with torch.no_grad():
            row["batch_ms_torch"] = 1e3 * _median_time(
                lambda: rnn(x, hb if len(hb) > 1 else hb[0]), repeats, 3)
            ref = rnn(x, hb if len(hb) > 1 else hb[0])[0].numpy()
        feeds = {"input": x.numpy(), "lengths": np.full(batch, steps, np.int64)}
        feeds.update({f"{n}_0": h.numpy() for n, h in zip(names, hb)})
        for k, sess in sessions.items():
            row[f"batch_ms_{k}"] = 1e3 * _median_time(lambda: sess.run(None, feeds), repeats, 3)
            row[f"max_abs_err_{k}"] = float(np.abs(sess.run(None, feeds)[0] - ref).max())
    return row


def run_onnx_bench(cells: list[str], *, quick: bool, repeats: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    shape = {"input_size": 128, "hidden_size": 256, "batch": 32, "steps": 100,
             "stream_steps": 50 if quick else 300}
    rows = [bench_cell(c, repeats=repeats, threads=threads, **shape) for c in cells]
    return {"shape": shape, "threads": threads, "torch": torch.__version__, "rows": rows}


def format_table(report: dict[str, Any]) -> str:
    s = report["shape"]
    batch = f"batch B={s['batch']} T={s['steps']} ms"
    lines = [f"ONNX Runtime vs PyTorch eager (rnnlab default backend), I={s['input_size']} H={s['hidden_size']}, "
             f"{report['threads']} thread(s); medians",
             f"{'cell':<8} {'stream B=1 µs/step':>28}   {batch:>28}   {'int8 max|err|':>13}",
             f"{'':<8} {'torch':>8} {'ort fp32':>9} {'ort int8':>9}   {'torch':>8} {'ort fp32':>9} {'ort int8':>9}"]
    for r in report["rows"]:
        lines.append(f"{r['cell']:<8} {r['stream_us_torch']:>8.1f} {r['stream_us_onnx_fp32']:>9.1f} "
                     f"{r['stream_us_onnx_int8']:>9.1f}   {r['batch_ms_torch']:>8.2f} {r['batch_ms_onnx_fp32']:>9.2f} "
                     f"{r['batch_ms_onnx_int8']:>9.2f}   {r['max_abs_err_onnx_int8']:>13.2e}")
    return "\n".join(lines)
