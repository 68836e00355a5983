"""`rnnlab inspect`: gate heatmaps, state trajectories, gradient flow and a coloured-text page of a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Look inside a trained model.  Writes into --out:
  gates_l{L}[_reverse].png    heatmaps (units x time) of every gate of one sequence
  states_l{L}[_reverse].png   trajectories of the cell state (c for LSTMs, else h)
  gradflow_model.png          |dL/dh_t| and |dL/dx_t| against the distance from the last-step loss
  gradflow_cells.png          the same for fresh Elman RNN / LSTM / GRU on the adding problem (vanishing)
  exploding.png               a ReLU RNN with large recurrent weights, trained without and with clipping
  units.json                  units ranked by correlation with input features (quotes, line position,
                              bracket depth, vowels... for text; time step and input channels otherwise)
  index.html                  a self-contained page: text coloured by a chosen layer/direction/gate/unit
                              (heatmaps of the sequences for non-text tasks) and the top units
"""


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="plots and an HTML page of gates, states and gradient flow of a checkpoint",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run directory (its best checkpoint) or a "
                   "checkpoint directory written by `rnnlab train`")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--which", default="best", choices=("best", "latest"),
                   help="which checkpoint of a run directory (default: best)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="data the model is run on (default: val)")
    p.add_argument("--length", type=int, default=None, metavar="N",
                   help="steps per sequence: characters per text segment (default 600) or the first N steps "
                        "of each sequence (default: all)")
    p.add_argument("--sequences", type=int, default=None, metavar="N",
                   help="text segments / sequences shown (default: 2 for text, 4 otherwise)")
    p.add_argument("--top", type=int, default=20, metavar="K", help="units listed on the page and in units.json")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the reference RNN/LSTM/GRU and exploding-gradient plots (faster)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference experiments (default 0)")
    p.add_argument("--data", metavar="FILE", help="the text file a charlm model was trained on (`train --text`): "
                   "rnnlab never opens a file named by a checkpoint; its SHA-256 must match the recorded one")
    p.set_defaults(func=run)


def _positive(name: str, value: int | None) -> None:
    from rnnlab.cli import UserError

    if value is not None and value < 1:
        raise UserError(f"{name}: expected a positive integer, got {value}")


def _task(config: dict, data: str | None = None):
    from rnnlab.cli import UserError
    from rnnlab.train.checkpoint import CheckpointError
    from rnnlab.train.runner import task_from_checkpoint

    spec = config.get("task") or {}
    try:
        # never opens a file the checkpoint names: a text-file model needs --data with the recorded hash
        return task_from_checkpoint(config, data)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"CHECKPOINT: cannot rebuild its task from {spec!r} ({type(e).__name__}: {e})") from None


def run(args: argparse.Namespace) -> int:
    from rnnlab.cli import UserError
    from rnnlab.inspection.report import inspect_model

    for name in ("--length", "--sequences", "--top"):
        _positive(name, getattr(args, name.lstrip("-")))
    if not args.out.strip():
        raise UserError(f"--out: expected a directory name, got {args.out!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {str(out)!r} exists and is not a directory")
    try:
        from rnnlab.train.checkpoint import CheckpointError, load_model
    except ImportError as e:  # pragma: no cover - the trainer ships with the package
        raise UserError(f"CHECKPOINT: checkpoint loading is not available ({e})") from None
    try:
        model, config = load_model(args.checkpoint, args.which)
    except (CheckpointError, FileNotFoundError, NotADirectoryError) as e:
        raise UserError(f"CHECKPOINT: {e}") from None
    task = _task(config, args.data)
    if task.target == "seq2seq":  # an encoder-decoder: its attention matrices instead of gates/states
        from rnnlab.seq2seq.plots import inspect_seq2seq

        try:
            summary = inspect_seq2seq(model, task, out, split=args.split, count=args.sequences or 4,
                                      title=f"attention of {Path(args.checkpoint).name}")
        except ValueError as e:  # a model without attention, an empty split
            raise UserError(f"CHECKPOINT: {e}") from None
        print(f"wrote {len(summary['files'])} files to {out}: " + ", ".join(summary["files"]))
        return 0
    texts = None
    lengths = None
    if hasattr(task, "decode") and hasattr(task, "stream"):  # a character model: contiguous text
        S, L = args.sequences or 2, args.length or 600
        stream = task.stream(args.split)
        L = min(L, (len(stream) - 1) // S)
        if L < 2:
            raise UserError(f"--sequences: {S} segments leave fewer than 2 characters each in the {args.split} "
                            f"split ({len(stream)} characters)")
        x = stream[:S * L].view(S, L)  # (S, L)
        y = stream[1:S * L + 1].view(S, L)  # (S, L): next characters
        texts = [task.decode(row) for row in x]
    else:
        batch = next(iter(task.batches(args.split, args.sequences or 4)))
        x, y, lengths = batch.x, batch.y, batch.lengths
        if args.length is not None and args.length < x.shape[1]:
            x = x[:, :args.length]
            if y.dim() >= 2 and task.target == "seq_class":
                y = y[:, :args.length]
            if lengths is not None:
                lengths = lengths.clamp(max=args.length)
    title = f"rnnlab inspect: {config.get('model', {}).get('cell', '?')} on {task.name} ({Path(args.checkpoint).name})"
    summary = inspect_model(model, out, x=x, y=y, lengths=lengths, texts=texts, title=title, top=args.top,
                            reference=not args.no_reference, seed=args.seed)
    print(f"wrote {len(summary['files'])} files to {out}: " + ", ".join(summary["files"]))
    for u in summary["top_units"][:5]:
        print(f"  layer {u['layer']} {'<-' if u['direction'] else '->'} {u['gate']}[{u['unit']}] ~ "
              f"{u['feature']}: r = {u['r']:+.3f}")
    return 0
