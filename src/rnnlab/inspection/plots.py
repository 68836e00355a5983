"""PNG plots with matplotlib's Agg backend: gate heatmaps, cell-state trajectories, gradient-vs-lag curves.

Every function saves one PNG and returns the open :class:`~matplotlib.figure.Figure` (the caller closes
it, or reads back what was drawn); figures are saved without ``bbox_inches="tight"`` so the axes' pixel
positions in the file are those of the figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rnnlab.inspection.gradflow import GradFlow  # noqa: E402

DPI = 100


def gate_colormap(values: np.ndarray) -> tuple[str, float, float]:
    """(cmap, vmin, vmax): a sequential map on [0, 1] for gates in that range (σ outputs), else a
    diverging map symmetric around 0 (tanh candidates, cell states, pre-activations)."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if lo >= 0.0 and hi <= 1.0:
        return "viridis", 0.0, 1.0
    m = max(abs(lo), abs(hi), 1e-8)
    return "RdBu_r", -m, m


def plot_gate_heatmaps(gates: Mapping[str, np.ndarray], path: str | Path, *, title: str = "",
                       max_units: int = 64) -> Figure:
    """One heatmap (units × time) per gate of one sequence; ``gates[name]`` is (T, H).

    Example:
        >>> import numpy as np, tempfile, os
        >>> fig = plot_gate_heatmaps({"f": np.random.rand(20, 4)}, os.path.join(tempfile.mkdtemp(), "g.png"))
        >>> fig.axes[0].images[0].get_array().shape
        (4, 20)
    """
    if not gates:
        raise ValueError("gates: expected at least one gate, got none")
    names = list(gates)
    T = next(iter(gates.values())).shape[0]
    fig, axes = plt.subplots(len(names), 1, figsize=(min(4 + T / 12, 16), 1.6 + 1.4 * len(names)), dpi=DPI,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        v = np.asarray(gates[name], dtype=float)
        if v.ndim != 2 or v.shape[0] != T:
            raise ValueError(f"gates[{name!r}]: expected (T={T}, H), got {v.shape}")
        v = v[:, :max_units].T  # (H, T): one row per unit
        cmap, vmin, vmax = gate_colormap(v)
        im = ax.imshow(v, aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax,
                       origin="lower")
        ax.set_ylabel(f"{name}\nunit")
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1, 0].set_xlabel("time step")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=DPI)
    return fig


def plot_cell_trajectories(c: np.ndarray, path: str | Path, *, units: int = 8, title: str = "") -> Figure:
    """Lines of the ``units`` most variable units of a state (T, H) over time (e.g. LSTM c_t)."""
    c = np.asarray(c, dtype=float)
    if c.ndim != 2:
        raise ValueError(f"c: expected (T, H), got {c.shape}")
    order = np.argsort(-c.var(axis=0))[:units]
    fig, ax = plt.subplots(figsize=(9, 4), dpi=DPI)
    for u in order:
        ax.plot(np.arange(c.shape[0]), c[:, u], label=f"unit {u}", lw=1.2)
    ax.set_xlabel("time step")
    ax.set_ylabel("value")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.set_title(title or "state trajectories (most variable units)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return fig


def _floor(v: np.ndarray) -> np.ndarray:
    # log axes cannot show 0 (a state the loss never reaches) or inf: leave a gap there instead
    return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def plot_gradient_flow(flows: Mapping[str, GradFlow], path: str | Path, *, title: str = "") -> Figure:
    """‖∂L/∂h‖ (left) and ‖∂L/∂x‖ (right) against the distance from the loss, one line per curve, log y.

    Each :class:`GradFlow` contributes one line per (layer, direction) on the left.
    """
    fig, (ax_h, ax_x) = plt.subplots(1, 2, figsize=(11, 4), dpi=DPI)
    for label, flow in flows.items():
        for (layer, direction), g in sorted(flow.h.items()):
            suffix = "" if len(flow.h) == 1 else f" L{layer}{'←' if direction else '→'}"
            ax_h.plot(np.arange(len(g)), _floor(g), label=f"{label}{suffix}", lw=1.4)
        ax_x.plot(np.arange(len(flow.x)), _floor(flow.x), label=label, lw=1.4)
    for ax, what in ((ax_h, "‖∂L/∂h_t‖"), (ax_x, "‖∂L/∂x_t‖")):
        ax.set_yscale("log")
        ax.set_xlabel("distance from the loss (steps)")
        ax.set_ylabel(what)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "gradient flow through time")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return fig


def plot_exploding(demo: Mapping[str, object], path: str | Path) -> Figure:
    """The exploding-gradient demo (:func:`rnnlab.inspection.gradflow.exploding_demo`): the growing
    ‖∂L/∂h‖ curve, and the training loss without and with gradient clipping."""
    flow: GradFlow = demo["flow"]  # type: ignore[assignment]
    fig, (ax_g, ax_l) = plt.subplots(1, 2, figsize=(11, 4), dpi=DPI)
    g = flow.h[(0, 0)]
    ax_g.plot(np.arange(len(g)), _floor(g), color="C3", lw=1.4, label=flow.label)
    ax_g.set_yscale("log")
    ax_g.set_xlabel("distance from the loss (steps)")
    ax_g.set_ylabel("‖∂L/∂h_t‖")
    ax_g.legend(fontsize=8)
    for name, color in (("no_clip", "C3"), ("clip", "C2")):
        hist = demo[name]  # type: ignore[index]
        loss = np.array(hist["loss"], dtype=float)
        shown = np.where(np.isfinite(loss), loss, np.nan)
        ax_l.plot(np.arange(len(loss)), shown, "o-", color=color, label=name.replace("_", " "))
        for k, v in enumerate(loss):
            if not math.isfinite(v):  # mark where the loss stopped being a number
                ax_l.axvline(k, color=color, ls="--", lw=1)
                ax_l.annotate("non-finite", (k, 1.0), xycoords=("data", "axes fraction"), color=color,
                              ha="right", va="top", fontsize=8, rotation=90)
    ax_l.set_yscale("log")
    ax_l.set_xlabel("SGD step")
    ax_l.set_ylabel("loss")
    ax_l.legend(fontsize=8)
    fig.suptitle("exploding gradients (ReLU Elman, large recurrent weights) and gradient clipping")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return fig
