"""`rnnlab generate`: sample text from a character language model checkpoint."""

from __future__ import annotations

import argparse
import math

from rnnlab.cli import UserError


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="generate text from a char-LM or word-LM checkpoint",
                       description="Sample characters from a model trained on the charlm task: the model reads "
                       "--prime, then writes --length characters one at a time with its state carried along.  On a "
                       "wordlm run --prime is a prompt of words (unknown ones read as <unk>, noted on stderr) and "
                       "--length counts words, printed with punctuation attached.",
                       epilog='example: rnnlab generate runs/charlm-lstm --prime "ROMEO:" --length 300 '
                              "--temperature 0.8 --top-k 20 --seed 1")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT", nargs="?", help="a charlm run directory or checkpoint")
    p.add_argument("--onnx", metavar="FILE", help="sample from this `rnnlab export` ONNX file (charlm) in ONNX "
                   "Runtime instead of a checkpoint")
    p.add_argument("--prime", default="\n", help="text the model reads first (default: a newline)")
    p.add_argument("--length", type=int, default=300, help="characters to generate (default 300)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature; 0 = greedy, < 1 = safer, > 1 = wilder (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely characters")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (same seed, same text)")
    p.add_argument("--data", metavar="FILE", help="the text file the model was trained on (`train --text`): "
                   "rnnlab never opens a file named by a checkpoint; its SHA-256 must match the recorded one")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.train.checkpoint import CONFIG_FILE, CheckpointError, load_model
    from rnnlab.train.config import ConfigError, check_model_io, run_config_from_dict
    from rnnlab.train.datafiles import is_data_option, task_spec_from_checkpoint
    from rnnlab.train.runner import make_task

    if args.length < 0:
        raise UserError(f"--length: expected an integer >= 0, got {args.length}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UserError(f"--temperature: expected a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k: expected an integer >= 1, got {args.top_k}")
    if not 0 <= args.seed < 2**64:
        raise UserError(f"--seed: expected an integer in [0, 2**64), got {args.seed}")
    if not args.prime:
        raise UserError("--prime: expected a non-empty string")
    if args.onnx:
        return _generate_onnx(args)
    if args.checkpoint is None:
        raise UserError("RUN_DIR|CHECKPOINT: expected a charlm run or checkpoint (or --onnx FILE), got nothing")
    try:
        model, config = load_model(args.checkpoint)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    where = f"{config['path']}/{CONFIG_FILE}"
    try:
        run = run_config_from_dict(config)
    except ConfigError as e:
        raise UserError(f"{where}: {e} (the saved config was edited or damaged)") from None
    if run.task == "wordlm":
        return _generate_words(args, model, config)
    if run.task != "charlm":
        raise UserError(f"{args.checkpoint}: generate needs a charlm or wordlm model, this one was trained on "
                        f"{run.task!r}")
    try:  # never the text path saved in the checkpoint: the user's --data, with the recorded hash
        spec = task_spec_from_checkpoint(config, args.data)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    try:
        task = make_task("charlm", {**run.options, **{k: v for k, v in spec["options"].items() if is_data_option(k)}})
    except (ValueError, TypeError) as e:
        raise UserError(f"{args.checkpoint}: cannot rebuild the charlm vocabulary: {e}") from None
    if task.vocab_size != model.vocab_size:
        raise UserError(f"{args.checkpoint}: the text now gives a vocabulary of {task.vocab_size} characters, "
                        f"the model has {model.vocab_size} (did the text file change?)")
    try:
        check_model_io(config, task)
    except ConfigError as e:
        raise UserError(f"{where}: {e}") from None
    return _sample_chars(args, model, task)


def _sample_chars(args: argparse.Namespace, model, task) -> int:
    """Print --prime and the characters ``model`` (a checkpoint's or an ONNX export's) samples after it."""
    import torch

    from rnnlab.tasks.charlm import generate

    try:
        task.encode(args.prime)
    except ValueError as e:
        raise UserError(f"--prime: {str(e).partition(': ')[2]}; got {args.prime!r}") from None
    text = generate(model, task, args.prime, args.length, temperature=args.temperature, top_k=args.top_k,
                    generator=torch.Generator().manual_seed(args.seed))
    print(args.prime + text)
    return 0


def _generate_words(args: argparse.Namespace, model, config: dict) -> int:
    """wordlm runs: --prime is a prompt of words (unknown ones read as <unk>, noted on stderr; none = start as
    after a full stop), --length counts words; prints the prompt and the words, punctuation attached."""
    import torch

    from rnnlab.commands.predict import note_unknown, word_task
    from rnnlab.tasks.wordlm import generate_words

    task = word_task(args.checkpoint, model, config, getattr(args, "data", None))
    note_unknown(task, args.prime, "generate")
    print(generate_words(model, task, args.prime, args.length, temperature=args.temperature, top_k=args.top_k,
                         generator=torch.Generator().manual_seed(args.seed)))
    return 0


def _generate_onnx(args: argparse.Namespace) -> int:
    """`generate --onnx FILE`: the same sampler over an exported charlm model run by ONNX Runtime."""
    from rnnlab.export.runtime import ExportError, OnnxSequenceModel, read_metadata, task_from_metadata
    from rnnlab.train.checkpoint import CheckpointError

    try:
        meta = read_metadata(args.onnx)
        if meta["task"]["name"] != "charlm":
            raise UserError(f"--onnx: generate needs a charlm export, {args.onnx} was trained on "
                            f"{meta['task']['name']!r}")
        task = task_from_metadata(meta, args.data)
        model = OnnxSequenceModel(args.onnx, meta)
    except (ExportError, CheckpointError) as e:
        raise UserError(str(e)) from None
    if task.vocab_size != model.vocab_size:
        raise UserError(f"--onnx: the text gives a vocabulary of {task.vocab_size} characters, the export has "
                        f"{model.vocab_size} (did the text file change?)")
    return _sample_chars(args, model, task)
