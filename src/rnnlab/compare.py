"""Grid runner: cells x lags x seeds on one task, or cells x tasks x seeds -> results.json, a table and a plot.

With ``tasks`` set the columns are tasks instead of lags (each with its own metric, options, model and training
settings): the layout of a variant study such as Greff et al. (2015), whose preset is :data:`GREFF_STUDY`.

Example:
    >>> from rnnlab.compare import markdown_table
    >>> rows = [{"cell": "rnn", "lag": 5, "seed": 0, "value": 0.9, "baseline": 0.25},
    ...         {"cell": "rnn", "lag": 40, "seed": 0, "value": 0.26, "baseline": 0.25}]
    >>> print(markdown_table(rows, "accuracy"))
    | cell | lag 5 | lag 40 |
    |---|---|---|
    | rnn | 0.900 | 0.260 |
    | *baseline* | 0.250 | 0.250 |
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rnnlab.models import ModelConfig
from rnnlab.train.config import TrainConfig


@dataclass
class GridSpec:
    """What to sweep and how each run trains; JSON-serialisable (saved as ``grid.json``)."""

    task: str = "cue"
    cells: list[str] = field(default_factory=lambda: ["rnn", "lstm", "gru"])
    lags: list[int] = field(default_factory=lambda: [5, 20, 40])
    seeds: list[int] = field(default_factory=lambda: [0])
    task_options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=lambda: {"hidden_size": 32, "embedding_dim": 16})
    #: per-cell extra options (e.g. {"lstm": {"forget_bias": 1.0}})
    cell_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=lambda: {"epochs": 6, "batch_size": 32, "lr": 1e-2})
    #: when set, sweep these tasks (columns) instead of lags; the per-task dicts below override the shared ones
    tasks: list[str] = field(default_factory=list)
    task_options_by_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_by_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_by_task: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> "GridSpec":
        from rnnlab.cells import cell_names
        from rnnlab.tasks import task_names

        for c in self.cells:
            if c not in cell_names():
                raise ValueError(f"cells: unknown cell {c!r}; expected some of {', '.join(cell_names())}")
        for t in self.tasks:
            if t not in task_names():
                raise ValueError(f"tasks: unknown task {t!r}; expected some of {', '.join(task_names())}")
        if not self.cells or not (self.lags or self.tasks) or not self.seeds:
            raise ValueError("cells, lags (or tasks), seeds: each needs at least one value")
        for lag in self.lags:
            if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
                raise ValueError(f"lags: expected integers >= 0, got {lag!r}")
        TrainConfig.from_dict(self.train)
        ModelConfig.from_dict({**self.model, "cell": self.cells[0]})
        return self

    def runs(self) -> list[dict[str, Any]]:
        if self.tasks:
            return [{"cell": c, "task": t, "seed": s} for t in self.tasks for c in self.cells for s in self.seeds]
        return [{"cell": c, "lag": lag, "seed": s} for lag in self.lags for c in self.cells for s in self.seeds]


#: Greff et al. (2015), "LSTM: A Search Space Odyssey": the vanilla LSTM and its eight one-change variants on two
#: real tasks (spoken vowels, Shakespeare characters), Adam for every run (the paper tuned each by random search)
GREFF_STUDY = GridSpec(
    task="vowels", cells=["greff_v", "greff_nig", "greff_nfg", "greff_nog", "greff_niaf", "greff_noaf", "greff_np",
                          "greff_cifg", "greff_fgr"],
    lags=[], seeds=[0, 1, 2], tasks=["vowels", "charlm"],
    task_options_by_task={"charlm": {"max_chars": 100_000}},
    model={"hidden_size": 64, "embedding_dim": 16},
    train_by_task={"vowels": {"epochs": 15, "batch_size": 16, "lr": 1e-2},
                   "charlm": {"epochs": 10, "max_steps": 150, "batch_size": 32, "bptt": 64, "lr": 4e-3}})


def _one_run(spec: dict[str, Any], run: dict[str, Any], threads: int) -> dict[str, Any]:
    """Train one grid point (in a worker process) and return its row."""
    import torch

    from rnnlab.train.runner import train_run

    torch.set_num_threads(threads)
    cell = run["cell"]
    task = run.get("task", spec["task"])
    model = ModelConfig.from_dict({**spec["model"], **spec.get("model_by_task", {}).get(task, {}), "cell": cell,
                                   "cell_options": dict(spec["cell_options"].get(cell, {}))})
    train = TrainConfig.from_dict({**spec["train"], **spec.get("train_by_task", {}).get(task, {}),
                                   "seed": run["seed"], "threads": threads})
    options = {**spec["task_options"], **spec.get("task_options_by_task", {}).get(task, {})}
    if "lag" in run:
        options["lag"] = run["lag"]
    result = train_run(task, options, model, train)
    return {**run, "metric": result.metric, "value": result.test[result.metric],
            "baseline": result.baseline.get(result.metric), "higher_is_better": result.higher_is_better,
            "steps": result.steps, "seconds": round(result.seconds, 2)}


def run_grid(spec: GridSpec, *, jobs: int = 1, threads: int = 1,
             on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train every (cell, lag, seed) of ``spec``; ``jobs`` worker processes of ``threads`` threads each."""
    spec.validate()
    data = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    runs = spec.runs()
    rows: list[dict[str, Any]] = []
    if jobs <= 1:
        for run in runs:
            rows.append(_one_run(data, run, threads))
            if on_result:
                on_result(rows[-1])
    else:
        # spawn: a fresh interpreter per worker, never a fork of a process whose torch threads are running
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_one_run, data, run, threads) for run in runs]
            for fut in futures:
                rows.append(fut.result())
                if on_result:
                    on_result(rows[-1])
    return rows


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    """Cells as rows, lags as columns: the test metric (mean ± std over seeds), then the baseline row."""
    if "task" in rows[0]:
        return task_table(rows)
    lags = sorted({r["lag"] for r in rows})
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    lines = ["| cell | " + " | ".join(f"lag {lag}" for lag in lags) + " |", "|---" * (len(lags) + 1) + "|"]
    for c in cells:
        vals = [_summary([r["value"] for r in rows if r["cell"] == c and r["lag"] == lag]) or "" for lag in lags]
        lines.append(f"| {c} | " + " | ".join(vals) + " |")
    base = []
    for lag in lags:
        b = [r["baseline"] for r in rows if r["lag"] == lag and r.get("baseline") is not None]
        base.append(f"{b[0]:.3f}" if b else "")
    lines.append("| *baseline* | " + " | ".join(base) + " |")
    return "\n".join(lines)


def _task_means(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], list[float]]]:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    values = {(c, t): [r["value"] for r in rows if r["cell"] == c and r["task"] == t] for c in cells for t in tasks}
    return tasks, cells, values


def task_ranks(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over tasks of each cell's rank (1 = best mean metric on that task; ties share the better rank)."""
    tasks, cells, values = _task_means(rows)
    ranks: dict[str, list[int]] = {c: [] for c in cells}
    for t in tasks:
        better = next(r["higher_is_better"] for r in rows if r["task"] == t)
        means = {c: statistics.mean(values[(c, t)]) for c in cells}
        for c in cells:
            ranks[c].append(1 + sum((m > means[c]) if better else (m < means[c]) for m in means.values()))
    return {c: statistics.mean(r) for c, r in ranks.items()}


def task_table(rows: list[dict[str, Any]]) -> str:
    """Cells as rows, tasks as columns (each its own metric, ↑/↓), the mean rank, then the baseline row."""
    tasks, cells, values = _task_means(rows)
    heads = []
    for t in tasks:
        r0 = next(r for r in rows if r["task"] == t)
        heads.append(f"{t} {r0['metric']} {'↑' if r0['higher_is_better'] else '↓'}")
    ranks = task_ranks(rows)
    lines = ["| cell | " + " | ".join(heads) + " | mean rank |", "|---" * (len(tasks) + 2) + "|"]
    for c in sorted(cells, key=lambda c: ranks[c]):
        lines.append(f"| {c} | " + " | ".join(_summary(values[(c, t)]) for t in tasks) + f" | {ranks[c]:.1f} |")
    base = [next((f"{r['baseline']:.3f}" for r in rows if r["task"] == t and r.get("baseline") is not None), "")
            for t in tasks]
    lines.append("| *baseline* | " + " | ".join(base) + " | |")
    return "\n".join(lines)


def plot_tasks(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """One panel per task: a bar per cell (mean over seeds, error bar = std), the baseline dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks, cells, values = _task_means(rows)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 4), dpi=110, squeeze=False)
    for ax, t in zip(axes[0], tasks):
        r0 = next(r for r in rows if r["task"] == t)
        means = [statistics.mean(values[(c, t)]) for c in cells]
        errs = [statistics.stdev(values[(c, t)]) if len(values[(c, t)]) > 1 else 0.0 for c in cells]
        ax.bar(range(len(cells)), means, yerr=errs, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(cells)), [c.replace("greff_", "") for c in cells], rotation=45)
        if r0.get("baseline") is not None:
            ax.axhline(r0["baseline"], color="k", linestyle="--", label="baseline")
            ax.legend()
        ax.set_title(f"{t}: test {r0['metric']} ({'higher' if r0['higher_is_better'] else 'lower'} is better)")
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(rows: list[dict[str, Any]], metric: str, path: str | Path, title: str = "") -> Path | None:
    """PNG of the metric vs lag, one line per cell (mean over seeds, error bars = std), baseline dashed.

    Returns ``None`` when matplotlib is not installed (the table and JSON are still written).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    lags = sorted({r["lag"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for c in dict.fromkeys(r["cell"] for r in rows):
        means, errs = [], []
        for lag in lags:
            v = [r["value"] for r in rows if r["cell"] == c and r["lag"] == lag]
            means.append(statistics.mean(v))
            errs.append(statistics.stdev(v) if len(v) > 1 else 0.0)
        ax.errorbar(lags, means, yerr=errs, marker="o", capsize=3, label=c)
    base = [next((r["baseline"] for r in rows if r["lag"] == lag and r.get("baseline") is not None), None)
            for lag in lags]
    if all(b is not None for b in base):
        ax.plot(lags, base, "k--", label="baseline (no memory)")
    ax.set_xlabel("lag (steps between cue and answer)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title or f"{metric} vs lag")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_results(rows: list[dict[str, Any]], spec: GridSpec, out: str | Path, seconds: float) -> dict[str, Path]:
    """``results.json`` (rows + grid), ``results.md`` (the table) and ``plot.png`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metric = rows[0]["metric"]
    files = {"json": out / "results.json", "table": out / "results.md"}
    data = {"grid": {k: getattr(spec, k) for k in spec.__dataclass_fields__}, "rows": rows,
            "seconds": round(seconds, 1)}
    files["json"].write_text(json.dumps(data, indent=1), encoding="utf-8")
    if spec.tasks:
        title = f"{', '.join(spec.cells)} on {', '.join(spec.tasks)}"
        png = plot_tasks(rows, out / "plot.png", title)
    else:
        title = f"{spec.task}: test {metric} vs lag"
        png = plot(rows, metric, out / "plot.png", title)
    files["table"].write_text(f"# {title}\n\n{markdown_table(rows, metric)}\n", encoding="utf-8")
    if png is not None:
        files["plot"] = png
    return files


def compare(spec: GridSpec, out: str | Path, *, jobs: int = 1, threads: int = 1,
            log: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Run the grid and write its results; ``log`` receives one line per finished run."""
    t0 = time.perf_counter()

    def report(row: dict[str, Any]) -> None:
        if log:
            where = f"lag {row['lag']:>3}" if "lag" in row else row["task"]
            log(f"  {row['cell']:>6} {where} seed {row['seed']}: {row['metric']} {row['value']:.3f} "
                f"(baseline {row['baseline']:.3f}) in {row['seconds']:.0f}s")

    rows = run_grid(spec, jobs=jobs, threads=threads, on_result=report)
    return rows, write_results(rows, spec, out, time.perf_counter() - t0)
