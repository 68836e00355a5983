"""Shared task helpers: locating packaged data files, split arithmetic, tensor-backed tasks, metric mixins."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.tasks.base import Batch, Split, Task

SPLITS: tuple[Split, ...] = ("train", "val", "test")


def package_data(package: str, *parts: str, install: str) -> Path:
    """Path of a data file shipped inside ``package``, found *without importing it* (imports are slow).

    ``install`` is the pip command that provides the package, quoted in the error when it is missing.

    >>> package_data("rnnlab", "tasks", "base.py", install="pip install rnnlab").name
    'base.py'
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"data package {package!r} is not installed; install it with: {install}")
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*parts)
        if path.exists():
            return path
    raise FileNotFoundError(f"data package {package!r} has no {'/'.join(parts)}; reinstall it with: {install}")


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return split  # type: ignore[return-value]


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    return batch_size


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Sizes (train, val, test) of ``n`` items; val and test get at least one item each.

    >>> split_counts(100, 0.15, 0.15)
    (70, 15, 15)
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{name}: expected a fraction in (0, 1), got {frac!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction: expected < 1, got {val_fraction + test_fraction!r}")
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"too few items ({n}) for a train/val/test split")
    return n_train, n_val, n_test


def positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def coerce_options(config_cls: type, options: dict[str, Any], *, task: str) -> dict[str, Any]:
    """Check option names against the dataclass ``config_cls`` and turn CLI strings into the field types.

    Unknown names raise ``ValueError`` listing the valid ones; ``"50"`` becomes ``50`` for an int field,
    ``"a,b"`` becomes ``("a", "b")`` for a tuple field, ``"none"`` becomes ``None`` for an optional one.
    """
    valid = {f.name: f for f in fields(config_cls)}
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in valid:
            raise ValueError(f"{key}: not an option of task {task!r}; expected one of {sorted(valid)}")
        out[key] = _coerce(key, str(valid[key].type), value) if isinstance(value, str) else value
    return out


def _coerce(key: str, type_text: str, value: str) -> Any:
    if "None" in type_text and value.lower() in ("none", "null", ""):
        return None
    try:
        if type_text.startswith("bool"):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if type_text.startswith("int"):
            return int(value)
        if type_text.startswith("float"):
            return float(value)
        if type_text.startswith("tuple"):
            return tuple(v.strip() for v in value.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{key}: expected {type_text}, got {value!r}") from None
    return value


class TensorTask(Task):
    """A task whose splits are in-memory tensors: ``self._data[split] = (x, y, lengths | None)``.

    Variable-length splits are zero-padded to a common T; each batch is trimmed to its own longest sequence.
    """

    _data: dict[str, tuple[Tensor, Tensor, Tensor | None]]

    def batches(self, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        x, y, lengths = self._data[check_split(split)]
        check_batch_size(batch_size)
        n = x.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            bx, by = x[idx], y[idx]
            blen = None
            if lengths is not None:
                blen = lengths[idx]
                bx = bx[:, :int(blen.max())]  # (B, T_max) or (B, T_max, F): drop all-padding steps
                if by.dim() >= 2 and self.target == "seq_class":
                    by = by[:, :bx.shape[1]]
            yield Batch(bx, by, blen)

    def num_examples(self, split: Split) -> int:
        return int(self._data[check_split(split)][0].shape[0])

    def split_tensors(self, split: Split) -> tuple[Tensor, Tensor, Tensor | None]:
        """The whole split as ``(x, y, lengths)`` (read-only view of the task's data)."""
        return self._data[check_split(split)]


class ClassificationMixin:
    """Cross-entropy loss and accuracy for ``target="class"`` (one label per sequence)."""

    metric = "accuracy"
    higher_is_better = True

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output, batch.y)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            ce = F.cross_entropy(output.float(), batch.y, reduction="sum")
            correct = (output.argmax(-1) == batch.y).sum()
        return {"loss": float(ce), "accuracy": float(correct), "count": float(batch.y.numel())}

    def majority_baseline(self, split: Split) -> dict[str, float]:
        """Accuracy of always predicting the train split's most frequent class (and its cross-entropy)."""
        train_y = self._data["train"][1]  # type: ignore[attr-defined]
        counts = torch.bincount(train_y, minlength=self.output_size).double()  # type: ignore[attr-defined]
        majority = int(counts.argmax())
        y = self._data[check_split(split)][1]  # type: ignore[attr-defined]
        # the memoryless predictor's loss: train class frequencies (add-one smoothed) as the distribution
        probs = (counts + 1) / (counts.sum() + len(counts))
        ce = float(-probs.log()[y].mean())
        return {"accuracy": float((y == majority).double().mean()), "loss": ce}


class RegressionMixin:
    """MSE loss on the (standardised) targets; MAE / MSE sums in the *original* units.

    Subclasses store standardised ``y`` and set ``target_mean`` / ``target_std`` (K,) to undo it;
    the defaults (0, 1) mean the targets are already in their own units.
    """

    metric = "mae"
    higher_is_better = False
    target_mean: Tensor | None = None
    target_std: Tensor | None = None

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(output, batch.y)

    def to_units(self, values: Tensor) -> Tensor:
        """Standardised (B, K) values -> original units."""
        if self.target_std is None:
            return values
        return values * self.target_std.to(values) + self.target_mean.to(values)  # type: ignore[union-attr]

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            err = self.to_units(output.double()) - self.to_units(batch.y.double())  # (B, K)
            sq = F.mse_loss(output.double(), batch.y.double(), reduction="sum")
        return {"loss": float(sq), "mse": float((err * err).sum()), "mae": float(err.abs().sum()),
                "count": float(err.numel())}

    @staticmethod
    def error_summary(pred: Tensor, truth: Tensor) -> dict[str, float]:
        """MAE / MSE / RMSE of ``pred`` against ``truth`` (same units), as :func:`summarize` reports them."""
        err = pred.double() - truth.double()
        mse = float((err * err).mean())
        return {"mae": float(err.abs().mean()), "mse": mse, "rmse": math.sqrt(mse)}


def summarize(totals: dict[str, float]) -> dict[str, float]:
    """Turn summed :meth:`Task.metrics` into means (each sum / ``count``); a ``mse`` also yields ``rmse``.

    A trainer that just divides every sum by ``count`` gets the same numbers, less ``rmse``.

    >>> summarize({"mse": 8.0, "mae": 4.0, "count": 2.0})
    {'mse': 4.0, 'mae': 2.0, 'rmse': 2.0}
    """
    count = totals.get("count", 0.0)
    if count <= 0:
        raise ValueError(f"totals: expected a positive 'count', got {count!r}")
    out = {key: value / count for key, value in totals.items() if key != "count"}
    if "mse" in out:
        out["rmse"] = math.sqrt(out["mse"])
    return out
