"""`rnnlab train`: train a model on a task, with checkpoints, metric logs, --resume and torchrun DDP."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from rnnlab.cli import UserError

#: CLI flag -> (section, field) of the JSON config; every one defaults to None so --config can fill it
MODEL_FLAGS = {"cell": "cell", "hidden_size": "hidden_size", "num_layers": "num_layers",
               "embedding_dim": "embedding_dim", "dropout": "dropout", "recurrent_dropout": "recurrent_dropout",
               "zoneout": "zoneout", "bidirectional": "bidirectional", "backend": "backend"}
TRAIN_FLAGS = {"epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size", "bptt": "bptt",
               "optimizer": "optimizer", "lr": "lr", "momentum": "momentum", "weight_decay": "weight_decay",
               "schedule": "schedule", "warmup": "warmup_steps", "step_size": "step_size", "gamma": "gamma",
               "clip_norm": "clip_norm", "eval_every": "eval_every", "patience": "patience",
               "checkpoint_every": "checkpoint_every", "keep": "keep_checkpoints", "log_every": "log_every",
               "seed": "seed", "threads": "threads"}
#: task options with their own flag (others go through --option KEY=VALUE)
TASK_FLAGS = {"lag": "lag", "text": "path", "window": "window", "works": "works", "max_chars": "max_chars",
              "n_train": "n_train"}


def parse_key_values(pairs: list[str] | None, what: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a malformed item is a UserError naming it."""
    out: dict[str, str] = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--cell", help="recurrent cell name (see `rnnlab cells`; default lstm)")
    g.add_argument("--hidden-size", type=int, help="units per layer (default 128)")
    g.add_argument("--num-layers", type=int, help="stacked recurrent layers (default 1)")
    g.add_argument("--embedding-dim", type=int, help="token embedding width for token tasks (default 64)")
    g.add_argument("--dropout", type=float, help="dropout between stacked layers, in [0, 1) (default 0)")
    g.add_argument("--recurrent-dropout", type=float,
                   help="variational dropout on h where it enters the recurrent weights, in [0, 1) (default 0)")
    g.add_argument("--zoneout", type=float, help="zoneout probability for h and c, in [0, 1) (default 0)")
    g.add_argument("--bidirectional", action="store_true", default=None,
                   help="run a second layer over reversed time (not for per-step LM tasks)")
    g.add_argument("--cell-option", action="append", metavar="KEY=VALUE",
                   help="extra cell option, e.g. peepholes=if or reset_after=false (repeatable)")
    g.add_argument("--backend", help="kernel backend: auto (default), reference or a registered name")


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, help="passes over the training split (default 10)")
    g.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    g.add_argument("--batch-size", type=int, help="global batch size; split across ranks under torchrun (default 32)")
    g.add_argument("--bptt", type=int,
                   help="truncated BPTT chunk length for stream tasks (charlm): the state is carried across "
                        "chunks and the gradient cut between them")
    g.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "rmsprop"], help="optimiser (default adam)")
    g.add_argument("--lr", type=float, help="peak learning rate, in (0, 10] (default 1e-3)")
    g.add_argument("--momentum", type=float, help="momentum of sgd / rmsprop, in [0, 1] (default 0.9)")
    g.add_argument("--weight-decay", type=float, help="L2 (adam, sgd, rmsprop) or decoupled (adamw) decay")
    g.add_argument("--schedule", choices=["constant", "cosine", "step"], help="lr schedule after warm-up "
                   "(default constant)")
    g.add_argument("--warmup", type=int, help="linear lr warm-up steps (default 0)")
    g.add_argument("--step-size", type=int, help="step schedule: decay every this many steps (default 1000)")
    g.add_argument("--gamma", type=float, help="step schedule: decay factor in (0, 1] (default 0.5)")
    g.add_argument("--clip-norm", type=float, help="clip the gradient's global norm; 0 disables (default 1.0)")
    g.add_argument("--eval-every", type=int, help="validate every N steps; 0 = after each epoch (default 0)")
    g.add_argument("--patience", type=int,
                   help="early stopping: stop after N validations without improvement; 0 = never (default 0)")
    g.add_argument("--checkpoint-every", type=int,
                   help="also checkpoint every N steps (a checkpoint follows every validation anyway)")
    g.add_argument("--keep", type=int, help="step checkpoints to keep besides the best (default 2)")
    g.add_argument("--log-every", type=int, help="log the training loss every N steps (default 10)")
    g.add_argument("--seed", type=int, help="seed of weights, shuffling and dropout (default 0)")
    g.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice)")
    g.add_argument("--nondeterministic", action="store_true",
                   help="do not call torch.use_deterministic_algorithms (deterministic is the default)")


def add_task_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task options (see `rnnlab train --list-tasks`)")
    g.add_argument("--lag", type=int, help="synthetic tasks: distance the memory must span")
    g.add_argument("--text", metavar="PATH", help="charlm: train on this UTF-8 text file instead of Shakespeare")
    g.add_argument("--works", help="charlm: comma-separated Shakespeare works (e.g. hamlet,macbeth)")
    g.add_argument("--max-chars", type=int, help="charlm: keep only the first N characters of the text")
    g.add_argument("--window", type=int, help="forecast tasks: past steps the model sees")
    g.add_argument("--n-train", type=int, help="synthetic tasks: number of training sequences")
    g.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                   help="any other task option, e.g. -o n_countries=4 (repeatable)")


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="train a model on a task", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train a SequenceModel (embedding -> recurrent cell stack -> head) on a task. "
                       "Writes checkpoints (safetensors + JSON), metrics.jsonl/.csv and results.json to --out. "
                       "Under `torchrun --nproc_per_node N rnnlab train ...` it trains data-parallel (gloo); "
                       "each rank takes its shard of every global batch and only rank 0 writes.",
                       epilog="example: rnnlab train cue --lag 20 --cell lstm --hidden-size 64 --epochs 5 "
                              "--out runs/cue-lstm")
    p.add_argument("task", nargs="?", help="task name (adding, copy, cue, charlm, weather, ...; --list-tasks)")
    p.add_argument("--list-tasks", action="store_true", help="print the task names and exit")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/TASK-CELL-sSEED)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint with its saved settings "
                        "(--epochs/--max-steps may extend it); gives the same result as an uninterrupted run")
    p.add_argument("--config", metavar="JSON", help='file with {"task": {"name", "options"}, "model": {...}, '
                   '"train": {...}}; command-line flags override it')
    p.add_argument("--quiet", "-q", action="store_true", help="print only the final result")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    add_task_args(p)
    add_model_args(p)
    add_train_args(p)
    p.set_defaults(func=run)


def _read_config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--config: no such file {path!r}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--config: cannot read {path!r} ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--config: {path!r} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") \
            from None
    if not isinstance(data, dict) or not set(data) <= {"task", "model", "train"}:
        raise UserError(f"--config: {path!r} must be a JSON object with keys among task, model, train; "
                        f"got {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    for key in ("model", "train"):
        if not isinstance(data.get(key, {}), dict):
            raise UserError(f"--config: {key!r} in {path!r} must be a JSON object")
    return data


def _coerce_bool(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0"):
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def build_configs(args: argparse.Namespace) -> tuple[str, dict[str, Any], Any, Any]:
    """(task name, task options, ModelConfig, TrainConfig) from --config plus flags; UserError on bad values."""
    from rnnlab.cells import cell_names
    from rnnlab.models import ModelConfig
    from rnnlab.train.config import TrainConfig

    data = _read_config(getattr(args, "config", None))
    task_cfg = data.get("task", {})
    if isinstance(task_cfg, str):
        task_cfg = {"name": task_cfg}
    task_name = args.task or task_cfg.get("name")
    if not task_name:
        raise UserError("task: missing; give a task name (e.g. `rnnlab train cue`) or --config with task.name")
    options = dict(task_cfg.get("options", {}))
    for flag, key in TASK_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            options[key] = value
    if "path" in options and isinstance(options["path"], str):
        options["path"] = os.path.abspath(options["path"])  # eval/generate may run from elsewhere
    options.update(parse_key_values(getattr(args, "option", None), "--option"))

    model = dict(data.get("model", {}))
    for flag, key in MODEL_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            model[key] = value
    cell_opts = {k: _coerce_bool(v) for k, v in parse_key_values(getattr(args, "cell_option", None),
                                                                 "--cell-option").items()}
    if cell_opts:
        model["cell_options"] = {**model.get("cell_options", {}), **cell_opts}
    cell = model.get("cell", "lstm")
    if cell not in cell_names():
        raise UserError(f"--cell: unknown cell {cell!r}; expected one of {', '.join(cell_names())}")
    train = dict(data.get("train", {}))
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            train[key] = value
    if getattr(args, "nondeterministic", False):
        train["deterministic"] = False
    try:
        model_config = ModelConfig.from_dict(model)
        for name in ("hidden_size", "num_layers", "embedding_dim"):
            v = getattr(model_config, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        for name in ("dropout", "recurrent_dropout", "zoneout"):
            v = getattr(model_config, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1 or math.isnan(v):
                raise ValueError(f"{name}: expected a probability in [0, 1), got {v!r}")
        train_config = TrainConfig.from_dict(train)
    except (TypeError, ValueError) as e:
        raise UserError(f"--{str(e).split(':')[0].replace('_', '-')}: {str(e).split(':', 1)[-1].strip()}"
                        if ":" in str(e) else str(e)) from None
    return task_name, options, model_config, train_config


def run(args: argparse.Namespace) -> int:
    from rnnlab.models import ModelConfig
    from rnnlab.train import checkpoint as ckpt
    from rnnlab.train import distributed as dd
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.runner import format_result, make_task, train_run
    from rnnlab.train.trainer import TrainingDiverged

    if args.list_tasks:
        from rnnlab.tasks import task_names

        print("\n".join(task_names()))
        return 0
    if args.resume:
        if not args.out:
            raise UserError("--resume: needs --out RUN_DIR (the run to continue)")
        # the saved run decides task, model and training; only its length may be extended
        try:
            saved = ckpt.load_checkpoint(args.out, "latest").config
        except ckpt.CheckpointError as e:
            raise UserError(f"--resume: {e}") from None
        task_name, options = saved["task"]["name"], saved["task"]["options"]
        model_config = ModelConfig.from_dict(saved["model"])
        length = {k: v for k, v in (("epochs", args.epochs), ("max_steps", args.max_steps)) if v is not None}
        try:
            train_config = TrainConfig(**length).validate()
        except (TypeError, ValueError) as e:
            raise UserError(f"--{str(e).replace('_', '-')}") from None
    else:
        task_name, options, model_config, train_config = build_configs(args)
    out = args.out or f"runs/{task_name}-{model_config.cell}-s{train_config.seed}"
    if not args.resume and (Path(out) / "checkpoints").exists():
        raise UserError(f"--out: {out!r} already holds a run; pass --resume to continue it or choose another --out")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        task = make_task(task_name, options)
    except (TypeError, ValueError) as e:
        raise UserError(f"task {task_name!r}: {e}") from None
    info = dd.init_from_env()
    try:
        result = train_run(task_name, options, model_config, train_config, run_dir=out, resume=args.resume,
                           quiet=args.quiet, progress=not args.no_progress, dist_info=info, task=task,
                           overrides=length if args.resume else None)
    except TrainingDiverged as e:
        raise UserError(str(e)) from None
    except ckpt.CheckpointError as e:
        raise UserError(str(e)) from None
    finally:
        if info.enabled:
            import torch.distributed as tdist

            tdist.destroy_process_group()
    if info.is_main:
        print(format_result(result))
        print(f"run directory: {out}")
    return 0
