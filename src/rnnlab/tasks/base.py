"""The task contract: data splits, batches, loss, metrics and baselines that the generic trainer consumes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

import torch
from torch import Tensor

Split = Literal["train", "val", "test"]
#: what the model's head predicts:
#: "class"       one label per sequence from the last valid step: y (B,) int64
#: "seq_class"   one label per step (e.g. copy memory, char LM):  y (B, T) int64, -100 = ignored
#: "regression"  one real vector per sequence from the last step:   y (B, K) float
Target = Literal["class", "seq_class", "regression"]


@dataclass
class Batch:
    """One batch, batch-first.

    ``x``: (B, T, F) float features, or (B, T) int64 token ids when the task has a ``vocab_size``.
    ``y``: see :data:`Target`.  ``lengths``: (B,) int64 valid steps, or ``None`` when all are T long.
    """

    x: Tensor
    y: Tensor
    lengths: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.x.to(device), self.y.to(device), self.lengths)

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Task(ABC):
    """A supervised sequence task.  Subclasses set ``name`` and build their data in ``__init__``.

    Attributes the model builder reads: ``input_size`` (features per step; for token inputs the
    embedding is built from ``vocab_size``), ``vocab_size`` (``None`` for real-valued inputs),
    ``output_size`` (classes, or regression dims) and ``target``.
    """

    name: ClassVar[str]
    target: ClassVar[Target]
    #: the metric the trainer selects checkpoints / early-stops on, and whether higher is better
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]

    input_size: int
    output_size: int
    vocab_size: int | None = None

    @abstractmethod
    def batches(self, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Yield the split's batches; with ``shuffle`` the order comes from ``generator`` (deterministic)."""

    @abstractmethod
    def num_examples(self, split: Split) -> int: ...

    @abstractmethod
    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Mean training loss from the model's head output (logits or predictions)."""

    @abstractmethod
    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        """Per-batch *sums* (not means) plus ``"count"``, so the trainer can add batches up exactly."""

    def baseline(self, split: Split = "test") -> dict[str, float]:
        """The metric of a trivial predictor (chance, naive forecast, ...) on ``split``."""
        return {}

    def describe(self) -> str:
        return f"{self.name}: {self.num_examples('train')} train / {self.num_examples('val')} val / " \
               f"{self.num_examples('test')} test, target={self.target}, metric={self.metric}"
