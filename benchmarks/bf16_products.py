"""The driver's bf16 products under CPU autocast, timed against float32 products and plain float32 in one process.

Under ``torch.autocast("cpu", torch.bfloat16)`` the driver's products (per-step recurrent products, weight
gradients) run in bf16 with float32 accumulation where the CPU has native bf16 GEMMs (``generic_ops.py``,
``backends/cpp/gemm.h`` ReducedProducts).  For each cell and shape this times a training step (forward +
backward) or an inference call three ways, alternating inside every repeat:

- ``bf16``: autocast, bf16 products (the default);
- ``fp32_products``: autocast, products in float32 (``generic_ops.BF16_PRODUCTS = False``: what the driver did
  before the bf16 products);
- ``fp32``: no autocast.

``--compare threshold`` instead times autocast training with every per-step product of at least ``--min-macs``
multiply-adds in bf16 (``set_reduced_min_macs``, default 0: all of them) against every per-step product in
float32 (the once-per-call weight gradients keep their default, gemm.h's kReducedOnce), at small shapes: where
bf16 stops paying for its conversions and calls (gemm.h's kReducedStep).

``--compare storage``: a model stored in bf16 (``.to(torch.bfloat16)``), whose projection and products run in
bf16 (``backend.py``), against the same model on the float32 route it took before (everything cast up, float32
products: ``BF16_PRODUCTS = False``) and against the float32 model, all without autocast.

Every module is built with ``backend="cpp"`` so that the plain LSTM / GRU run the driver too (under autocast a
default-backend plain stack runs torch.nn's own op instead: ``backends/aten_stack.py``).

Example:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bf16_products.py --repeats 7 --out docs/bench/bf16_products.json
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Callable

import torch

import rnnlab
from rnnlab.backends.cpp import generic_ops
from rnnlab.backends.cpp.generic_loader import load_generic

from interleave import alternate, write_report  # benchmarks/interleave.py

SHAPES: list[tuple[int, int, int]] = [(200, 16, 128), (100, 64, 256), (50, 128, 512), (20, 32, 1024)]
SMALL_SHAPES: list[tuple[int, int, int]] = [(100, 8, 64), (100, 4, 128), (200, 16, 128), (100, 32, 128),
                                            (100, 8, 256)]
CELLS = ["lstm", "gru", "peephole", "slstm", "mut1", "ln_gru", "sru", "indrnn"]


def _call(mod: torch.nn.Module, x: torch.Tensor, mode: str, autocast: bool) -> Callable[[], None]:
    def run() -> None:
        ctx = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
        if mode == "train":
            with ctx:
                out = mod(x)[0]
            out.float().sum().backward()
        else:
            with torch.no_grad(), ctx:
                mod(x)
    return run


def _products(on: bool) -> Callable[[], None]:
    def switch() -> None:
        generic_ops.BF16_PRODUCTS = on
    return switch


def _measure(cell: str, shape: tuple[int, int, int], mode: str, repeats: int,
             variants: Callable[[int, torch.Tensor], dict]) -> dict[str, object]:
    """One row: the variants ``variants(H, x)`` makes for an input x (T, B, H), alternated; ms per variant."""
    T, B, H = shape
    torch.manual_seed(0)
    x = torch.randn(T, B, H, requires_grad=mode == "train")
    try:
        ms = alternate(variants(H, x), repeats)
    finally:
        generic_ops.BF16_PRODUCTS = True
    return {"cell": cell, "T": T, "B": B, "H": H, "mode": mode, **{f"{k}_ms": v for k, v in ms.items()}}


def three_ways(cell: str, shape: tuple[int, int, int], mode: str, repeats: int) -> dict[str, object]:
    """bf16 products, float32 products (both under autocast) and plain float32: ms and ratios."""

    def variants(H: int, x: torch.Tensor) -> dict:
        mod = rnnlab.Recurrent(cell, H, H, backend="cpp")
        return {"bf16": (_products(True), _call(mod, x, mode, True)),
                "fp32_products": (_products(False), _call(mod, x, mode, True)),
                "fp32": (_products(True), _call(mod, x, mode, False))}

    row = _measure(cell, shape, mode, repeats, variants)
    return {**row, "bf16_vs_fp32_products": row["bf16_ms"] / row["fp32_products_ms"],
            "bf16_vs_fp32": row["bf16_ms"] / row["fp32_ms"]}


def storage(cell: str, shape: tuple[int, int, int], mode: str, repeats: int) -> dict[str, object]:
    """A bf16 model with bf16 products, the same model on the float32 route, the float32 model: ms and ratios."""

    def variants(H: int, x: torch.Tensor) -> dict:
        fp32 = rnnlab.Recurrent(cell, H, H, backend="cpp")
        bf16 = rnnlab.Recurrent(cell, H, H, backend="cpp").to(torch.bfloat16)
        x16 = x.detach().bfloat16().requires_grad_(mode == "train")
        return {"bf16": (_products(True), _call(bf16, x16, mode, False)),
                "bf16_fp32_route": (_products(False), _call(bf16, x16, mode, False)),
                "fp32": (_products(True), _call(fp32, x, mode, False))}

    row = _measure(cell, shape, mode, repeats, variants)
    return {**row, "bf16_vs_fp32_route": row["bf16_ms"] / row["bf16_fp32_route_ms"],
            "bf16_vs_fp32": row["bf16_ms"] / row["fp32_ms"]}


def threshold(cell: str, shape: tuple[int, int, int], repeats: int, min_macs: int) -> dict[str, object]:
    """Autocast training with every per-step product of at least ``min_macs`` in bf16 against all of them in
    float32."""
    ext = load_generic()
    T, B, H = shape
    torch.manual_seed(0)
    mod = rnnlab.Recurrent(cell, H, H, backend="cpp")
    x = torch.randn(T, B, H, requires_grad=True)
    f = _call(mod, x, "train", True)
    step, once = ext.reduced_min_macs()
    try:
        ms = alternate({"bf16_steps": (lambda: ext.set_reduced_min_macs(min_macs, once), f),
                        "fp32_steps": (lambda: ext.set_reduced_min_macs(1 << 62, once), f)}, repeats)
    finally:
        ext.set_reduced_min_macs(step, once)
    return {"cell": cell, "T": T, "B": B, "H": H, "mode": "train", "min_macs": min_macs,
            "bf16_steps_ms": ms["bf16_steps"], "fp32_steps_ms": ms["fp32_steps"],
            "bf16_vs_fp32_steps": ms["bf16_steps"] / ms["fp32_steps"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", choices=["three_ways", "storage", "threshold"], default="three_ways")
    ap.add_argument("--cells", nargs="+", default=CELLS)
    ap.add_argument("--modes", nargs="+", choices=["train", "infer"], default=["train", "infer"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-macs", type=int, default=0,
                    help="threshold: the bf16 side's smallest per-step bf16 product")
    ap.add_argument("--shapes", nargs="+", default=None, help="T,B,H each (default: the compare's own list)")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if load_generic() is None:
        raise SystemExit("bf16_products: the C++ driver extension did not build; nothing to measure")
    if not generic_ops.native_bf16():
        raise SystemExit("bf16_products: this CPU has no native bf16 GEMMs; the driver keeps float32 products")
    print(f"compare: {args.compare}, threads: {torch.get_num_threads()}")
    rows = []
    shapes = [tuple(int(v) for v in a.split(",")) for a in args.shapes] if args.shapes else None
    if args.compare in ("three_ways", "storage"):
        middle = "fp32 prod" if args.compare == "three_ways" else "fp32 route"
        print(f"{'cell':10}{'T,B,H':>14}{'mode':>7}{'bf16 ms':>10}{middle + ' ms':>14}{'fp32 ms':>10}"
              f"{'bf16/' + middle:>17}{'bf16/fp32':>11}")
        measure = three_ways if args.compare == "three_ways" else storage
        key = "fp32_products" if args.compare == "three_ways" else "bf16_fp32_route"
        for cell in args.cells:
            for shape in shapes or SHAPES:
                for mode in args.modes:
                    row = measure(cell, shape, mode, args.repeats)
                    rows.append(row)
                    ratio = row["bf16_vs_fp32_products" if args.compare == "three_ways" else "bf16_vs_fp32_route"]
                    print(f"{cell:10}{','.join(map(str, shape)):>14}{mode:>7}{row['bf16_ms']:>10.2f}"
                          f"{row[key + '_ms']:>14.2f}{row['fp32_ms']:>10.2f}"
                          f"{ratio:>17.3f}{row['bf16_vs_fp32']:>11.3f}", flush=True)
    else:
        print(f"{'cell':10}{'T,B,H':>14}{'bf16 step ms':>13}{'fp32 step ms':>13}{'ratio':>8}")
        for cell in args.cells:
            for shape in shapes or SMALL_SHAPES:
                row = threshold(cell, shape, args.repeats, args.min_macs)
                rows.append(row)
                print(f"{cell:10}{','.join(map(str, shape)):>14}{row['bf16_steps_ms']:>13.2f}"
                      f"{row['fp32_steps_ms']:>13.2f}{row['bf16_vs_fp32_steps']:>8.3f}", flush=True)
    if args.out is not None:
        report = {"settings": {"compare": args.compare, "threads": torch.get_num_threads(), "repeats": args.repeats,
                               "reduced_min_macs": {"step": load_generic().reduced_min_macs()[0],
                                                    "once": load_generic().reduced_min_macs()[1]},
                               "torch": torch.__version__},
                  "rows": rows}
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
