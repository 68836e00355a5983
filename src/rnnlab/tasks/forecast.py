"""Time-series forecasting on real series shipped by packages: Seattle daily weather, monthly sunspot numbers.

Examples are windows of the past ``window`` steps -> the target column(s) ``horizon`` steps after the
window; the splits are contiguous in time (train, then val, then test, by target time).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import gzip
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rnnlab.tasks._util import (SPLITS, RegressionMixin, TensorTask, check_split, package_data, positive_int,
                                split_counts)
from rnnlab.tasks.base import Split

VEGA_INSTALL = "pip install vega_datasets"
PMDARIMA_INSTALL = "pip install --no-deps pmdarima"


@dataclass(frozen=True)
class Series:
    """A loaded series: ``values`` (N, C) float64 with column ``names``, ``times`` (N,) datetimes,
    ``period`` = steps per season, ``units`` of the values, ``phase`` (N,) in [0, 1) = position in the
    calendar season (``None`` when the season is not a calendar one)."""

    values: np.ndarray
    names: tuple[str, ...]
    times: tuple[dt.datetime, ...]
    period: int
    units: str
    phase: np.ndarray | None


@functools.lru_cache(maxsize=None)
def seattle_weather() -> Series:
    """Seattle daily weather 2012-2015 (1,461 days; mm, °C, m/s), no gaps."""
    path = package_data("vega_datasets", "_data", "seattle-weather.csv", install=VEGA_INSTALL)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = ("precipitation", "temp_max", "temp_min", "wind")
    values = np.array([[float(r[c]) for c in names] for r in rows])  # (N, 4)
    times = tuple(dt.datetime.strptime(r["date"], "%Y/%m/%d") for r in rows)
    phase = np.array([(t.timetuple().tm_yday - 1) / 365.25 for t in times])
    return Series(values, names, times, period=365, units="°C", phase=phase)


@functools.lru_cache(maxsize=None)
def sunspots() -> Series:
    """Monthly mean relative sunspot numbers, Jan 1749 - Dec 1983 (2,820 months; Zurich, then Tokyo), as
    shipped by pmdarima (R's ``datasets::sunspots``).  Season = the ~11-year solar cycle, 132 months."""
    path = package_data("pmdarima", "datasets", "data", "sunspots.txt.gz", install=PMDARIMA_INSTALL)
    with gzip.open(path, "rt") as f:
        values = np.array([float(v) for line in f for v in line.split()])[:, None]  # (N, 1), 12 a line
    times = tuple(dt.datetime(1749 + i // 12, 1 + i % 12, 1) for i in range(len(values)))
    return Series(values, ("sunspots",), times, period=132, units="sunspot number", phase=None)


def _calendar(phase: np.ndarray) -> np.ndarray:
    """sin/cos of the phase (in [0, 1)) within the calendar season, e.g. the day of the year."""
    return np.stack([np.sin(2 * math.pi * phase), np.cos(2 * math.pi * phase)], axis=1)  # (N, 2)


@dataclass
class ForecastConfig:
    """Options of the forecasting tasks.

    ``window``: past steps fed to the model (``None`` = the task's default); ``horizon``: how many steps after the window's last step
    the target lies (1 = next step); ``targets`` / ``features``: column names (``None`` = the task's
    default); ``calendar``: add sin/cos of the seasonal phase as two more features.
    """

    window: int | None = None
    horizon: int = 1
    targets: tuple[str, ...] | None = None
    features: tuple[str, ...] | None = None
    calendar: bool = True
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    def __post_init__(self) -> None:
        if self.window is not None:
            positive_int("window", self.window)
        positive_int("horizon", self.horizon)
        for name in ("targets", "features"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, (value,))
            elif value is not None and (not value or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"{name}: expected a non-empty tuple of column names, got {value!r}")


class ForecastTask(RegressionMixin, TensorTask):
    """Predict the target column(s) ``horizon`` steps ahead from the past ``window`` steps of the series.

    Inputs and targets are standardised with the mean / std of the *train period only*; metrics and
    baselines are in the original units.  Baselines, on the very same targets: ``naive`` (the last
    observed value) and ``seasonal_naive`` (the value one season before the target time).
    """

    target = "regression"
    metric = "mae"
    default_targets: tuple[str, ...]
    default_window: int = 30

    def __init__(self, config: ForecastConfig | None = None) -> None:
        self.config = cfg = config or ForecastConfig()
        self.window = cfg.window or self.default_window
        series = self.load()
        self.series, self.units, self.period = series, series.units, series.period
        targets = cfg.targets or self.default_targets
        features = cfg.features or series.names
        for label, cols in (("targets", targets), ("features", features)):
            bad = [c for c in cols if c not in series.names]
            if bad:
                raise ValueError(f"{label}: unknown column(s) {bad}; expected names among {series.names}")
        if cfg.horizon > series.period:
            raise ValueError(f"horizon: expected at most one season ({series.period} steps), got {cfg.horizon}")
        self.target_names, self.feature_names = tuple(targets), tuple(features)
        t_cols = [series.names.index(c) for c in targets]
        f_cols = [series.names.index(c) for c in features]

        N, W, H = len(series.values), self.window, cfg.horizon
        # example e: inputs rows [e, e+W), target row e+W-1+H; examples are ordered by target time
        n_examples = N - W - H + 1
        if n_examples < 3:
            raise ValueError(f"window: {W} (+ horizon {H}) leaves too few examples in {N} steps")
        counts = split_counts(n_examples, cfg.val_fraction, cfg.test_fraction)
        starts = np.cumsum((0,) + counts)
        target_rows = np.arange(n_examples) + W - 1 + H
        # statistics from the train period only: every row up to the last train target
        train_end = int(target_rows[counts[0] - 1]) + 1
        feats = series.values[:, f_cols]
        mean, std = feats[:train_end].mean(0), feats[:train_end].std(0) + 1e-8
        x_all = (feats - mean) / std  # (N, F)
        # kept so that a deployed model (rnnlab export) can scale raw features the same way (calendar columns,
        # appended below, are not standardised)
        self.input_mean = torch.tensor(mean, dtype=torch.float64)
        self.input_std = torch.tensor(std, dtype=torch.float64)
        if cfg.calendar and series.phase is not None:
            x_all = np.concatenate([x_all, _calendar(series.phase)], axis=1)
        raw_t = series.values[:, t_cols]  # (N, K)
        t_mean, t_std = raw_t[:train_end].mean(0), raw_t[:train_end].std(0) + 1e-8
        self.target_mean = torch.tensor(t_mean, dtype=torch.float64)
        self.target_std = torch.tensor(t_std, dtype=torch.float64)
        self.input_size, self.output_size = x_all.shape[1], len(t_cols)

        windows = np.lib.stride_tricks.sliding_window_view(x_all, W, axis=0)  # (N-W+1, F, W)
        self._data, self._rows, self._raw = {}, {}, raw_t
        for i, split in enumerate(SPLITS):
            ex = np.arange(starts[i], starts[i + 1])
            x = torch.tensor(windows[ex].transpose(0, 2, 1), dtype=torch.float32)  # (n, W, F)
            y = torch.tensor((raw_t[target_rows[ex]] - t_mean) / t_std, dtype=torch.float32)  # (n, K)
            self._data[split] = (x, y, None)
            self._rows[split] = target_rows[ex]

    def load(self) -> Series:
        raise NotImplementedError

    def target_rows(self, split: Split) -> np.ndarray:
        """Row index in the series of each example's target (increasing; splits do not overlap)."""
        return self._rows[check_split(split)]

    def target_times(self, split: Split) -> list[dt.datetime]:
        return [self.series.times[r] for r in self.target_rows(split)]

    def targets_in_units(self, split: Split) -> Tensor:
        """The split's targets in the original units, (n, K) float64."""
        return torch.tensor(self._raw[self.target_rows(split)], dtype=torch.float64)

    def naive_forecast(self, split: Split) -> Tensor:
        """Last observed value: the target column at the window's last step, (n, K) original units."""
        return torch.tensor(self._raw[self.target_rows(split) - self.config.horizon], dtype=torch.float64)

    def seasonal_naive_forecast(self, split: Split) -> Tensor | None:
        """The value one season before each target, or ``None`` when the split starts within the first season."""
        rows = self.target_rows(split) - self.period
        if rows.min() < 0:
            return None
        return torch.tensor(self._raw[rows], dtype=torch.float64)

    def baseline(self, split: Split = "test") -> dict[str, float]:
        """Naive forecast's MAE / MSE / RMSE (main keys) plus ``seasonal_naive_*`` where a season is available."""
        truth = self.targets_in_units(split)
        out = self.error_summary(self.naive_forecast(split), truth)
        seasonal = self.seasonal_naive_forecast(split)
        if seasonal is not None:
            out.update({f"seasonal_naive_{k}": v for k, v in self.error_summary(seasonal, truth).items()})
        return out

    def describe(self) -> str:
        spans = ", ".join(f"{s} {self.target_times(s)[0]:%Y-%m-%d %H:%M}..{self.target_times(s)[-1]:%Y-%m-%d %H:%M}"
                          f" ({self.num_examples(s)})" for s in SPLITS)
        return (f"{self.name}: predict {', '.join(self.target_names)} [{self.units}] {self.config.horizon} step(s) "
                f"after {self.window} steps of {', '.join(self.feature_names)}; {spans}; metric=mae")


class WeatherTask(ForecastTask):
    """Seattle weather (vega_datasets): next day's ``temp_max`` from the past 30 days of
    precipitation, temp_max, temp_min and wind.  Season = 365 days.

    >>> task = WeatherTask()
    >>> task.input_size, task.output_size, task.units
    (6, 1, '°C')
    """

    name = "weather"
    default_targets = ("temp_max",)
    default_window = 30

    def load(self) -> Series:
        return seattle_weather()


class SunspotsTask(ForecastTask):
    """Monthly sunspot numbers 1749-1983 (pmdarima): next month from the past 60 months.
    Season = 132 months (the seasonal-naive forecast is the value one ~11-year solar cycle earlier).

    >>> task = SunspotsTask(); task.input_size, task.num_examples("test")
    (1, 414)
    """

    name = "sunspots"
    default_targets = ("sunspots",)
    default_window = 60

    def load(self) -> Series:
        return sunspots()
