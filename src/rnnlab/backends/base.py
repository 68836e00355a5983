"""The backend seam: what the sequence wrapper asks a backend to compute for one layer and direction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from rnnlab.cells.base import RecurrentCell, State


@dataclass
class LayerCall:
    """One layer, one direction, over a whole (padded, time-major) batch.

    Shapes: T time, B batch, I input features, S_k size of state component k.

    - ``x``: (T, B, I) layer input (already dropped out between layers by the wrapper).
    - ``state``: initial state, one (B, S_k) tensor per component of ``cell.state_names``.
    - ``params``: the cell's parameters by the cell's own names (``weight_ih``, ``weight_hh``, ...).
    - ``lengths``: (B,) int64 on the CPU, each in [1, T], or ``None`` when every sequence has T steps.
      Padded steps leave the state unchanged and give zero output.
    - ``reverse``: process each sequence from its last valid step to its first (outputs stay in input order).
    - ``lower``: for ``cell.needs_lower``: the layer below's state sequence, one (T, B, S_k) per component,
      in input time order, or ``None`` on the first layer.
    - ``rec_mask``: variational recurrent dropout mask (B, H_out), same for every step, or ``None``.
    - ``zoneout``: probability of keeping each unit's previous value (Krueger et al. 2016); 0 = off.
    - ``training``: train mode (zoneout is stochastic in training, its expectation in eval).
    - ``record``: collect gate activations (inspection); ``want_states``: return the state sequence.
    - ``probe``: (T, B, H_out) zeros in input time order, added to h at every step so that after a backward
      ``probe.grad[t]`` is ∂loss/∂h_t (gradient-flow inspection); only the reference backend takes it.
    """

    cell: RecurrentCell
    params: dict[str, Tensor]
    x: Tensor
    state: State
    lengths: Tensor | None = None
    reverse: bool = False
    lower: State | None = None
    rec_mask: Tensor | None = None
    zoneout: float = 0.0
    training: bool = False
    record: bool = False
    want_states: bool = False
    probe: Tensor | None = None


@dataclass
class LayerResult:
    """What a backend returns: ``output`` (T, B, H_out) in input time order, zero at padded steps;
    ``state`` the final state (each sequence's last valid step); ``states`` the per-step state sequence
    (each (T, B, S_k)) when asked; ``records`` gate name -> (T, B, H) when asked."""

    output: Tensor
    state: State
    states: State | None = None
    records: dict[str, Tensor] = field(default_factory=dict)


class Backend(Protocol):
    """A way to run :class:`LayerCall`. ``supports`` must be cheap; ``run`` must equal the reference."""

    name: str

    def supports(self, call: LayerCall) -> bool: ...

    def run(self, call: LayerCall) -> LayerResult: ...


def plain_eager(x: Tensor) -> bool:
    """``x`` is a plain tensor in eager mode: not under torch.compile / export, a torch.func transform or jit
    tracing, where only registered ops (with fake and batching rules) may run."""
    return (type(x) is Tensor and not torch._C._are_functorch_transforms_active()
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd must record a call on these tensors (grad mode on and one of them requires grad)."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # a plain loop: this runs on every layer call
        if t.requires_grad:
            return True
    return False
