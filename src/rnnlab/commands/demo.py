"""`rnnlab demo` (`make demo`): RNN vs LSTM vs GRU at a lag, a Shakespeare char LSTM, translation, inspection."""

from __future__ import annotations

import argparse
import os
import shutil
import time

from rnnlab.cli import UserError

#: the comparison of part 1; chosen so that on 2 CPU cores the Elman RNN is at chance at lag 20 while the
#: LSTM (forget bias 2: it keeps its cell from the first step) and the GRU (epoch 4-5) reach accuracy 1.0
CUE_OPTIONS = {"n_countries": 4, "n_train": 4000, "n_val": 300, "n_test": 300}
CUE_MODEL = {"hidden_size": 32, "embedding_dim": 16}
CUE_TRAIN = {"epochs": 8, "batch_size": 32, "lr": 1e-2}
LSTM_FORGET_BIAS = 2.0
#: the first million characters of the Shakespeare texts (All's Well That Ends Well to Hamlet in
#: alphabetical order, then the start of Henry IV Part 1), whose speaker lines look like "KING." (so the prime is one of them)
LM_OPTIONS = {"max_chars": 1_000_000}
#: part 3: a small attention encoder-decoder from spelling to pronunciation (CMUdict), tens of seconds
G2P_ARGS = ["-o", "max_train=1000", "-o", "max_eval=200", "--cell", "gru", "--hidden-size", "64", "--embedding-dim",
            "32", "--bidirectional", "--epochs", "3", "--lr", "0.005"]
#: written into --out by the demo: only a folder holding it is one the demo may write over
MARKER = ".rnnlab-demo"


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="the five-minute tour (make demo)", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="1) trains the Elman RNN, LSTM and GRU on the cue-at-distance task "
                       "('i grew up in france . <lag filler words> so i speak fluent' -> french; 4 countries, "
                       "chance 0.25) at growing lags and prints the comparison table (plot saved as PNG); "
                       "2) trains a small character LSTM on Shakespeare and prints text it generates; "
                       "3) trains a small attention encoder-decoder from spelling to pronunciation (CMUdict) and "
                       "translates a few words; 4) writes the character LSTM's inspection page (gates, cell "
                       "states, gradient flow) and prints its path.  About five minutes on two CPU cores.")
    p.add_argument("--out", default="runs/demo", help="where the table, plot and checkpoints go")
    p.add_argument("--lags", default="5,10,20", help="comma-separated lags of the comparison")
    p.add_argument("--lm-steps", type=int, default=1800, help="training steps of the char LSTM (batch 32 x 64 chars)")
    p.add_argument("--lm-hidden", type=int, default=256, help="units of the char LSTM")
    p.add_argument("--prime", default="KING.", help="the speaker line the generated text starts from")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="comparison runs in parallel")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the char LSTM (its matrices are small: more threads gain little "
                        "and lose a lot when the cores are shared)")
    p.add_argument("--skip-lm", action="store_true", help="only the comparison")
    p.add_argument("--translate", default="hello world recurrent network",
                   help="the words the small translation model pronounces")
    p.add_argument("--force", action="store_true",
                   help="write into --out even if it exists and is not an earlier demo's output (its charlm/ and "
                        "compare/ results are replaced)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from rnnlab.compare import GridSpec, compare
    from rnnlab.models import ModelConfig
    from rnnlab.tasks.charlm import generate
    from rnnlab.train.checkpoint import load_model
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.runner import format_result, make_task, train_run

    try:
        lags = [int(v) for v in args.lags.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--lags: expected comma-separated integers, got {args.lags!r}") from None
    if not lags or min(lags) < 0:
        raise UserError(f"--lags: expected integers >= 0, got {args.lags!r}")
    for flag in ("lm_steps", "lm_hidden", "jobs", "threads"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: expected an integer >= 1, got {getattr(args, flag)}")
    if not args.prime:
        raise UserError("--prime: expected a non-empty string, got ''")
    claim_out_dir(args.out, args.force)
    t0 = time.perf_counter()
    print("== 1. Memory across a lag: 'i grew up in france . <lag words> so i speak fluent ___' ==", flush=True)
    spec = GridSpec(task="cue", cells=["rnn", "lstm", "gru"], lags=lags, seeds=[0], task_options=dict(CUE_OPTIONS),
                    model=dict(CUE_MODEL), cell_options={"lstm": {"forget_bias": LSTM_FORGET_BIAS}},
                    train=dict(CUE_TRAIN))
    rows, files = compare(spec, os.path.join(args.out, "compare"), jobs=args.jobs,
                          log=lambda s: print(s, flush=True))
    print()
    print(files["table"].read_text(encoding="utf-8"))
    print("plot: " + str(files.get("plot", "(matplotlib not installed)")), flush=True)
    t_compare = time.perf_counter() - t0
    print(f"[comparison: {t_compare:.0f}s]")
    if args.skip_lm:
        print(f"demo finished in {t_compare:.0f}s; outputs in {args.out}")
        return 0

    print(f"\n== 2. A character LSTM on Shakespeare ({args.lm_steps} steps) ==", flush=True)
    t1 = time.perf_counter()
    try:
        task = make_task("charlm", LM_OPTIONS)
    except (ValueError, TypeError) as e:
        raise UserError(f"charlm: {e}") from None
    model_cfg = ModelConfig(cell="lstm", hidden_size=args.lm_hidden, embedding_dim=32)
    train_cfg = TrainConfig(epochs=100, max_steps=args.lm_steps, batch_size=32, bptt=64, lr=4e-3, clip_norm=1.0,
                            eval_every=args.lm_steps, schedule="cosine", warmup_steps=20, threads=args.threads)
    lm_dir = os.path.join(args.out, "charlm")
    # a fresh run, never a resumed one; --out holds the marker (claim_out_dir), so charlm/ is the demo's own
    _replace_own_dir(lm_dir)
    result = train_run("charlm", LM_OPTIONS, model_cfg, train_cfg, run_dir=lm_dir, task=task, quiet=False)
    print(format_result(result))
    model, _ = load_model(lm_dir)
    prime = args.prime if args.prime.endswith("\n") else args.prime + "\n"
    text = generate(model, task, prime, 400, temperature=0.7, top_k=10, generator=torch.Generator().manual_seed(0))
    print(f"\n--- generated (temperature 0.7) ---\n{prime}{text}\n---")
    t_lm = time.perf_counter() - t1

    from rnnlab.cli import main as rnnlab_cli  # parts 3 and 4 are the commands a user would type next

    print("\n== 3. Translation: spelling -> pronunciation, an attention encoder-decoder on CMUdict ==", flush=True)
    t2 = time.perf_counter()
    g2p_dir = os.path.join(args.out, "g2p")
    _replace_own_dir(g2p_dir)
    if rnnlab_cli(["train", "g2p", *G2P_ARGS, "--threads", str(args.threads), "--out", g2p_dir]) != 0:
        raise UserError("the translation part failed (its error is above)")
    print(f"$ rnnlab translate {g2p_dir} {args.translate!r}", flush=True)
    if rnnlab_cli(["translate", g2p_dir, args.translate]) != 0:
        raise UserError("--translate: the words could not be translated (the error is above)")
    t_g2p = time.perf_counter() - t2

    print("\n== 4. Inside the character LSTM: gates, cell states, gradient flow ==", flush=True)
    t3 = time.perf_counter()
    page_dir = os.path.join(lm_dir, "inspect")
    if rnnlab_cli(["inspect", lm_dir, "--out", page_dir]) != 0:
        raise UserError("the inspection part failed (its error is above)")
    print(f"open {os.path.join(page_dir, 'index.html')}")
    print(f"demo finished in {time.perf_counter() - t0:.0f}s (comparison {t_compare:.0f}s, char LSTM "
          f"{t_lm:.0f}s, translation {t_g2p:.0f}s, inspection {time.perf_counter() - t3:.0f}s); outputs in "
          f"{args.out}")
    return 0


def _replace_own_dir(path: str) -> None:
    """A fresh run directory under the demo's own --out (claim_out_dir checked it is the demo's)."""
    if os.path.islink(path):
        os.unlink(path)  # only the link, never what it points to
    shutil.rmtree(path, ignore_errors=True)


def claim_out_dir(out: str, force: bool) -> None:
    """Make ``out`` the demo's folder: refuse one that exists and was not made by an earlier demo (the
    demo replaces its charlm/ and compare/ results) unless ``force``; then mark it with :data:`MARKER`."""
    if not out.strip():
        raise UserError(f"--out: expected a directory name, got {out!r}")
    path = os.path.abspath(out)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"--out: {out!r} exists and is not a directory")
    ours = os.path.isfile(os.path.join(path, MARKER))
    if os.path.isdir(path) and os.listdir(path) and not ours and not force:
        raise UserError(f"--out: {out!r} exists and is not an earlier demo's output (no {MARKER} file in it); "
                        f"the demo replaces charlm/ and compare/ there: choose another --out or pass --force")
    os.makedirs(path, exist_ok=True)
    if not ours:
        with open(os.path.join(path, MARKER), "w", encoding="utf-8") as f:
            f.write("written by `rnnlab demo`: its next run may replace charlm/ and compare/ here\n")
