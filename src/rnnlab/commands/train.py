"""`rnnlab train`: train a model on a task, with checkpoints, metric logs, --resume and torchrun DDP."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rnnlab.cli import UserError
from rnnlab.train.device import DeviceUnavailable

#: CLI flag -> (section, field) of the JSON config; every one defaults to None so --config can fill it
MODEL_FLAGS = {"cell": "cell", "hidden_size": "hidden_size", "num_layers": "num_layers",
               "embedding_dim": "embedding_dim", "dropout": "dropout", "recurrent_dropout": "recurrent_dropout",
               "zoneout": "zoneout", "weight_drop": "weight_drop", "bidirectional": "bidirectional",
               "backend": "backend", "tie_embeddings": "tie_embeddings"}
TRAIN_FLAGS = {"epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size", "bptt": "bptt",
               "optimizer": "optimizer", "lr": "lr", "momentum": "momentum", "weight_decay": "weight_decay",
               "schedule": "schedule", "warmup": "warmup_steps", "step_size": "step_size", "gamma": "gamma",
               "clip_norm": "clip_norm", "eval_every": "eval_every", "patience": "patience",
               "checkpoint_every": "checkpoint_every", "keep": "keep_checkpoints", "log_every": "log_every",
               "seed": "seed", "threads": "threads", "device": "device", "precision": "precision"}
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
    g.add_argument("--weight-drop", type=float,
                   help="DropConnect on the hidden-to-hidden weights (AWD-LSTM), in [0, 1) (default 0)")
    g.add_argument("--tie-embeddings", action="store_true", default=None,
                   help="share the embedding matrix with the output layer (language models; Press & Wolf 2017)")
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
    g.add_argument("--device", help="auto (a CUDA GPU when one is visible, else the CPU), cpu or cuda (default auto)")
    g.add_argument("--precision", help="fp32, bf16 or fp16: autocast compute, fp16 with loss scaling (default fp32)")
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


def _flag_of(field: str) -> str | None:
    """``"model.hidden_size"`` -> ``"--hidden-size"``; ``"task.n_val"`` -> ``"--option n_val"``; else ``None``."""
    section, _, name = field.partition(".")
    name, _, sub = name.partition(".")
    table = {"model": MODEL_FLAGS, "train": TRAIN_FLAGS, "task": TASK_FLAGS}.get(section, {})
    flag = next((f for f, key in table.items() if key == name), None)
    if flag is not None:
        return "--" + flag.replace("_", "-")
    if field.startswith("model.cell_options"):
        return "--cell-option" + (f" {sub}" if sub else "")
    if section == "task" and name and name not in ("name", "options"):
        return f"--option {name}"
    return None


def config_user_error(e: Any, from_flags: set[str], source: str | None) -> UserError:
    """A :class:`ConfigError` as a UserError naming the flag of the field, and the file when it came from one."""
    flag = _flag_of(e.field)
    section, _, rest = e.field.partition(".")
    given = e.field in from_flags or f"{section}.{rest.split('.')[0]}" in from_flags
    if flag is None:
        return UserError(f"{source}: {e.field}: {e.detail}" if source else str(e))
    if given or source is None:
        return UserError(f"{flag}: {e.detail}")
    return UserError(f"{flag}: {e.detail} (from {source}, {e.field})")


def build_configs(args: argparse.Namespace) -> tuple[str, dict[str, Any], Any, Any]:
    """(task name, task options, ModelConfig, TrainConfig) from --config plus flags; UserError on bad values."""
    from rnnlab.train.config import ConfigError, run_config_from_dict

    source = f"--config {args.config}" if getattr(args, "config", None) else None
    data = _read_config(getattr(args, "config", None))
    task_cfg = data.get("task", {})
    if isinstance(task_cfg, str):
        task_cfg = {"name": task_cfg}
    if not isinstance(task_cfg, dict):
        raise UserError(f"{source}: task: expected a task name or a JSON object with name and options, "
                        f"got {task_cfg!r}")
    task_name = args.task or task_cfg.get("name")
    if not task_name:
        raise UserError("task: missing; give a task name (e.g. `rnnlab train cue`) or --config with task.name")
    options = task_cfg.get("options", {})
    if not isinstance(options, dict):
        raise UserError(f"{source}: task.options: expected a JSON object, got {options!r}")
    options = dict(options)
    from_flags: set[str] = set() if not args.task else {"task.name"}
    for flag, key in TASK_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            options[key] = value
            from_flags.add(f"task.{key}")
    if isinstance(options.get("path"), str) and options["path"]:
        options["path"] = os.path.abspath(options["path"])  # eval/generate may run from elsewhere
    extra = parse_key_values(getattr(args, "option", None), "--option")
    options.update(extra)
    from_flags.update(f"task.{k}" for k in extra)

    model = dict(data.get("model", {}))
    for flag, key in MODEL_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            model[key] = value
            from_flags.add(f"model.{key}")
    cell_opts = {k: _coerce_bool(v) for k, v in parse_key_values(getattr(args, "cell_option", None),
                                                                 "--cell-option").items()}
    if cell_opts:
        saved_opts = model.get("cell_options", {})
        if not isinstance(saved_opts, dict):
            raise UserError(f"{source}: model.cell_options: expected a JSON object, got {saved_opts!r}")
        model["cell_options"] = {**saved_opts, **cell_opts}
        from_flags.update(f"model.cell_options.{k}" for k in cell_opts)
    train = dict(data.get("train", {}))
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            train[key] = value
            from_flags.add(f"train.{key}")
    if getattr(args, "nondeterministic", False):
        train["deterministic"] = False
    try:
        run = run_config_from_dict({"task": {"name": task_name, "options": options}, "model": model,
                                    "train": train})
    except ConfigError as e:
        if e.field == "task.name" and "task.name" in from_flags:
            raise UserError(f"task: unknown {task_name!r}; {e.detail.split('; ', 1)[-1]}") from None
        raise config_user_error(e, from_flags, source) from None
    return run.task, options, run.model, run.train


def _check_out(out: str) -> None:
    """--out must name a directory (or nothing yet): not an empty string, not a file."""
    if not out.strip():
        raise UserError(f"--out: expected a run directory, got {out!r}")
    try:
        if Path(out).exists() and not Path(out).is_dir():
            raise UserError(f"--out: {out!r} is a file, expected a run directory")
    except ValueError:  # e.g. a NUL byte in the name
        raise UserError(f"--out: not a valid path, got {out!r}") from None


def _has_checkpoint(out: str) -> bool:
    """Whether --out holds a completed checkpoint (a run killed during its first write holds none)."""
    from rnnlab.train import checkpoint as ckpt

    try:
        return Path(out).is_dir() and ckpt.has_completed_checkpoint(out)
    except ckpt.CheckpointError as e:
        raise UserError(f"--out: {e}") from None


def run(args: argparse.Namespace) -> int:
    from rnnlab.train import checkpoint as ckpt
    from rnnlab.train import distributed as dd
    from rnnlab.train.config import (ConfigError, TrainConfig, check_model_io, check_run_fits, check_weights_fit,
                                      config_error_from, run_config_from_dict)
    from rnnlab.train.datafiles import is_data_option, task_spec_from_checkpoint
    from rnnlab.train.runner import format_result, make_task, train_run
    from rnnlab.train.trainer import TrainingDiverged

    if args.list_tasks:
        from rnnlab.tasks import task_names

        print("\n".join(task_names()))
        return 0
    if args.out is not None:
        _check_out(args.out)
    if args.resume and args.out and Path(args.out).is_dir() and not _has_checkpoint(args.out):
        # killed before its first checkpoint: nothing to continue, never a dead end
        if not (args.task or args.config):
            raise UserError(f"--resume: {args.out!r} has no completed checkpoint yet (the run was stopped before "
                            f"its first one); start it again: `rnnlab train TASK [options] --out {args.out}` "
                            f"(with or without --resume)")
        print(f"rnnlab train: {args.out!r} has no completed checkpoint yet (stopped before its first one); "
              f"starting the run from scratch", file=sys.stderr)
        args.resume = False
    if args.resume:
        if not args.out:
            raise UserError("--resume: needs --out RUN_DIR (the run to continue)")
        # the saved run decides task, model and training; only its length may be extended
        try:
            saved = ckpt.load_checkpoint(args.out, "latest")
        except ckpt.CheckpointError as e:
            raise UserError(f"--resume: {e}") from None
        source = f"--resume: {saved.path / ckpt.CONFIG_FILE}"
        try:
            run_cfg = run_config_from_dict(saved.config, saved=True)
        except ConfigError as e:
            raise UserError(f"{source}: {e} (the saved config was edited or damaged)") from None
        task_name, options, model_config = run_cfg.task, run_cfg.options, run_cfg.model
        try:  # a text-file task: the user names the file again (--text), the saved path is never opened
            spec = task_spec_from_checkpoint(saved.config, args.text, flag="--text")
        except ckpt.CheckpointError as e:
            raise UserError(f"--resume: {e}") from None
        options = {**options, **{k: v for k, v in spec["options"].items() if is_data_option(k)}}
        length = {k: v for k, v in (("epochs", args.epochs), ("max_steps", args.max_steps)) if v is not None}
        flags = {f"train.{k}" for k in length}
        try:
            if args.threads is not None:
                TrainConfig(threads=args.threads).validate()
                flags.add("train.threads")
            train_config = TrainConfig.from_dict({**run_cfg.train.to_dict(), **length})
        except (TypeError, ValueError) as e:
            raise config_user_error(config_error_from("train", e), flags, source) from None
    else:
        task_name, options, model_config, train_config = build_configs(args)
    out = args.out or f"runs/{task_name}-{model_config.cell}-s{train_config.seed}"
    args.out = out  # the CLI's resource-failure message says what this directory kept
    if not args.resume and _has_checkpoint(out):
        raise UserError(f"--out: {out!r} already holds a run; pass --resume to continue it or choose another --out")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        task = make_task(task_name, options)
    except (TypeError, ValueError) as e:
        raise UserError(f"task {task_name!r}: {e}") from None
    try:
        if args.resume:
            check_model_io(saved.config, task)
            check_weights_fit(task, model_config, saved.model_state)
        check_run_fits(task, model_config, train_config)
    except ConfigError as e:
        if args.resume:
            raise UserError(f"{source}: {e}") from None
        raise config_user_error(e, {f"train.{k}" for k in ("bptt", "batch_size")}, None) from None
    import torch

    # NCCL between GPUs, gloo on the CPU
    on_gpu = train_config.device != "cpu" and torch.cuda.is_available()
    info = dd.init_from_env("nccl" if on_gpu else "gloo")
    try:
        result = train_run(task_name, options, model_config, train_config, run_dir=out, resume=args.resume,
                           quiet=args.quiet, progress=not args.no_progress, dist_info=info, task=task,
                           overrides=length if args.resume else None, data=args.text if args.resume else None)
    except TrainingDiverged as e:
        raise UserError(str(e)) from None
    except ckpt.CheckpointError as e:
        raise UserError(str(e)) from None
    except DeviceUnavailable as e:  # e.g. --device cuda on a machine without a GPU
        raise UserError(f"--{e}") from None
    finally:
        if info.enabled:
            import torch.distributed as tdist

            tdist.destroy_process_group()
    if info.is_main:
        print(format_result(result))
        print(f"run directory: {out}")
    return 0
