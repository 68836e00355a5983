"""Sequence classification on real data: JapaneseVowels (variable-length speech frames) and digits read row by row."""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rnnlab.tasks._util import ClassificationMixin, TensorTask, package_data, split_counts
from rnnlab.tasks.base import Split

SKTIME_INSTALL = "pip install --no-deps sktime"
SKLEARN_INSTALL = "pip install scikit-learn"


def read_ts(path: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """Parse a multivariate sktime/UEA ``.ts`` file: one (T_i, D) float array and one label per case.

    Format: ``@`` header lines, then after ``@data`` one case a line, the D dimensions separated by ``:``,
    each a comma-separated series, and the class label last.
    """
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                in_data = line.lower().startswith("@data")
                continue
            *dims, label = line.split(":")
            try:
                columns = [np.array([float(v) for v in d.split(",")]) for d in dims]
            except ValueError:
                raise ValueError(f"path: {str(path)!r} line {lineno}: expected comma-separated numbers") from None
            if len({len(c) for c in columns}) != 1:
                raise ValueError(f"path: {str(path)!r} line {lineno}: dimensions have different lengths")
            series.append(np.stack(columns, axis=1))  # (T_i, D)
            labels.append(label.strip())
    if not series:
        raise ValueError(f"path: {str(path)!r} has no @data cases")
    return series, labels


def pad(series: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Zero-pad (T_i, D) arrays to (N, T_max, D) float32; returns it and the lengths (N,) int64."""
    lengths = torch.tensor([len(s) for s in series], dtype=torch.int64)
    out = torch.zeros(len(series), int(lengths.max()), series[0].shape[1])
    for i, s in enumerate(series):
        out[i, :len(s)] = torch.from_numpy(s)
    return out, lengths


@functools.lru_cache(maxsize=None)
def japanese_vowels() -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """The official TRAIN (270) and TEST (370) utterances of JapaneseVowels as shipped by sktime."""
    return {part: read_ts(package_data("sktime", "datasets", "data", "JapaneseVowels",
                                       f"JapaneseVowels_{part.upper()}.ts", install=SKTIME_INSTALL))
            for part in ("train", "test")}


@functools.lru_cache(maxsize=None)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: images (N, 8, 8) with values 0..16, labels (N,)."""
    path = package_data("sklearn", "datasets", "data", "digits.csv.gz", install=SKLEARN_INSTALL)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")  # (N, 65): 64 pixels, then the label
    return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)


@dataclass
class VowelsConfig:
    """Options of :class:`VowelsTask`: ``val_fraction`` of the official train set becomes val (seeded)."""

    val_fraction: float = 0.2
    standardize: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {self.val_fraction!r}")


class VowelsTask(ClassificationMixin, TensorTask):
    """JapaneseVowels (Kudo, Toyama & Shimbo 1999): which of 9 speakers uttered /ae/.

    Each step holds 12 LPC cepstrum coefficients; utterances last 7 to 29 steps, so batches carry
    ``lengths`` and are zero-padded after them.  Test = the official 370-utterance test set; val is a
    seeded random part of the official train set.  With ``standardize`` the coefficients are scaled
    by the mean / std of the train split's valid steps.  Baseline: majority class of train.

    >>> task = VowelsTask(); b = next(task.batches("test", 8))
    >>> b.x.shape[-1], b.x.shape[1] == int(b.lengths.max()), task.output_size
    (12, True, 9)
    """

    name = "vowels"
    target = "class"
    input_size = 12
    output_size = 9

    def __init__(self, config: VowelsConfig | None = None) -> None:
        self.config = cfg = config or VowelsConfig()
        raw = japanese_vowels()
        train_series, train_labels = raw["train"]
        test_series, test_labels = raw["test"]
        self.classes = sorted(set(train_labels), key=int)  # "1".."9" -> class 0..8
        index = {c: i for i, c in enumerate(self.classes)}
        order = torch.randperm(len(train_series), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        n_val = max(1, round(len(order) * cfg.val_fraction))
        parts = {"train": order[n_val:], "val": order[:n_val]}
        groups = {s: ([train_series[i] for i in idx], [train_labels[i] for i in idx]) for s, idx in parts.items()}
        groups["test"] = (test_series, test_labels)
        if cfg.standardize:
            steps = np.concatenate(groups["train"][0])  # (sum T_i, 12): valid steps only, padding excluded
            mean, std = steps.mean(0), steps.std(0) + 1e-8
            groups = {s: ([(a - mean) / std for a in xs], ys) for s, (xs, ys) in groups.items()}
            # kept so that a deployed model (rnnlab export) can scale raw coefficients the same way
            self.input_mean = torch.tensor(mean, dtype=torch.float64)
            self.input_std = torch.tensor(std, dtype=torch.float64)
        self._data = {}
        for split, (xs, ys) in groups.items():
            x, lengths = pad([a.astype(np.float32) for a in xs])
            self._data[split] = (x, torch.tensor([index[c] for c in ys], dtype=torch.int64), lengths)

    def baseline(self, split: Split = "test") -> dict[str, float]:
        return self.majority_baseline(split)


@dataclass
class DigitsConfig:
    """Options of :class:`DigitsTask`: a seeded random split of the 1,797 images."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0


class DigitsTask(ClassificationMixin, TensorTask):
    """Handwritten digits (scikit-learn's 8x8 copy of the UCI set) read row by row: 8 steps of 8 pixels.

    Pixels are scaled from 0..16 to 0..1.  Baseline: majority class of train (≈ 10%).

    >>> task = DigitsTask(); b = next(task.batches("train", 5)); tuple(b.x.shape), b.y.dtype
    ((5, 8, 8), torch.int64)
    """

    name = "digits"
    target = "class"
    input_size = 8
    output_size = 10

    def __init__(self, config: DigitsConfig | None = None) -> None:
        self.config = cfg = config or DigitsConfig()
        images, labels = digits()
        n_train, n_val, _ = split_counts(len(images), cfg.val_fraction, cfg.test_fraction)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
        x_all = torch.tensor(images, dtype=torch.float32) / 16.0  # (N, 8 rows = T, 8 pixels = F)
        y_all = torch.from_numpy(labels)
        idx = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        self._data = {s: (x_all[i], y_all[i], None) for s, i in idx.items()}

    def baseline(self, split: Split = "test") -> dict[str, float]:
        return self.majority_baseline(split)
