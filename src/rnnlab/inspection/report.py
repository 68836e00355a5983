"""Everything ``rnnlab inspect`` writes for one model: PNG plots, the HTML page and the units JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnlab.inspection.capture import Activations, record_activations
from rnnlab.inspection.gradflow import GradFlow, compare_cells, exploding_demo, gradient_flow
from rnnlab.inspection.html import write_page
from rnnlab.inspection.plots import (plot_cell_trajectories, plot_exploding, plot_gate_heatmaps,
                                  plot_gradient_flow)
from rnnlab.inspection.units import rank_units, sequence_features, text_features


def _suffix(layer: int, direction: int) -> str:
    return f"l{layer}" + ("_reverse" if direction else "")


def last_step_loss(model: nn.Module, y: Tensor):
    """The loss at the model's last time step as a function of the Recurrent output (B, T, D*H).

    Matches ``model``'s head for full-length sequences: "class" / "regression" read the last layer's final
    states (forward at T-1, backward at 0) as :class:`~rnnlab.models.SequenceModel` does; "seq_class"
    takes the cross-entropy of the last step only (its own prediction as target where ``y`` is ignored).
    """
    rnn = model.rnn
    Hf = rnn.cell.output_size

    def loss_fn(out: Tensor) -> Tensor:
        if model.target == "seq_class":
            logits = model.head(out[:, -1])  # (B, C)
            target = y[:, -1].clone()
            ignored = target < 0
            target[ignored] = logits.detach().argmax(-1)[ignored]
            return F.cross_entropy(logits, target)
        last = out[:, -1, :Hf] if rnn.num_directions == 1 else torch.cat([out[:, -1, :Hf], out[:, 0, Hf:]], -1)
        pred = model.head(last)
        if model.target == "class":
            return F.cross_entropy(pred, y)
        return F.mse_loss(pred, y.to(pred.dtype))

    return loss_fn


def model_gradient_flow(model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor | None = None) -> GradFlow:
    """:func:`~rnnlab.inspection.gradflow.gradient_flow` of a ``SequenceModel``'s last-step loss.

    Sequences are cut to the shortest length so every step is real; for token inputs ∂L/∂x is taken with
    respect to the embedding vectors.
    """
    if lengths is not None:
        T = int(torch.as_tensor(lengths).min())
        x = x[:, :T]
        if model.target == "seq_class":
            y = y[:, :T]
    was_training = model.training
    model.eval()
    try:
        inp = model.embedding(x).detach() if model.embedding is not None else x.float()  # (B, T, E)
        flow = gradient_flow(model.rnn, inp, last_step_loss(model, y), label=f"this model ({model.rnn.cell.kind})")
    finally:
        model.train(was_training)
    for p in model.parameters():
        p.grad = None
    return flow


def _features(acts: Activations, x: Tensor, texts: Sequence[str] | None) -> dict[str, np.ndarray]:
    B = len(acts.lengths)
    T = next(iter(acts.values[acts.keys[0]].values())).shape[1]
    if texts is not None:
        feats: dict[str, np.ndarray] = {}
        for b, s in enumerate(texts):
            for name, f in text_features(s).items():
                feats.setdefault(name, np.zeros((B, T)))[b, : len(f)] = f
        return feats
    if x.is_floating_point():
        return sequence_features(x.detach().cpu().numpy(), acts.lengths)
    return {"time step": np.broadcast_to(np.arange(T, dtype=float), (B, T)).copy()}


def inspect_model(model: nn.Module, out_dir: str | Path, *, x: Tensor, y: Tensor | None = None,
                  lengths: Tensor | None = None, texts: Sequence[str] | None = None, title: str = "",
                  top: int = 20, reference: bool = True, seed: int = 0) -> dict[str, object]:
    """Write the inspection of ``model`` (a ``SequenceModel``) on the batch ``x`` into ``out_dir``.

    Files: ``gates_l{L}[_reverse].png`` (heatmaps of every gate of the first sequence),
    ``states_l{L}[_reverse].png`` (cell-state trajectories, ``c`` for LSTMs, else ``h``),
    ``gradflow_model.png`` (this model, needs ``y``), ``gradflow_cells.png`` and ``exploding.png``
    (reference curves of fresh RNN / LSTM / GRU, and the exploding case with and without clipping, when
    ``reference``), ``units.json`` (ranked units) and ``index.html`` (the page).  ``texts[b]`` is the text
    of sequence ``b`` for character models.  Returns the summary also stored in ``units.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    acts = record_activations(model, x, lengths)
    ranking = rank_units(acts, _features(acts, x, texts), top=top)
    images: list[tuple[str, Path]] = []
    n0 = int(acts.lengths[0])
    for (layer, direction) in acts.keys:
        vals = acts.values[(layer, direction)]
        name = _suffix(layer, direction)
        where = f"layer {layer} {'backward' if direction else 'forward'}"
        path = out / f"gates_{name}.png"
        fig = plot_gate_heatmaps({g: vals[g][0, :n0] for g in acts.gates((layer, direction))}, path,
                                 title=f"gates, {where}, sequence 0")
        plt.close(fig)
        images.append((f"Gates, {where} (sequence 0)", path))
        state = "c" if "c" in vals else "h"
        path = out / f"states_{name}.png"
        fig = plot_cell_trajectories(vals[state][0, :n0], path, title=f"{state} trajectories, {where}")
        plt.close(fig)
        images.append((f"{state} trajectories, {where}", path))
    curves: dict[str, object] = {}
    if y is not None:
        flow = model_gradient_flow(model, x, y, lengths)
        path = out / "gradflow_model.png"
        plt.close(plot_gradient_flow({flow.label: flow}, path, title="gradient flow of this model's last-step loss"))
        images.append(("Gradient flow of this model", path))
        curves["model"] = {f"{k[0]},{k[1]}": v.tolist() for k, v in flow.h.items()}
    if reference:
        flows = compare_cells(seed=seed)
        path = out / "gradflow_cells.png"
        plt.close(plot_gradient_flow(flows, path, title="fresh RNN / LSTM (forget bias 1) / GRU (update bias 1)"
                                     " on the adding problem, T=60"))
        images.append(("Vanishing gradients: Elman RNN vs LSTM / GRU", path))
        curves["cells"] = {k: v.h[(0, 0)].tolist() for k, v in flows.items()}
        demo = exploding_demo(seed=seed)
        path = out / "exploding.png"
        plt.close(plot_exploding(demo, path))
        images.append(("Exploding gradients, with and without clipping", path))
        curves["exploding"] = {"h": demo["flow"].h[(0, 0)].tolist(), "no_clip": demo["no_clip"],
                               "clip": demo["clip"]}
    summary = {"title": title, "cell": acts.cell, "layers": [list(k) for k in acts.keys],
               "gates": acts.gates(), **ranking, "gradient_flow": curves}
    (out / "units.json").write_text(json.dumps(summary, indent=1, allow_nan=True))
    top_line = ""
    if ranking["top_units"]:
        u = ranking["top_units"][0]
        top_line = (f" Most interpretable: layer {u['layer']} gate {u['gate']} unit {u['unit']} ~ "
                    f"{u['feature']} (r = {u['r']:.2f}).")
    write_page(out / "index.html", acts, title=title or f"rnnlab inspect: {acts.cell}", texts=texts,
               top_units=ranking["top_units"], images=images,
               summary=f"Cell {acts.cell}, {len(acts.keys)} layer/direction(s), {len(acts.lengths)} "
                       f"sequence(s).{top_line}")
    summary["files"] = sorted(p.name for p in out.iterdir())
    return summary
