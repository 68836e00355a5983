"""`rnnlab eval`: metrics of a saved model on a split of its task, next to the task's baseline."""

from __future__ import annotations

import argparse
import json

from rnnlab.cli import UserError


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="evaluate a trained model", description="Evaluate a checkpoint on a split of "
                       "the task it was trained on (rebuilt from the checkpoint's JSON config) and print its "
                       "metrics next to the task's baseline (chance, unigram, naive forecast, ...).",
                       epilog="example: rnnlab eval runs/cue-lstm --split test")
    p.add_argument("path", metavar="RUN_DIR|CHECKPOINT", nargs="?",
                   help="a run directory (its best checkpoint is used) or one checkpoint directory")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to evaluate")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--onnx", metavar="FILE", help="evaluate this `rnnlab export` ONNX file in ONNX Runtime "
                   "instead of a checkpoint")
    p.add_argument("--data", metavar="FILE", help="the text file a charlm model was trained on (`train --text`): "
                   "rnnlab never opens a file named by a checkpoint; its SHA-256 must match the recorded one")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.train.checkpoint import CheckpointError
    from rnnlab.train.runner import evaluate_checkpoint

    if args.onnx:
        return run_onnx(args)
    if args.path is None:
        raise UserError("RUN_DIR|CHECKPOINT: expected a run or checkpoint directory (or --onnx FILE), got nothing")
    try:
        metrics, baseline, config = evaluate_checkpoint(args.path, args.split, data=args.data)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    except (ValueError, TypeError) as e:  # the task could not be rebuilt (e.g. its text file moved)
        raise UserError(f"{args.path}: cannot rebuild task {config_task(args.path)}: {e}") from None
    task = config["task"]["name"]
    if args.json:
        print(json.dumps({"task": task, "split": args.split, "step": config.get("step"), "metrics": metrics,
                          "baseline": baseline, "checkpoint": config.get("path")}))
        return 0
    print(f"{task} ({config['model']['cell']}, step {config.get('step')}) on {args.split}: {config.get('path')}")
    keys = [k for k in metrics if k != "count"]
    width = max(len(k) for k in keys)
    print(f"{'metric':<{width}}  {'model':>10}  {'baseline':>10}")
    for k in keys:
        base = baseline.get(k)
        print(f"{k:<{width}}  {metrics[k]:>10.4f}  {'' if base is None else f'{base:10.4f}':>10}")
    return 0


def config_task(path: str) -> str:
    try:
        from rnnlab.train.checkpoint import load_checkpoint

        return repr(load_checkpoint(path).config["task"])
    except Exception:  # only decorates an error message
        return "(unknown)"


def run_onnx(args: argparse.Namespace) -> int:
    """`eval --onnx FILE`: the same metrics through ONNX Runtime (checks a deployed model)."""
    from rnnlab.export.runtime import ExportError, evaluate_onnx
    from rnnlab.train.checkpoint import CheckpointError

    try:
        metrics, baseline, meta = evaluate_onnx(args.onnx, args.split, data=args.data)
    except (ExportError, CheckpointError) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps({"task": meta["task"]["name"], "split": args.split, "step": meta.get("step"),
                          "metrics": metrics, "baseline": baseline, "onnx": args.onnx}))
        return 0
    print(f"{meta['task']['name']} ({meta['model']['cell']}, step {meta.get('step')}) on {args.split}: "
          f"{args.onnx} (ONNX Runtime)")
    for k, v in metrics.items():
        if k != "count":
            print(f"{k}  {v:.4f}")
    return 0
