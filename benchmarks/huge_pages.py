"""Huge pages for the driver's large buffers: training and inference time with the advice on and off.

The C++ driver advises its large per-call buffers (outputs, states, saved activations, gradients) onto
transparent huge pages (``backends/cpp/buffers.h``).  This times each cell and shape with the switch on and off
(``set_huge_pages``) in one process, the two alternating inside every repeat, and reports medians and the
on / off ratio.  The machine's THP mode (``/sys/kernel/mm/transparent_hugepage/enabled``) is recorded: with
``never`` the advice does nothing and the ratio is noise.

Example:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/huge_pages.py --repeats 7 --out docs/bench/huge_pages.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import rnnlab
from rnnlab.backends.cpp.generic_loader import load_generic

SHAPES: list[tuple[int, int, int]] = [(200, 16, 128), (100, 64, 256), (50, 128, 512), (20, 32, 1024)]
CELLS = ["gru", "peephole", "slstm", "mut1", "ln_gru", "indrnn"]
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str:
    """The bracketed word of the kernel's THP setting ("madvise", "always", "never"), or "unknown"."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return "unknown"
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def _step(mod: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    def train() -> None:
        mod(x)[0].sum().backward()

    def infer() -> None:
        with torch.no_grad():
            mod(x)
    return train if mode == "train" else infer


def _time(f: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def measure(cell: str, shape: tuple[int, int, int], mode: str, repeats: int) -> dict[str, object]:
    """Median seconds with the advice on and off, alternating inside each repeat (the order flips each time)."""
    ext = load_generic()
    T, B, H = shape
    torch.manual_seed(0)
    mod = rnnlab.Recurrent(cell, H, H)
    x = torch.randn(T, B, H)
    f = _step(mod, x, mode)
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for on in (True, False):  # warm-up, both ways
            ext.set_huge_pages(on)
            f()
        for r in range(repeats):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                ext.set_huge_pages(on)
                times[on].append(_time(f))
    finally:
        ext.set_huge_pages(True)
    on_ms, off_ms = (statistics.median(times[k]) * 1e3 for k in (True, False))
    return {"cell": cell, "T": T, "B": B, "H": H, "mode": mode, "on_ms": on_ms, "off_ms": off_ms,
            "on_vs_off": on_ms / off_ms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=CELLS)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if load_generic() is None:
        raise SystemExit("huge_pages: the C++ driver extension did not build; nothing to measure")
    rows = []
    print(f"THP mode: {_thp_mode()}, threads: {torch.get_num_threads()}")
    print(f"{'cell':10}{'T,B,H':>14}{'mode':>7}{'on ms':>10}{'off ms':>10}{'on/off':>8}")
    for cell in args.cells:
        for shape in SHAPES:
            for mode in ("train", "infer"):
                row = measure(cell, shape, mode, args.repeats)
                rows.append(row)
                print(f"{cell:10}{','.join(map(str, shape)):>14}{mode:>7}{row['on_ms']:>10.2f}{row['off_ms']:>10.2f}"
                      f"{row['on_vs_off']:>8.3f}", flush=True)
    if args.out is not None:
        report = {"settings": {"thp_mode": _thp_mode(), "threads": torch.get_num_threads(),
                               "repeats": args.repeats, "torch": torch.__version__}, "rows": rows}
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
