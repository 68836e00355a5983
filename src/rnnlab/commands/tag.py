"""`rnnlab tag`: restore punctuation and capitals in text with a model trained on the punctuation task."""

from __future__ import annotations

import argparse
import sys

from rnnlab.cli import UserError


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="restore punctuation and capitals with a punctuation tagger",
                       description="Read TEXT (or standard input with -), lower-case it, drop its punctuation and "
                       "let a model trained on the punctuation task put back each word's capital and the mark "
                       "after it. Words outside the model's vocabulary are read as <unk> (tagged from their "
                       "context, written back unchanged) and listed on standard error.",
                       epilog='example: rnnlab tag runs/punct "to be or not to be that is the question"')
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT", help="a punctuation run directory or checkpoint")
    p.add_argument("text", help="the text to restore, or - to read standard input")
    p.add_argument("--data", metavar="FILE", help="the text file the model was trained on (`train --text`): "
                   "rnnlab never opens a file named by a checkpoint; its SHA-256 must match the recorded one")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.tasks.punctuation import tag_text
    from rnnlab.train.checkpoint import CheckpointError, load_model
    from rnnlab.train.runner import task_from_checkpoint

    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise UserError("text: expected some words, got an empty text")
    try:
        model, config = load_model(args.checkpoint)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if config["task"]["name"] != "punctuation":
        raise UserError(f"{args.checkpoint}: tag needs a punctuation model, this one was trained on "
                        f"{config['task']['name']!r}")
    try:  # never the text path saved in the checkpoint: the user's --data, with the recorded hash
        task = task_from_checkpoint(config, args.data)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{args.checkpoint}: cannot rebuild the punctuation vocabulary: {e}") from None
    if task.vocab_size != model.vocab_size:
        raise UserError(f"{args.checkpoint}: the text now gives a vocabulary of {task.vocab_size} words, the "
                        f"model has {model.vocab_size} (did the text file change?)")
    try:
        restored, unknown = tag_text(model, task, text)
    except ValueError as e:
        raise UserError(str(e)) from None
    if unknown:
        print(f"read as <unk> (not in the vocabulary): {', '.join(dict.fromkeys(unknown))}", file=sys.stderr)
    print(restored)
    return 0
