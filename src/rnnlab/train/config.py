"""TrainConfig: every training hyper-parameter as one JSON-serialisable, validated dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "step")


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
        def integer(name: str, lo: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: expected an integer, got {type(v).__name__} {v!r}")
            if v < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {v}")

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
        integer("seed", 0)
        integer("threads", 1, optional=True)
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
        return self
