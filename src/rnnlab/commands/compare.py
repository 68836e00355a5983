"""`rnnlab compare`: sweep cells x lags x seeds on a long-lag task -> Markdown table + PNG plot."""

from __future__ import annotations

import argparse
import os

from rnnlab.cli import UserError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="compare cells across lags (table + plot)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train every cell at every lag (and seed) on a long-lag task and report the "
                       "test metric: a Markdown table (results.md), a plot of the metric vs lag per cell "
                       "(plot.png) and all rows (results.json) in --out.  Shows how the plain Elman RNN falls "
                       "to chance as the lag grows while gated cells keep their memory.",
                       epilog="example: rnnlab compare --cells rnn,lstm,gru --lags 5,20,40 --seeds 0,1 "
                              "--out runs/compare")
    p.add_argument("--task", default="cue", help="a task with a lag option: cue, copy or adding")
    p.add_argument("--preset", choices=["greff"],
                   help="a whole study instead of a lag sweep: 'greff' trains the vanilla LSTM and Greff et al.'s "
                        "eight variants on JapaneseVowels and Shakespeare characters (--seeds, --jobs, --threads, "
                        "--out still apply; the other settings are the preset's, see rnnlab.compare.GREFF_STUDY)")
    p.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated cell names (see `rnnlab cells`)")
    p.add_argument("--lags", type=_int_list, default=[5, 10, 20], help="comma-separated lags")
    p.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated seeds (mean ± std in the table)")
    p.add_argument("--hidden-size", type=int, default=32, help="units of every model")
    p.add_argument("--embedding-dim", type=int, default=16, help="token embedding width")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per run")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per run")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--n-train", type=int, default=4000, help="training sequences per run")
    p.add_argument("--forget-bias", type=float, default=2.0,
                   help="initial forget-gate bias of LSTM-family cells (Gers et al. 2000; Jozefowicz et al. "
                        "2015 use 1): with 1 and lr 1e-2 the LSTM often misses the cue at lag 20, with 2 it "
                        "keeps its cell from the first step")
    p.add_argument("--option", "-o", action="append", metavar="KEY=VALUE", help="extra task option (repeatable)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default="runs/compare", help="output directory")
    p.set_defaults(func=run)


#: config field -> the compare flag that sets it (for one-line errors naming the option)
FIELD_FLAGS = {"model.cell": "--cells", "model.hidden_size": "--hidden-size", "model.embedding_dim": "--embedding-dim",
               "model.cell_options.forget_bias": "--forget-bias", "train.epochs": "--epochs",
               "train.batch_size": "--batch-size", "train.lr": "--lr", "train.seed": "--seeds",
               "train.threads": "--threads", "task.lag": "--lags", "task.n_train": "--n-train", "task.name": "--task"}


def _check_grid(args: argparse.Namespace, cells: list[str], options: dict) -> None:
    """Every grid point's config is valid (checked without building data or weights); UserError naming the flag."""
    from rnnlab.train.config import ConfigError, run_config_from_dict, task_options_checked

    lstm_like = {"lstm", "peephole", "cifg"}
    try:
        if not cells:
            raise ConfigError("model.cell", f"expected at least one cell name, got {args.cells!r}")
        for i, cell in enumerate(cells):
            run_config_from_dict({
                "task": {"name": args.task, "options": {**options, "lag": args.lags[0]}},
                "model": {"hidden_size": args.hidden_size, "embedding_dim": args.embedding_dim, "cell": cell,
                          "cell_options": {"forget_bias": args.forget_bias} if cell in lstm_like else {}},
                "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                          "seed": args.seeds[i % len(args.seeds)], "threads": args.threads}})
        for lag in args.lags[1:]:
            task_options_checked(args.task, {**options, "lag": lag})
        for seed in args.seeds:
            run_config_from_dict({"task": {"name": args.task, "options": options}, "train": {"seed": seed}})
    except ConfigError as e:
        flag = FIELD_FLAGS.get(e.field) or (f"--option {e.field.split('.', 1)[1]}" if e.field.startswith("task.")
                                            else e.field)
        raise UserError(f"{flag}: {e.detail}") from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rnnlab.commands.train import parse_key_values
    from rnnlab.compare import GridSpec

    for flag in ("hidden_size", "embedding_dim", "epochs", "batch_size", "n_train", "jobs", "threads"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: expected an integer >= 1, got {getattr(args, flag)}")
    if args.jobs > (os.cpu_count() or 1) * 4:
        raise UserError(f"--jobs: expected at most {(os.cpu_count() or 1) * 4} parallel runs on this machine, "
                        f"got {args.jobs}")
    if not args.out.strip() or Path(args.out).is_file():
        raise UserError(f"--out: expected an output directory, got {args.out!r}")
    if args.preset:
        return _run_preset(args)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    options = {"n_train": args.n_train, **parse_key_values(args.option, "--option")}
    _check_grid(args, cells, options)
    lstm_like = {"lstm", "peephole", "cifg"}
    spec = GridSpec(task=args.task, cells=cells, lags=args.lags, seeds=args.seeds, task_options=options,
                    model={"hidden_size": args.hidden_size, "embedding_dim": args.embedding_dim},
                    cell_options={c: {"forget_bias": args.forget_bias} for c in cells if c in lstm_like},
                    train={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr})
    try:
        spec.validate()
        from rnnlab.train.runner import make_task

        make_task(args.task, {**options, "lag": args.lags[0], "n_train": 2, "n_val": 2, "n_test": 2})
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    n = len(spec.runs())
    print(f"compare: {n} runs on {args.task} ({len(cells)} cells x {len(args.lags)} lags x {len(args.seeds)} "
          f"seeds), {args.jobs} in parallel", flush=True)
    return _run_and_report(spec, args)


def _run_preset(args: argparse.Namespace) -> int:
    """A whole study (cells x tasks x seeds) with the preset's settings; only seeds, jobs, threads and out vary."""
    import dataclasses

    from rnnlab.compare import GREFF_STUDY

    seeds = args.seeds if args.seeds != [0] else GREFF_STUDY.seeds  # the parser's default: keep the preset's
    spec = dataclasses.replace(GREFF_STUDY, seeds=seeds).validate()
    print(f"compare --preset {args.preset}: {len(spec.runs())} runs ({len(spec.cells)} cells x {len(spec.tasks)} "
          f"tasks x {len(seeds)} seeds), {args.jobs} in parallel", flush=True)
    return _run_and_report(spec, args)


def _run_and_report(spec, args: argparse.Namespace) -> int:
    """Run the grid (one log line per finished run), then print its table and the files written."""
    from rnnlab.compare import compare

    rows, files = compare(spec, args.out, jobs=args.jobs, threads=args.threads, log=lambda s: print(s, flush=True))
    print()
    print(files["table"].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in files.values()))
    return 0
