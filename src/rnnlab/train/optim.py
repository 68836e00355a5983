"""Optimisers and the learning-rate schedule (a pure function of the step, so resuming needs no state)."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from rnnlab.train.config import TrainConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """adam / adamw / sgd (with momentum) / rmsprop at ``cfg.lr``; the schedule sets the lr every step.

    Example:
        >>> opt = build_optimizer(nn.Linear(2, 2).parameters(), TrainConfig(optimizer="sgd", lr=0.1))
        >>> type(opt).__name__, opt.param_groups[0]["momentum"]
        ('SGD', 0.9)
    """
    params = list(params)
    # foreach=False: the single-tensor loops are bitwise reproducible across resume and thread counts
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               foreach=False)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   foreach=False)
    raise ValueError(f"optimizer: expected one of adam, adamw, sgd, rmsprop, got {cfg.optimizer!r}")


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warm-up over ``warmup_steps``, then constant, cosine decay to 0 at ``total_steps``, or a
    step decay by ``gamma`` every ``step_size`` steps.

    Example:
        >>> cfg = TrainConfig(lr=1.0, schedule="cosine", warmup_steps=2)
        >>> [round(lr_at(s, cfg, 6), 3) for s in range(6)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (step // cfg.step_size)
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
