"""One training run end to end (task -> model -> Trainer -> test metrics), shared by train, compare and demo."""

from __future__ import annotations

import dataclasses

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.tasks.base import Task
from rnnlab.train import checkpoint as ckpt
from rnnlab.train import distributed as dd
from rnnlab.train.config import TrainConfig
from rnnlab.train.datafiles import task_spec_from_checkpoint, with_data_hashes
from rnnlab.train.hooks import Checkpointing, EarlyStopping, Hook
from rnnlab.train.metrics_log import MetricsLog, TensorBoard
from rnnlab.train.progress import Progress
from rnnlab.train.trainer import Trainer


def make_task(name: str, options: dict[str, Any]) -> Task:
    """Build a registered task (``rnnlab.tasks.make_task``); unknown names/options raise ``ValueError``."""
    from rnnlab.tasks import make_task as _make

    return _make(name, **options)


def build_model(task: Task, config: ModelConfig, seed: int) -> SequenceModel:
    """A SequenceModel sized for ``task``, initialised from ``seed`` (the same seed gives the same weights)."""
    torch.manual_seed(seed)
    custom = getattr(task, "build_model", None)
    if callable(custom):  # a task with its own architecture (g2p: a Seq2Seq, itself a SequenceModel)
        return custom(config)
    return SequenceModel(config, input_size=task.input_size, output_size=task.output_size, target=task.target,
                         vocab_size=task.vocab_size)


@dataclass
class RunResult:
    """What a run produced: metrics on the test split with the best weights, the baseline, timings."""

    task: str
    cell: str
    metric: str
    higher_is_better: bool
    test: dict[str, float]
    baseline: dict[str, float]
    best_val: float | None
    steps: int
    seconds: float
    run_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def train_run(task_name: str, task_options: dict[str, Any], model_config: ModelConfig, train_config: TrainConfig,
              *, run_dir: str | Path | None = None, resume: bool = False, quiet: bool = True,
              progress: bool = False, extra_hooks: Iterable[Hook] = (), task: Task | None = None,
              dist_info: dd.DistInfo | None = None, overrides: dict[str, Any] | None = None,
              data: str | Path | None = None) -> RunResult:
    """Train one model and evaluate its best weights on the test split.

    With ``run_dir`` the run writes checkpoints, ``metrics.jsonl``/``.csv`` and ``results.json`` there
    (rank 0 only); ``resume`` continues from its latest checkpoint with the saved configuration.  A task
    trained on a data file is resumed only with that file named again as ``data`` (its SHA-256 is checked;
    the path recorded in the checkpoint is never opened).
    """
    t0 = time.perf_counter()
    info = dist_info or dd.DistInfo()
    run_path = Path(run_dir) if run_dir is not None else None
    task_spec = with_data_hashes({"name": task_name, "options": dict(task_options)})
    if run_path is not None and info.is_main:
        ckpt.clean_stale_files(run_path)  # a killed write's leftovers (and the copy it was replacing) first
    if resume:
        if run_path is None:
            raise ValueError("resume: needs a run directory")
        saved = ckpt.load_checkpoint(run_path, "latest").config
        task_spec = task_spec_from_checkpoint(saved, data, flag="--text")
        model_config = ModelConfig.from_dict(saved["model"])
        train_config = TrainConfig.from_dict({**saved["train"], **(overrides or {})})
    train_config.validate()
    if task is None:
        task = make_task(task_spec["name"], task_spec["options"])
    model = build_model(task, model_config, train_config.seed)
    hooks: list[Hook] = []
    if train_config.patience:
        hooks.append(EarlyStopping(train_config.patience))
    if run_path is not None and info.is_main:
        hooks.append(MetricsLog(run_path))
        tb = TensorBoard.maybe(run_path)
        if tb is not None:
            hooks.append(tb)
    if run_path is not None:
        hooks.append(Checkpointing(train_config.checkpoint_every))
    if info.is_main and not quiet:
        hooks.append(Progress(enabled=progress))
    hooks.extend(extra_hooks)
    with Trainer(model, task, train_config, hooks=hooks, run_dir=run_path, task_spec=task_spec,
                 dist_info=info) as trainer:  # released before the caller destroys the process group
        if resume:
            trainer.resume(run_path)
        trainer.fit()
        if run_path is not None:
            dd.barrier(info)  # rank 0 has written the final checkpoint
            best = ckpt.load_checkpoint(run_path, "best")
            model.load_state_dict(best.model_state)
        test = trainer.evaluate("test")
    result = RunResult(task=task.name, cell=model_config.cell, metric=task.metric,
                       higher_is_better=task.higher_is_better, test=test, baseline=task.baseline("test"),
                       best_val=trainer.state.best_metric, steps=trainer.state.step,
                       seconds=time.perf_counter() - t0, run_dir=str(run_path) if run_path else None,
                       options=dict(task_spec["options"]), seed=train_config.seed)
    if run_path is not None and info.is_main:
        # strict JSON (no NaN tokens); a non-finite test metric is written as null rather than lost
        ckpt.atomic_write_text(run_path / "results.json",
                               json.dumps(_finite_or_none(result.to_dict()), indent=1, allow_nan=False))
    return result


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def task_from_checkpoint(config: dict[str, Any], data: str | Path | None = None,
                         flag: str = "--data") -> Task:
    """Rebuild a checkpoint's task without opening any file the checkpoint names (see
    :mod:`rnnlab.train.datafiles`): a task trained on a data file needs ``data``, with the recorded hash."""
    spec = task_spec_from_checkpoint(config, data, flag)
    return make_task(spec["name"], spec["options"])


def evaluate_checkpoint(path: str | Path, split: str = "test", data: str | Path | None = None,
                        ) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """``(metrics, baseline, config)`` of a saved model on ``split`` of the task it was trained on
    (``data``: the data file of a task trained on one, see :func:`task_from_checkpoint`)."""
    from rnnlab.train.config import ConfigError, check_model_io, run_config_from_dict

    model, config = ckpt.load_model(path)
    seq2seq = config.get("model_io", {}).get("target") == "seq2seq"  # its own model config (rnnlab.seq2seq)
    try:  # an edited config (checksum recomputed) must fail here, not as an IndexError deep in the model
        train_cfg = TrainConfig.from_dict(config["train"]) if seq2seq else \
            run_config_from_dict(config, saved=True).train
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{config['path']}/{ckpt.CONFIG_FILE}: {e}") from None
    task = task_from_checkpoint(config, data)
    try:
        if not seq2seq:
            check_model_io(config, task)
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{config['path']}/{ckpt.CONFIG_FILE}: {e}") from None
    # wherever it was trained, evaluate on this machine's best device (a GPU checkpoint evaluates on a CPU)
    train_cfg = dataclasses.replace(train_cfg, device="auto")
    trainer = Trainer(model, task, train_cfg, task_spec=config["task"])
    return trainer.evaluate(split), task.baseline(split), config  # type: ignore[arg-type]


def format_result(result: RunResult) -> str:
    """Human summary: the test metric next to the baseline, and whether the model beats it."""
    m = result.metric
    value, base = result.test.get(m), result.baseline.get(m)
    line = f"{result.task} / {result.cell}: test {m} {value:.4f}"
    if base is not None:
        better = value > base if result.higher_is_better else value < base
        line += f" (baseline {base:.4f}: {'beats' if better else 'does NOT beat'} it)"
    return line + f"  [{result.steps} steps, {result.seconds:.1f}s]"
