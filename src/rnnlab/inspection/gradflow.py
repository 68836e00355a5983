"""Gradient flow through time: the norm of ∂loss/∂h_t and ∂loss/∂x_t against the distance from the loss.

The model runs as usual under :meth:`rnnlab.Recurrent.probing`, which adds a zero "probe" to every step's
state ``h_t`` inside the reference backend's step loop, so ∂loss/∂probe_t = ∂loss/∂h_t through the
recurrence (a gradient against a stacked copy of the states would miss every later step).  ``lag`` counts
recurrent steps between ``h_t`` and the last state of that direction (lag 0 = the state the loss reads),
which is what "vanishing" and "exploding" are about (Bengio et al. 1994; Hochreiter 1991; Pascanu et al. 2013).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnlab.recurrent import Recurrent

LossFn = Callable[[Tensor], Tensor]

#: gate-bias settings that open the memory path at initialisation, used by :func:`compare_cells`:
#: LSTM forget gate (Gers et al. 2000; Jozefowicz et al. 2015), GRU update gate z (keep h_{t-1}).
MEMORY_BIAS = {"lstm": 1.0, "gru": 1.0}


@dataclass
class GradFlow:
    """Gradient norms by distance from the loss.

    ``h[(layer, direction)][k]`` is ‖∂loss/∂h‖ (Frobenius norm over batch and units) of the state ``k`` steps
    before that direction's last step; ``x[k]`` is ‖∂loss/∂x_t‖ of the network input ``k`` steps before the
    last time step; ``loss`` the loss value.
    """

    h: dict[tuple[int, int], np.ndarray]
    x: np.ndarray
    loss: float
    label: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def ratio(self, lag: int, ref: int = 1, key: tuple[int, int] = (0, 0)) -> float:
        """‖∂L/∂h‖ at ``lag`` divided by the norm at ``ref`` (e.g. ratio(50) = lag 50 vs lag 1)."""
        g = self.h[key]
        return float(g[lag] / g[ref]) if g[ref] > 0 else float("nan")


def gradient_flow(rnn: Recurrent, x: Tensor, loss_fn: LossFn, label: str = "") -> GradFlow:
    """‖∂loss/∂h_t‖ and ‖∂loss/∂x_t‖ by lag for ``loss = loss_fn(output)``, the model run in eval mode.

    ``output`` is what ``rnn(x)`` returns (the layout of ``rnn``); ``x`` is a full-length batch, (B, T, I)
    when ``rnn.batch_first`` else (T, B, I).  The loss usually reads only the last step (e.g. a readout of
    ``output[:, -1]``) so that lag = distance from the loss.

    Example:
        >>> rnn = Recurrent("rnn", 2, 8, batch_first=True)
        >>> gf = gradient_flow(rnn, torch.randn(3, 20, 2), lambda out: out[:, -1].sum())
        >>> gf.h[(0, 0)].shape, bool(gf.ratio(10) < 1)
        ((20,), True)
    """
    if not isinstance(rnn, Recurrent):
        raise TypeError(f"rnn: expected an rnnlab.Recurrent, got {type(rnn).__name__}")
    if x.dim() != 3 or x.shape[-1] != rnn.input_size:
        raise ValueError(f"x: expected a batched 3-d input with {rnn.input_size} features, got {tuple(x.shape)}")
    x = x.detach().clone().requires_grad_(True)
    was_training = rnn.training
    rnn.eval()  # no dropout, zoneout's expectation: the curves describe the model, not one random mask
    try:
        with torch.enable_grad(), rnn.probing() as probes:
            out, _ = rnn(x)
            loss = loss_fn(out)
            if loss.dim() != 0:
                raise ValueError(f"loss_fn: must return a scalar, got shape {tuple(loss.shape)}")
            loss.backward()
    finally:
        rnn.train(was_training)
    h_norms = {}
    for (layer, direction), probe in probes.items():
        # probe.grad (T, B, H_out) in input time order; index = lag from the direction's last step, which is
        # T-1 forwards and 0 backwards.  No gradient at all: the loss never reaches this layer/direction
        if probe.grad is None:
            h_norms[(layer, direction)] = np.zeros(probe.shape[0])
            continue
        by_lag = probe.grad if direction else probe.grad.flip(0)
        h_norms[(layer, direction)] = np.array([float(g.norm()) for g in by_lag])
    gx = x.grad.transpose(0, 1) if rnn.batch_first else x.grad  # (T, B, I)
    x_norms = gx.flatten(1).norm(dim=1).flip(0).double().cpu().numpy()
    for p in rnn.parameters():  # leave no gradients behind on the caller's model
        p.grad = None
    return GradFlow(h_norms, x_norms, float(loss.detach()), label)


def adding_problem(batch: int, length: int, *, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997): x (B, T, 2) = [value, marker], y (B, 1).

    Two markers, one in each half of the sequence; the target is the sum of the two marked values.
    """
    values = torch.rand(batch, length, generator=generator)
    marker = torch.zeros(batch, length)
    half = max(length // 2, 1)
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator) if length > 1 else first
    rows = torch.arange(batch)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    return torch.stack([values, marker], dim=-1), (values * marker).sum(1, keepdim=True)


def _set_memory_bias(rnn: Recurrent, cell: str, value: float) -> None:
    """Set the forget-gate (LSTM) / update-gate (GRU) bias of every layer so the state is kept."""
    H = rnn.hidden_size
    for layer, direction, c in rnn.cells():
        p = rnn.layer_params(layer, direction)
        if "bias_ih" not in p:
            continue
        gates = getattr(c, "gates", None)
        if gates is not None and "f" in gates:
            k = gates.index("f")
        elif c.kind == "gru":
            k = 1  # blocks r, z, n
        else:
            continue
        with torch.no_grad():
            p["bias_ih"][k * H:(k + 1) * H].fill_(value)
            p["bias_hh"][k * H:(k + 1) * H].zero_()


def last_step_readout(rnn: Recurrent, y: Tensor, *, seed: int = 0) -> tuple[nn.Linear, LossFn]:
    """A fixed random linear readout of the last output step and its MSE loss against ``y`` (B, K)."""
    gen = torch.Generator().manual_seed(seed)
    D = rnn.num_directions
    head = nn.Linear(D * rnn.cell.output_size, y.shape[1])
    with torch.no_grad():
        bound = 1.0 / (D * rnn.cell.output_size) ** 0.5
        head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=gen))
        head.bias.zero_()

    def loss_fn(out: Tensor) -> Tensor:
        last = out[:, -1] if rnn.batch_first else out[-1]  # (B, D*H)
        return F.mse_loss(head(last), y)

    return head, loss_fn


def compare_cells(cells: tuple[str, ...] = ("rnn", "lstm", "gru"), *, length: int = 60, hidden: int = 32,
                  batch: int = 16, seed: int = 0, memory_bias: dict[str, float] | None = None,
                  **overrides: dict) -> dict[str, GradFlow]:
    """Gradient flow of freshly initialised cells on the same adding-problem batch and readout.

    ``memory_bias`` (default :data:`MEMORY_BIAS`) sets the LSTM forget-gate / GRU update-gate bias per
    cell name (by its family); ``overrides[name]`` passes extra options to :class:`Recurrent` for that name.

    Example:
        >>> flows = compare_cells(("rnn", "lstm"), length=30, hidden=8, batch=4)
        >>> flows["lstm"].ratio(25) > flows["rnn"].ratio(25)
        True
    """
    bias = MEMORY_BIAS if memory_bias is None else memory_bias
    x, y = adding_problem(batch, length, generator=torch.Generator().manual_seed(seed))
    flows = {}
    for name in cells:
        torch.manual_seed(seed)
        rnn = Recurrent(name, 2, hidden, batch_first=True, **overrides.get(name, {}))
        family = "lstm" if hasattr(rnn.cell, "gates") else rnn.cell.kind
        if family in bias:
            _set_memory_bias(rnn, name, bias[family])
        _, loss_fn = last_step_readout(rnn, y, seed=seed)
        flows[name] = gradient_flow(rnn, x, loss_fn, label=name)
    return flows


def exploding_demo(*, length: int = 50, hidden: int = 32, batch: int = 16, scale: float = 1.5,
                   steps: int = 5, lr: float = 0.1, clip: float = 1.0, seed: int = 0) -> dict[str, object]:
    """A ReLU Elman RNN whose recurrent matrix is ``scale`` × an orthogonal matrix: gradients explode.

    Returns ``{"flow": GradFlow, "no_clip": history, "clip": history}``: the gradient-vs-lag curve (it
    grows like ``scale**lag``) and, for a few SGD steps without and with ``clip_grad_norm_(clip)``
    (Pascanu et al. 2013), the per-step ``loss`` and pre-clipping ``grad_norm`` lists.  Without clipping
    the first update is enormous and the loss goes non-finite or explodes; with clipping it stays bounded.
    """
    x, y = adding_problem(batch, length, generator=torch.Generator().manual_seed(seed))

    def build() -> Recurrent:
        torch.manual_seed(seed)
        rnn = Recurrent("rnn_relu", 2, hidden, batch_first=True)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(seed)))
            rnn.weight_hh_l0.copy_(scale * q)
            rnn.bias_hh_l0.zero_()
            rnn.bias_ih_l0.fill_(0.1)  # keep units active so ReLU passes the gradient on
        return rnn

    rnn = build()
    _, loss_fn = last_step_readout(rnn, y, seed=seed)
    flow = gradient_flow(rnn, x, loss_fn, label=f"rnn_relu ×{scale}")
    result: dict[str, object] = {"flow": flow}
    for name, max_norm in (("no_clip", None), ("clip", clip)):
        rnn = build()
        head, loss_fn = last_step_readout(rnn, y, seed=seed)
        params = list(rnn.parameters()) + list(head.parameters())
        opt = torch.optim.SGD(params, lr=lr)
        losses, norms = [], []
        for _ in range(steps):
            opt.zero_grad()
            out, _ = rnn(x)
            loss = loss_fn(out)
            losses.append(loss.item())
            if not torch.isfinite(loss):
                norms.append(float("nan"))
                break
            loss.backward()
            total = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
            norms.append(float(total))
            opt.step()
        result[name] = {"loss": losses, "grad_norm": norms}
    return result
