"""`rnnlab bench`: time our recurrent layers against torch.nn.LSTM / nn.GRU and the eager loop, as ratios."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name, help="benchmark the fused kernels against torch.nn and the eager loop",
        description="Measure, in one run, the training step (forward+backward) and inference forward of "
        "each cell against torch.nn.LSTM (oneDNN), torch.nn.GRU and the eager PyTorch loop of the same cell, "
        "over a grid of shapes (T 50-1000, B 1-128, H 64-1024). Reports ratios time(ours)/time(other) "
        "(medians of interleaved repeats), GFLOP/s as a fraction of this machine's measured GEMM peak, and "
        "the per-step overhead at B=1, H=32. Example: rnnlab bench --quick --cells lstm gru --out bench.json")
    p.add_argument("--cells", nargs="+", default=None, metavar="CELL",
                   help="cells to benchmark (names from `rnnlab cells`, or 'all' for every registered cell; a cell "
                   "with options as NAME:KEY=VALUE,...,record, e.g. lstm:recurrent_dropout=0.25,zoneout=0.1 or "
                   "lstm:autocast=bf16 (everything of that row under torch.autocast); "
                   "default: lstm gru rnn)")
    p.add_argument("--quick", action="store_true",
                   help="two shapes (50,1,64) and (30,32,256), 3 repeats: under a minute even with --cells all")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per measurement, medians are reported (default 5, quick 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--shapes", nargs="+", default=None, metavar="T,B,H",
                   help="override the grid, e.g. --shapes 100,16,256 50,1,64")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the full report as JSON here")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to time (default cpu); cuda: synchronised timings, peers nn.LSTM/nn.GRU/nn.RNN on the "
                   "GPU, the backend that ran each cell (cudnn / triton / reference), and the GPU, driver, CUDA, "
                   "torch and Triton versions in the report")
    p.add_argument("--onnx", action="store_true", help="instead: ONNX Runtime (fp32, int8) vs PyTorch eager "
                   "inference, streaming at B=1 and one B=32, T=100 batch (default cells: lstm cifg)")
    p.set_defaults(func=run)


def _parse_shape(text: str) -> tuple[int, int, int]:
    from rnnlab.cli import UserError

    try:
        T, B, H = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--shapes: expected T,B,H with three positive ints, got {text!r}") from None
    if min(T, B, H) <= 0:
        raise UserError(f"--shapes: expected T,B,H with three positive ints, got {text!r}")
    return T, B, H


def run(args: argparse.Namespace) -> int:
    from rnnlab import bench
    from rnnlab.cells import cell_names
    from rnnlab.cli import UserError
    from rnnlab.train.config import MAX_THREADS

    if args.onnx:
        from rnnlab.export import bench as onnx_bench

        cells = args.cells or list(onnx_bench.DEFAULT_CELLS)
    else:
        cells = args.cells or list(bench.DEFAULT_CELLS)
    if "all" in cells:
        cells = bench.all_cells()
    known = cell_names()
    try:
        specs = {c: bench.parse_cell_spec(c) for c in cells}
    except ValueError as e:
        raise UserError(f"--{e}") from None
    bad = [c for c in cells if specs[c][0] not in known]
    if bad:
        raise UserError(f"--cells: unknown cell(s) {bad}; expected names from {known}")
    for c, (name, options, record) in specs.items():
        if (options or record) and args.onnx:
            raise UserError(f"--cells: options are not measured by --onnx, got {c!r}")
        try:  # the options are checked before minutes of measurements, on the meta device (no memory)
            bench._ours(c, 2, "auto", device="meta")
        except (TypeError, ValueError) as e:
            raise UserError(f"--cells: {c!r}: {e}") from None
    if args.device == "cuda":
        import torch

        if args.onnx:
            raise UserError("--device: --onnx measures ONNX Runtime on the CPU, got --device cuda")
        if not torch.cuda.is_available():
            raise UserError(f"--device: expected a usable CUDA device, got --device cuda but torch "
                            f"{torch.__version__} (CUDA {torch.version.cuda}) sees none")
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    if repeats <= 0:
        raise UserError(f"--repeats: expected a positive int, got {repeats}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads: expected an integer in [1, {MAX_THREADS}], got {args.threads}")
    if args.out is not None:
        # checked before the benchmark runs: a bad --out must not cost minutes of measurements
        parent = os.path.dirname(os.path.abspath(args.out)) if args.out.strip() else ""
        if not args.out.strip() or os.path.isdir(args.out) or not os.path.isdir(parent):
            raise UserError(f"--out: expected a file path in an existing directory, got {args.out!r}")
    if args.onnx:
        report = onnx_bench.run_onnx_bench(cells, quick=args.quick, repeats=repeats, threads=args.threads or 1)
        print(onnx_bench.format_table(report))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)
        return 0
    if args.shapes:
        shapes = [_parse_shape(s) for s in args.shapes]
    else:
        shapes = bench.QUICK_SHAPES if args.quick else bench.FULL_SHAPES
    report = bench.run_bench(cells=cells, shapes=shapes, repeats=repeats, threads=args.threads,
                             overhead_steps=100 if args.quick else 1000,
                             progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True), device=args.device)
    print(bench.format_table(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return 0
