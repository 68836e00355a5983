"""`rnnlab export`: a trained model as ONNX (optionally int8) or a torch.export .pt2, with metadata beside it."""

from __future__ import annotations

import argparse

from rnnlab.cli import UserError


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="export a trained model to ONNX or torch.export (.pt2)",
                       description="Export a checkpoint's whole model (embedding, recurrent stack, head) with a "
                       "dynamic batch and sequence length.  ONNX uses one LSTM/GRU/RNN node per layer where the "
                       "standard has the cell, a Scan over the cell's step otherwise.  The task, vocabulary and "
                       "normalisation statistics go to FILE.json; `rnnlab eval --onnx FILE` checks the metric.",
                       epilog="example: rnnlab export runs/cue-lstm --format onnx --out cue.onnx")
    p.add_argument("path", metavar="RUN_DIR|CHECKPOINT",
                   help="a run directory (its best checkpoint is used) or one checkpoint directory")
    # validated in run(), not with choices=: a wrong value gets the one-line error every command gives
    p.add_argument("--format", default="onnx", help="onnx (default) or pt2 (torch.export)")
    p.add_argument("--quantize", default=None, metavar="int8",
                   help="ONNX only: int8 weights through ONNX Runtime's dynamic quantization")
    p.add_argument("--out", required=True, metavar="FILE", help="the model file to write (FILE.json beside it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.export.files import FORMATS, QUANTIZE, check_output_path, write_export
    from rnnlab.train.checkpoint import CheckpointError, load_model

    if args.format not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {args.format!r}")
    if args.quantize is not None and args.quantize not in QUANTIZE:
        raise UserError(f"--quantize: expected one of {', '.join(QUANTIZE)}, got {args.quantize!r}")
    if args.quantize is not None and args.format != "onnx":
        raise UserError(f"--quantize: int8 quantization applies to --format onnx, got --format {args.format}")
    try:
        check_output_path(args.out)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise UserError(f"--format onnx: needs the onnx and onnxruntime packages ({e}); "
                            "pip install onnx onnxruntime") from None
    try:
        model, config = load_model(args.path)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    try:
        meta = write_export(model, config, args.format, args.out, args.quantize)
    except OSError as e:
        raise UserError(f"--out: cannot write {args.out} ({e.strerror or e})") from None
    kinds = ", ".join(meta["layers"])
    print(f"wrote {args.out} ({args.format}{', ' + args.quantize if args.quantize else ''}; layers: {kinds}) "
          f"and {args.out}.json")
    return 0
