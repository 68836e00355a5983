"""TrainConfig, and the one place that validates a whole run's configuration (task, model, train) field by field.

:func:`run_config_from_dict` checks every field of the task's config dataclass, :class:`ModelConfig` and
:class:`TrainConfig` for type and range and raises :class:`ConfigError` naming ``section.field`` and the value;
:func:`check_run_fits` then checks what needs the built task (truncated BPTT, batch size, memory).  The CLI
runs both on ``--config``/flags and on a saved checkpoint's config before anything is trained or written.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rnnlab.models import ModelConfig
    from rnnlab.tasks.base import Task

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "step")
#: more intra-op threads than this is a typo, not a machine (torch would try to start them all)
MAX_THREADS = 4096


@dataclass
class TrainConfig:
    """How to train; saved in every checkpoint so that ``--resume`` continues with the same settings.

    Example:
        >>> cfg = TrainConfig(epochs=3, lr=3e-3, schedule="cosine", warmup_steps=10)
        >>> cfg.validate().lr
        0.003
        >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    epochs: int = 10
    #: stop after this many optimiser steps in total (``None``: run all epochs)
    max_steps: int | None = None
    #: the *global* batch; under DDP each of the W ranks takes its 1/W shard
    batch_size: int = 32
    #: truncated BPTT chunk length for stream tasks (char LM); ``None``: backprop through whole sequences
    bptt: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    #: SGD momentum (used by sgd and rmsprop)
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    #: linear warm-up from lr/warmup_steps to lr over this many steps
    warmup_steps: int = 0
    #: step schedule: multiply the lr by ``gamma`` every ``step_size`` optimiser steps
    step_size: int = 1000
    gamma: float = 0.5
    #: clip the global gradient norm to this value (0: no clipping; the pre-clip norm is logged anyway)
    clip_norm: float = 1.0
    #: evaluate on the validation split every this many steps (0: at the end of every epoch only)
    eval_every: int = 0
    #: stop when the validation metric has not improved for this many evaluations (0: never)
    patience: int = 0
    #: write a resumable checkpoint every this many steps (0: after every evaluation only)
    checkpoint_every: int = 0
    #: how many step checkpoints to keep besides the best one
    keep_checkpoints: int = 2
    #: log the training loss every this many steps
    log_every: int = 10
    seed: int = 0
    #: torch.use_deterministic_algorithms (warn-only where an op has no deterministic version)
    deterministic: bool = True
    #: torch intra-op threads (``None``: leave torch's default)
    threads: int | None = None
    #: where to train: "auto" (a CUDA GPU when one is visible, else the CPU), "cpu" or "cuda"
    device: str = "auto"
    #: "fp32", or autocast "bf16" / "fp16" (fp16 with loss scaling); weights and optimiser state stay fp32
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        if not isinstance(data, dict):
            raise TypeError(f"train config: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"train config: unknown field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**data).validate()

    def validate(self) -> "TrainConfig":
        """Check types and ranges; raise ``ValueError``/``TypeError`` naming the field and the value."""
        def integer(name: str, lo: int, optional: bool = False, hi: int | None = None) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: expected an integer, got {type(v).__name__} {v!r}")
            if v < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {v}")
            if hi is not None and v > hi:
                raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {v}")

        def real(name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"{name}: expected a finite number, got {type(v).__name__} {v!r}")
            if v < lo or v > hi or (lo_open and v == lo):
                lo_s = f"({lo}" if lo_open else f"[{lo}"
                raise ValueError(f"{name}: expected a value in {lo_s}, {hi}], got {v}")

        integer("epochs", 1)
        integer("max_steps", 1, optional=True)
        integer("batch_size", 1)
        integer("bptt", 1, optional=True)
        integer("warmup_steps", 0)
        integer("step_size", 1)
        integer("eval_every", 0)
        integer("patience", 0)
        integer("checkpoint_every", 0)
        integer("keep_checkpoints", 1)
        integer("log_every", 1)
        integer("seed", 0, hi=2**64 - 1)  # torch.manual_seed's range
        integer("threads", 1, optional=True, hi=MAX_THREADS)
        real("lr", 0.0, 10.0, lo_open=True)
        real("momentum", 0.0, 1.0)
        real("weight_decay", 0.0, 1.0)
        real("gamma", 0.0, 1.0, lo_open=True)
        real("clip_norm", 0.0)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not isinstance(self.deterministic, bool):
            raise TypeError(f"deterministic: expected bool, got {self.deterministic!r}")
        from rnnlab.train.device import DEVICES, PRECISIONS

        if self.device not in DEVICES:
            raise ValueError(f"device: expected one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return self


class ConfigError(ValueError):
    """An invalid configuration value; ``field`` is ``"section.name"`` (e.g. ``"model.hidden_size"``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


@dataclass
class RunConfig:
    """A validated run: the task's name and options, the model's and the training's configs."""

    task: str
    options: dict[str, Any]
    model: "ModelConfig"
    train: TrainConfig


#: bytes per parameter while training: weights, gradients and Adam's two moments in float32
BYTES_PER_PARAMETER = 16
#: hard bounds where even a shape-only model cannot be built (int32 widths, a loop over layers); the
#: memory check (check_run_fits) refuses much smaller models on a real machine
MAX_WIDTH = 2**31 - 1
MAX_LAYERS = 1024


def config_error_from(section: str, e: Exception) -> ConfigError:
    """``"lag: expected ..."`` raised by a config class -> ``ConfigError("task.lag", "expected ...")``."""
    text = str(e)
    name, sep, rest = text.partition(":")
    if sep and name.strip().isidentifier():
        return ConfigError(f"{section}.{name.strip()}", rest.strip())
    return ConfigError(section, text)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_model_config(cfg: "ModelConfig") -> "ModelConfig":
    """Check every field of ``cfg`` (types, ranges, cell name, backend, cell options); ``ConfigError`` on the first
    bad one.  The cell options are checked by building one layer on the meta device (no memory is allocated)."""
    from rnnlab.backends import available_backends
    from rnnlab.cells import cell_names
    from rnnlab.recurrent import Recurrent

    def bad(name: str, message: str) -> ConfigError:
        return ConfigError(f"model.{name}", message)

    if not isinstance(cfg.cell, str) or cfg.cell not in cell_names():
        raise bad("cell", f"unknown cell {cfg.cell!r}; expected one of {', '.join(cell_names())}")
    for name, hi in (("hidden_size", MAX_WIDTH), ("num_layers", MAX_LAYERS), ("embedding_dim", MAX_WIDTH)):
        v = getattr(cfg, name)
        if not _is_int(v) or v < 1:
            raise bad(name, f"expected an integer >= 1, got {v!r}")
        if v > hi:  # beyond any memory, and building (even counting) such a model would take forever
            raise bad(name, f"expected an integer in [1, {hi}], got {v!r}")
    for name in ("dropout", "recurrent_dropout", "zoneout", "weight_drop"):
        v = getattr(cfg, name)
        if not _is_number(v) or not 0 <= v < 1:  # NaN fails the comparison too
            raise bad(name, f"expected a probability in [0, 1), got {v!r}")
    for f in fields(cfg):  # bidirectional and every other switch (a string "yes" would be truthy)
        if isinstance(f.default, bool) and not isinstance(getattr(cfg, f.name), bool):
            raise bad(f.name, f"expected true or false, got {getattr(cfg, f.name)!r}")
    backends = ["auto", *available_backends()]
    if not isinstance(cfg.backend, str) or cfg.backend not in backends:
        raise bad("backend", f"expected one of {', '.join(backends)}, got {cfg.backend!r}")
    if not isinstance(cfg.cell_options, dict):
        raise bad("cell_options", f"expected a JSON object of KEY: VALUE, got {cfg.cell_options!r}")
    for key, value in cfg.cell_options.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise bad("cell_options", f"expected option names, got {key!r}")
        # the value goes into every checkpoint's JSON: it must survive a JSON round trip
        if value is not None and not isinstance(value, (bool, int, float, str)) or \
                (isinstance(value, float) and not math.isfinite(value)):
            raise bad(f"cell_options.{key}", f"expected a finite number, true/false or a string, got {value!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. dropout with one layer: the run itself warns once
            Recurrent(cfg.cell, 1, 1, device="meta", **cfg.cell_options)
    except (TypeError, ValueError) as e:
        raise config_error_from("model.cell_options", e) from None
    return cfg


def task_options_checked(name: Any, options: Any) -> dict[str, Any]:
    """The task's options converted and checked by its config dataclass (no data is built); ``ConfigError``."""
    from rnnlab.tasks import TASKS, task_names
    from rnnlab.tasks._util import coerce_options

    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError("task.name", f"unknown task {name!r}; expected one of {', '.join(task_names())}")
    if not isinstance(options, dict):
        raise ConfigError("task.options", f"expected a JSON object, got {options!r}")
    spec = TASKS[name]
    for key, value in options.items():
        # torch takes sizes and seeds as 64-bit integers: a larger one is a typo, not a data set
        if _is_int(value) and not -2**63 <= value < 2**63:
            raise ConfigError(f"task.{key}", f"expected an integer that fits in 64 bits, got {value!r}")
    try:
        spec.config(**coerce_options(spec.config, options, task=name))
    except (TypeError, ValueError) as e:
        raise config_error_from("task", e) from None
    return dict(options)


def run_config_from_dict(data: Any, *, saved: bool = False) -> RunConfig:
    """``{"task": {"name", "options"}, "model": {...}, "train": {...}}`` -> a validated :class:`RunConfig`.

    Every section and field is checked; the first invalid one raises :class:`ConfigError` naming it.  A
    ``saved`` config (a checkpoint's) must have every section: defaults would not describe its weights.
    """
    from rnnlab.models import ModelConfig

    if not isinstance(data, dict):
        raise ConfigError("config", f"expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("task", "model", "train") if saved and k not in data]
    if missing:
        raise ConfigError(missing[0], "missing from the saved config")
    task = data.get("task")
    if not isinstance(task, dict):
        raise ConfigError("task", f"expected a JSON object with name and options, got {task!r}")
    options = task_options_checked(task.get("name"), task.get("options", {}))
    model, train = data.get("model", {}), data.get("train", {})
    for section, value in (("model", model), ("train", train)):
        if not isinstance(value, dict):
            raise ConfigError(section, f"expected a JSON object, got {value!r}")
    fields_ = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(str(k) for k in set(model) - fields_)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}", f"unknown field; expected some of {sorted(fields_)}")
    model_config = check_model_config(ModelConfig(**model))
    try:
        train_config = TrainConfig.from_dict(train)
    except (TypeError, ValueError) as e:
        raise config_error_from("train", e) from None
    return RunConfig(task["name"], options, model_config, train_config)


def _available_memory() -> int | None:
    """Bytes this machine can still hand out (MemAvailable), or ``None`` where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _meta_model(task: "Task", cfg: "ModelConfig") -> Any:
    """The model ``cfg`` builds for ``task``, on the meta device: shapes without memory.  Sizes too large to even
    count (more than 2**63 bytes) raise :class:`NotEnoughMemory`."""
    import torch

    from rnnlab.models import SequenceModel

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            custom = getattr(task, "build_model", None)  # a task with its own architecture (g2p builds a Seq2Seq)
            return custom(cfg) if callable(custom) else SequenceModel(
                cfg, input_size=task.input_size, output_size=task.output_size, target=task.target,
                vocab_size=task.vocab_size)
    except RuntimeError as e:
        if "overflow" not in str(e).lower():
            raise
        raise NotEnoughMemory(f"hidden_size={cfg.hidden_size}, num_layers={cfg.num_layers}, embedding_dim="
                              f"{cfg.embedding_dim} give a model too large to count ({e})") from None


def model_memory(task: "Task", cfg: "ModelConfig") -> tuple[int, int]:
    """``(parameters, bytes to train them)`` of the model ``cfg`` builds for ``task``, counted on the meta device."""
    n = sum(p.numel() for p in _meta_model(task, cfg).parameters())
    return n, n * BYTES_PER_PARAMETER


class NotEnoughMemory(MemoryError):
    """The model would not fit in this machine's memory (raised before anything is allocated)."""


def check_run_fits(task: "Task", cfg: "ModelConfig", train: TrainConfig) -> None:
    """What needs the built task: truncated BPTT only on stream tasks, a batch size every split can fill,
    and a model whose training state fits in memory (:class:`NotEnoughMemory` otherwise)."""
    if train.bptt is not None:
        if not hasattr(task, "stream_batches"):
            raise ConfigError("train.bptt", f"task {task.name!r} is not a stream task (truncated BPTT is for "
                              f"charlm); leave it unset, got {train.bptt!r}")
        for split in ("train", "val", "test"):
            try:
                next(iter(task.stream_batches(split, train.batch_size, train.bptt)), None)  # type: ignore
            except ValueError as e:
                raise config_error_from("train", e) from None
    try:  # options that depend on the task (e.g. a CRF needs per-step targets) are checked by the model itself
        params, need = model_memory(task, cfg)
    except (TypeError, ValueError) as e:
        raise config_error_from("model", e) from None
    have = _available_memory()
    if have is not None and need > have:
        raise NotEnoughMemory(f"hidden_size={cfg.hidden_size}, num_layers={cfg.num_layers}, embedding_dim="
                              f"{cfg.embedding_dim} give "
                              f"{params:,} parameters, about {need / 2**30:.1f} GiB to train; this machine has "
                              f"{have / 2**30:.1f} GiB available")


def check_model_io(config: dict[str, Any], task: "Task") -> None:
    """A saved checkpoint's ``model_io`` must be what ``task`` gives (else its weights index the wrong vocabulary
    or classes); ``ConfigError`` naming the first difference."""
    if callable(getattr(task, "build_model", None)):
        return  # a task-built architecture (e.g. Seq2Seq) records its own sizes; check_weights_fit covers it
    io = config.get("model_io")
    if not isinstance(io, dict):
        raise ConfigError("model_io", f"expected a JSON object with input_size, output_size, target, got {io!r}")
    for key in ("input_size", "output_size", "target", "vocab_size"):
        if io.get(key) != getattr(task, key):
            raise ConfigError(f"model_io.{key}", f"the model was built for {io.get(key)!r} but task {task.name!r} "
                              f"with the saved options gives {getattr(task, key)!r}")


def check_weights_fit(task: "Task", cfg: "ModelConfig", state: dict[str, Any]) -> None:
    """Saved weights ``state`` must have exactly the names and shapes of the model ``cfg`` builds for ``task``
    (compared on the meta device); ``ConfigError`` naming the first that differs."""
    expected = {k: tuple(v.shape) for k, v in _meta_model(task, cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    for name in sorted(set(expected) | set(got)):
        if expected.get(name) != got.get(name):
            raise ConfigError("model", f"the saved weights do not fit this model config: {name} has shape "
                              f"{got.get(name)} in the weights, the config builds {expected.get(name)}")
