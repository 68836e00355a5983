"""Threads under load: 1 vs 2 intra-op threads per recurrent call, on an idle machine and beside a CPU hog.

For each (T, B, H) and mode (``train``: forward + backward, ``infer``: forward under no_grad) it times
rnnlab cells (default backend) and torch.nn.LSTM / GRU as peers with ``torch.set_num_threads(1)`` and ``(2)``
(rnnlab's per-call thread rule switched off, ``RNNLAB_THREAD_RULE=off``), and, where
``rnnlab.backends.threads`` exists, rnnlab at 2 threads with the rule on.  Repeats are interleaved (thread
count and implementation alternate inside each repeat) and each sample is the mean of a block of calls, so
the stalls that a descheduled pool thread causes count; the report gives medians over repeats and the
2-thread / 1-thread ratio.  ``--load loaded`` starts ``python -c "while True: pass"`` pinned to CPU 0 for the
measurement (and stops it, by its pid, afterwards); ``--load half`` a process there that is busy half of every
20 ms.

Example:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/threads_under_load.py --load idle loaded --repeats 5 \
        --out docs/bench/threads_under_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
from torch import nn

import rnnlab

SHAPES: list[tuple[int, int, int]] = [(50, 1, 32), (100, 8, 64), (200, 16, 128), (100, 64, 256), (50, 128, 512)]
CELLS = ["lstm", "gru", "rnn", "peephole"]
PEERS = {"nn.LSTM": nn.LSTM, "nn.GRU": nn.GRU}
RULE_ENV = "RNNLAB_THREAD_RULE"
#: a timed block lasts about this long (seconds): small calls are repeated, large ones run once
BLOCK_S = 0.05


def _train(mod: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        mod(x)[0].sum().backward()
    return step


def _infer(mod: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def fwd() -> None:
        with torch.no_grad():
            mod(x)
    return fwd


def _block(f: Callable[[], None], n: int) -> float:
    """Mean seconds per call over ``n`` calls (after one untimed call when n > 1: first call after a thread
    switch refills caches)."""
    if n > 1:
        f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n


def _set_rule(on: bool) -> None:
    os.environ[RULE_ENV] = "on" if on else "off"


def measure_shape(T: int, B: int, H: int, mode: str, cells: list[str], repeats: int,
                  threads: tuple[int, int]) -> list[dict[str, object]]:
    """Rows (impl, t1_ms, t2_ms, ratio[, rule_ms]) for one shape and mode."""
    torch.manual_seed(0)
    x = torch.randn(T, B, H)
    mods: dict[str, nn.Module] = {c: rnnlab.Recurrent(c, H, H) for c in cells}
    mods.update({k: cls(H, H) for k, cls in PEERS.items()})
    make = _train if mode == "train" else _infer
    fns = {k: make(m, x) for k, m in mods.items()}
    has_rule = _has_rule()
    # block sizes from one calibration call per impl at 1 thread
    torch.set_num_threads(threads[0])
    _set_rule(False)
    blocks = {}
    for k, f in fns.items():
        f()
        t0 = time.perf_counter()
        f()
        blocks[k] = max(1, min(200, round(BLOCK_S / max(time.perf_counter() - t0, 1e-6))))
    variants: list[tuple[str, int, bool]] = [("t1", threads[0], False), ("t2", threads[1], False)]
    if has_rule:
        variants.append(("rule", threads[1], True))
    samples: dict[str, dict[str, list[float]]] = {k: {v[0]: [] for v in variants} for k in fns}
    for r in range(repeats):
        order = variants if r % 2 == 0 else variants[::-1]  # alternate so drift hits both sides
        for name, nt, rule in order:
            torch.set_num_threads(nt)
            _set_rule(rule)
            for k, f in fns.items():
                if rule and k in PEERS:
                    continue  # the rule only touches rnnlab's kernels
                samples[k][name].append(_block(f, blocks[k]))
    torch.set_num_threads(threads[1])
    _set_rule(True)
    rows = []
    for k, s in samples.items():
        t1, t2 = statistics.median(s["t1"]), statistics.median(s["t2"])
        row: dict[str, object] = {"impl": k, "T": T, "B": B, "H": H, "mode": mode, "calls_per_block": blocks[k],
                                  "t1_ms": 1e3 * t1, "t2_ms": 1e3 * t2, "t2_over_t1": t2 / t1}
        if s.get("rule"):
            tr = statistics.median(s["rule"])
            row.update({"rule_ms": 1e3 * tr, "rule_over_t1": tr / t1, "rule_over_t2": tr / t2})
        rows.append(row)
    return rows


def _has_rule() -> bool:
    try:
        import rnnlab.backends.threads  # noqa: F401
    except ImportError:
        return False
    return True


#: busy fraction of the competing process per load name
HOG_DUTY = {"loaded": 1.0, "half": 0.5}


def start_hog(cpu: int = 0, duty: float = 1.0) -> subprocess.Popen:
    """A busy-loop process pinned to one CPU (the competing load), busy ``duty`` of every 20 ms."""
    code = "while True: pass" if duty >= 1.0 else (
        "import time\nwhile True:\n t = time.perf_counter()\n while time.perf_counter() - t < %r: pass\n"
        " time.sleep(%r)\n" % (0.02 * duty, 0.02 * (1.0 - duty)))
    hog = subprocess.Popen([sys.executable, "-c", code])
    os.sched_setaffinity(hog.pid, {cpu})
    time.sleep(0.5)
    return hog


def stop_hog(hog: subprocess.Popen) -> None:
    hog.kill()
    hog.wait()


def run(loads: list[str], shapes: list[tuple[int, int, int]], cells: list[str], modes: list[str],
        repeats: int) -> dict[str, object]:
    report: dict[str, object] = {"torch": torch.__version__, "cpus": os.cpu_count(), "repeats": repeats,
                                 "block_s": BLOCK_S, "rows": []}
    rows: list[dict[str, object]] = report["rows"]  # type: ignore[assignment]
    for load in loads:
        hog = start_hog(duty=HOG_DUTY[load]) if load in HOG_DUTY else None
        try:
            load_avg = os.getloadavg()[0]
            for T, B, H in shapes:
                for mode in modes:
                    for row in measure_shape(T, B, H, mode, cells, repeats, (1, 2)):
                        row["load"] = load
                        row["loadavg_1min_at_start"] = load_avg
                        rows.append(row)
                        print(_fmt(row), flush=True)
        finally:
            if hog is not None:
                stop_hog(hog)
    return report


def _fmt(row: dict[str, object]) -> str:
    s = (f"{row['load']:7s} {row['mode']:5s} ({row['T']},{row['B']},{row['H']}) {row['impl']:9s} "
         f"1t {row['t1_ms']:9.3f} ms  2t {row['t2_ms']:9.3f} ms  2t/1t {row['t2_over_t1']:6.2f}")
    if "rule_ms" in row:
        s += (f"  rule(2t) {row['rule_ms']:9.3f} ms  rule/1t {row['rule_over_t1']:5.2f}"
              f"  rule/2t {row['rule_over_t2']:5.2f}")
    return s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", nargs="+", default=["idle", "loaded"], choices=["idle", "half", "loaded"])
    ap.add_argument("--shapes", nargs="+", default=[",".join(map(str, s)) for s in SHAPES], help="T,B,H")
    ap.add_argument("--cells", nargs="+", default=CELLS)
    ap.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    a = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in a.shapes]
    report = run(a.load, shapes, a.cells, a.modes, a.repeats)  # type: ignore[arg-type]
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
