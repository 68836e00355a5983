"""`rnnlab predict`: the k most likely next words after a prompt, from a word language model checkpoint."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rnnlab.cli import UserError


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="list the most likely next words after a prompt (wordlm runs)",
                       description="Read --prompt with a model trained on the wordlm task and print the --top-k "
                       "most likely next words with the model's probabilities, one 'word<TAB>probability' per line, "
                       "most likely first.  Prompt words outside the model's vocabulary are read as <unk> (a note "
                       "on stderr names them); <unk> itself is never listed.",
                       epilog='example: rnnlab predict runs/wordlm-lstm --prompt "the clouds are in the" --top-k 5')
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT", help="a wordlm run directory or checkpoint")
    p.add_argument("--prompt", required=True, help="the words the model reads (lower-cased and tokenised)")
    p.add_argument("--top-k", type=int, default=10, help="how many next words to list (default 10)")
    p.add_argument("--data", metavar="FILE", help="the text file the model was trained on (`-o path=FILE`): "
                   "rnnlab never opens a file named by a checkpoint; its SHA-256 must match the recorded one")
    p.set_defaults(func=run)


def word_task(checkpoint: str, model: Any, config: dict[str, Any], data: str | None = None) -> Any:
    """The :class:`~rnnlab.tasks.wordlm.WordLMTask` a loaded checkpoint was trained on, rebuilt from its saved
    options (a text file: the user's ``data``, never the recorded path) and checked against the model's
    vocabulary; ``UserError`` when it is no wordlm run or cannot be rebuilt."""
    from rnnlab.train.checkpoint import CheckpointError
    from rnnlab.train.datafiles import task_spec_from_checkpoint
    from rnnlab.train.runner import make_task

    try:
        spec = task_spec_from_checkpoint(config, data)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if spec["name"] != "wordlm":
        raise UserError(f"{checkpoint}: needs a wordlm model, this one was trained on {spec['name']!r}")
    try:
        task = make_task("wordlm", spec["options"])
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise UserError(f"{checkpoint}: cannot rebuild the wordlm vocabulary: {e}") from None
    if task.vocab_size != model.vocab_size or model.target != "seq_class":
        raise UserError(f"{checkpoint}: the text now gives a vocabulary of {task.vocab_size} words, the model has "
                        f"{model.vocab_size} (did the text change?)")
    return task


def note_unknown(task: Any, text: str, command: str) -> None:
    """One stderr line naming the words of ``text`` that the model reads as <unk> (nothing when all are known)."""
    unknown = task.unknown_words(text)
    if unknown:
        shown = ", ".join(repr(w) for w in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        print(f"rnnlab {command}: note: not in the vocabulary, read as <unk>: {shown}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from rnnlab.tasks.wordlm import tokenize, top_words
    from rnnlab.train.checkpoint import CheckpointError, load_model

    if args.top_k < 1:
        raise UserError(f"--top-k: expected an integer >= 1, got {args.top_k}")
    if not tokenize(args.prompt):
        raise UserError(f"--prompt: expected at least one word, got {args.prompt!r}")
    try:
        model, config = load_model(args.checkpoint)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    task = word_task(args.checkpoint, model, config, args.data)
    note_unknown(task, args.prompt, "predict")
    for word, prob in top_words(model, task, args.prompt, args.top_k):
        print(f"{word}\t{prob:.4f}")
    return 0
