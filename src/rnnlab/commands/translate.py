"""`rnnlab translate`: a seq2seq checkpoint (g2p) turns each word of a text into its pronunciation, beam search."""

from __future__ import annotations

import argparse
import json
import time

from rnnlab.cli import UserError


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="pronounce words with a seq2seq (g2p) checkpoint",
                       description="Translate with an encoder-decoder trained by `rnnlab train g2p`: each "
                       "whitespace-separated word of TEXT is spelled into the encoder and its ARPAbet phonemes "
                       "are decoded by beam search (GNMT length normalisation).  With --score SPLIT it instead "
                       "decodes every word of that split and prints the phoneme / word error rates.",
                       epilog='example: rnnlab translate runs/g2p "hello world" --beam 5')
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT", help="a g2p run directory or checkpoint")
    p.add_argument("text", nargs="?", help="words to pronounce (letters, apostrophes, hyphens, dots)")
    p.add_argument("--beam", type=int, default=5, help="beam width; 1 = greedy (default 5)")
    p.add_argument("--alpha", type=float, default=0.6,
                   help="length normalisation: score = log P / ((5 + length) / 6) ** alpha (default 0.6)")
    p.add_argument("--nbest", type=int, default=1, help="print this many best pronunciations per word")
    p.add_argument("--score", choices=["train", "val", "test"], metavar="SPLIT",
                   help="decode the whole SPLIT (train, val, test) and print PER / WER next to the baseline")
    p.add_argument("--which", default="best", choices=("best", "latest"), help="checkpoint of a run directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def load_translator(path: str, which: str = "best"):
    """``(model, task, config)`` of a seq2seq checkpoint; UserError when it is not one."""
    from rnnlab.tasks import make_task
    from rnnlab.train.checkpoint import CheckpointError, load_model

    try:
        model, config = load_model(path, which)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if (config.get("model_io") or {}).get("target") != "seq2seq":
        raise UserError(f"{path}: translate needs a seq2seq model (rnnlab train g2p), this one was trained on "
                        f"{config['task']['name']!r}")
    spec = config["task"]
    try:
        task = make_task(spec["name"], **(spec.get("options") or {}))
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise UserError(f"{path}: cannot rebuild its task {spec.get('name')!r}: {e}") from None
    if (task.vocab_size, task.output_size) != (model.vocab_size, model.output_size):
        raise UserError(f"{path}: the installed dictionary gives vocabularies of {task.vocab_size}/"
                        f"{task.output_size} symbols, the model has {model.vocab_size}/{model.output_size}")
    return model, task, config


def encode_words(task, text: str | None):
    """Source batch (B, S) and lengths of the words of ``text``; UserError on empty text or unknown characters."""
    import torch

    words = (text or "").split()
    if not words:
        raise UserError(f"text: expected at least one word to pronounce, got {text or ''!r}")
    ids = []
    for w in words:
        try:
            ids.append(task.encode_word(w))
        except ValueError as e:
            raise UserError(f"text: {e}") from None
    src = torch.zeros(len(ids), max(len(i) for i in ids), dtype=torch.int64)
    for row, i in enumerate(ids):
        src[row, :len(i)] = torch.tensor(i)
    return words, src, torch.tensor([len(i) for i in ids], dtype=torch.int64)


def score_split(model, task, split: str, beam: int, alpha: float, batch_size: int = 256) -> dict[str, float]:
    """PER / WER of beam-search output on every word of ``split``."""
    import torch

    from rnnlab.seq2seq.metrics import error_rates, error_sums

    pairs = task.words[split]
    hyps, refs = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        _, src, lengths = encode_words(task, " ".join(w for w, _ in chunk))
        with torch.no_grad():
            best = model.beam(src, lengths, beam=beam, alpha=alpha)
        hyps += [task.decode_phonemes(h.tokens) for h in best]
        refs += [list(ph) for _, ph in chunk]
    return error_rates(error_sums(hyps, refs))


def run(args: argparse.Namespace) -> int:
    import torch

    if args.beam < 1:
        raise UserError(f"--beam: expected an integer >= 1, got {args.beam}")
    if not 1 <= args.nbest <= args.beam:
        raise UserError(f"--nbest: expected an integer in [1, --beam={args.beam}], got {args.nbest}")
    if not args.alpha == args.alpha or args.alpha < 0:
        raise UserError(f"--alpha: expected a number >= 0, got {args.alpha}")
    if args.score is None and args.text is None:
        raise UserError("text: expected the words to pronounce (or --score SPLIT)")
    model, task, config = load_translator(args.checkpoint, args.which)
    if args.score is not None:
        t0 = time.perf_counter()
        rates = score_split(model, task, args.score, args.beam, args.alpha)
        base = task.baseline(args.score)
        result = {"split": args.score, "words": task.num_examples(args.score), "beam": args.beam,
                  "alpha": args.alpha, **rates, "baseline": base, "seconds": round(time.perf_counter() - t0, 1)}
        if args.json:
            print(json.dumps(result))
        else:
            print(f"g2p {args.score} ({result['words']} words, beam {args.beam}, alpha {args.alpha}): "
                  f"PER {rates['per']:.4f}  WER {rates['wer']:.4f}   baseline (suffix neighbour) "
                  f"PER {base['per']:.4f}  WER {base['wer']:.4f}")
        return 0
    words, src, lengths = encode_words(task, args.text)
    with torch.no_grad():
        found = model.beam(src, lengths, beam=args.beam, alpha=args.alpha, nbest=True)
    rows = [{"word": w, "phonemes": [" ".join(task.decode_phonemes(h.tokens)) for h in hyps[:args.nbest]],
             "log_prob": [round(h.log_prob, 4) for h in hyps[:args.nbest]]} for w, hyps in zip(words, found)]
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(len(w) for w in words)
    for r in rows:
        for k, (ph, lp) in enumerate(zip(r["phonemes"], r["log_prob"])):
            print(f"{r['word'] if k == 0 else '':<{width}}  {ph}" + (f"   (log P {lp:.3f})" if args.nbest > 1 else ""))
    return 0
