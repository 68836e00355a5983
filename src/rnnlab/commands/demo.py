"""`rnnlab demo` (`make demo`): RNN vs LSTM vs GRU on a long-lag task, then a small Shakespeare char LSTM."""

from __future__ import annotations

import argparse
import os
import time

from rnnlab.cli import UserError


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="the five-minute tour (make demo)", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="1) trains the Elman RNN, LSTM and GRU on the cue-at-distance task at growing "
                       "lags and prints the comparison table (plot saved as PNG); 2) trains a small character "
                       "LSTM on Shakespeare for a few hundred steps and prints text it generates.  About five "
                       "minutes on two CPU cores.")
    p.add_argument("--out", default="runs/demo", help="where the table, plot and checkpoints go")
    p.add_argument("--lags", default="5,20", help="comma-separated lags of the comparison")
    p.add_argument("--lm-steps", type=int, default=120, help="training steps of the char LSTM")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="comparison runs in parallel")
    p.add_argument("--skip-lm", action="store_true", help="only the comparison")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from rnnlab.compare import GridSpec, compare
    from rnnlab.models import ModelConfig
    from rnnlab.tasks.charlm import generate
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.runner import format_result, make_task, train_run

    try:
        lags = [int(v) for v in args.lags.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--lags: expected comma-separated integers, got {args.lags!r}") from None
    if args.lm_steps < 1 or args.jobs < 1:
        raise UserError(f"--lm-steps/--jobs: expected integers >= 1, got {args.lm_steps}/{args.jobs}")
    t0 = time.perf_counter()
    print("== 1. Memory across a lag: 'I grew up in France ... I speak fluent ___' ==", flush=True)
    spec = GridSpec(task="cue", cells=["rnn", "lstm", "gru"], lags=lags, seeds=[0],
                    task_options={"n_train": 4000, "n_countries": 4, "n_val": 300, "n_test": 300},
                    model={"hidden_size": 32, "embedding_dim": 16}, cell_options={"lstm": {"forget_bias": 1.0}},
                    train={"epochs": 8, "batch_size": 32, "lr": 1e-2})
    rows, files = compare(spec, os.path.join(args.out, "compare"), jobs=args.jobs,
                          log=lambda s: print(s, flush=True))
    print()
    print(files["table"].read_text(encoding="utf-8"))
    print("plot: " + str(files.get("plot", "(matplotlib not installed)")), flush=True)
    print(f"[{time.perf_counter() - t0:.0f}s]")
    if args.skip_lm:
        return 0

    print("\n== 2. A character LSTM on Shakespeare ==", flush=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    options = {"max_chars": 400_000}
    try:
        task = make_task("charlm", options)
    except (ValueError, TypeError) as e:
        raise UserError(f"charlm: {e}") from None
    model_cfg = ModelConfig(cell="lstm", hidden_size=128, embedding_dim=32)
    train_cfg = TrainConfig(epochs=1, max_steps=args.lm_steps, batch_size=32, bptt=64, lr=4e-3, clip_norm=1.0,
                            eval_every=args.lm_steps, schedule="cosine", warmup_steps=20)
    lm_dir = os.path.join(args.out, "charlm")
    import shutil

    shutil.rmtree(lm_dir, ignore_errors=True)
    result = train_run("charlm", options, model_cfg, train_cfg, run_dir=lm_dir, task=task, quiet=False)
    print(format_result(result))
    from rnnlab.train.checkpoint import load_model

    model, _ = load_model(lm_dir)
    text = generate(model, task, "ROMEO:\n", 300, temperature=0.7, top_k=10, generator=torch.Generator().manual_seed(0))
    print("\n--- generated (prime 'ROMEO:') ---\nROMEO:\n" + text + "\n---")
    print(f"demo finished in {time.perf_counter() - t0:.0f}s; outputs in {args.out}")
    return 0
