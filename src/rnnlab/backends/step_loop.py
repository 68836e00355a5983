"""The one time loop of a layer direction with the cell's own PyTorch step: the reference backend, the fused
drivers' second-derivative path and gradient-flow probes all run it."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.cells.base import RecurrentCell, State, StepContext

# zoneout mixes these state components only (never step counters or gate histories)
_ZONEOUT_STATES = ("h", "c")


def zoneout_keep(shape: tuple[int, ...], rate: float, training: bool, dtype: torch.dtype,
                 device: torch.device | str) -> Tensor:
    """Zoneout's keep weights (Krueger et al. 2016): in training 1 (keep the previous value) with probability
    ``rate``, else 0; in eval ``rate`` itself, the expectation.  Every backend draws through here, in the
    reference's order, so one seed gives the same masks everywhere: float32 uniforms compared with ``rate``
    whatever ``dtype`` (the same stream for every dtype; ``bernoulli_`` took 1.8x as long per unit, 15% of an
    LSTM training step at (100, 64, 256))."""
    if not training:
        return torch.full(shape, rate, dtype=dtype, device=device)
    # compared in place (1.0 / 0.0): no bool tensor and no conversion pass; the same values as (u < rate).to(dtype)
    keep = torch.rand(shape, device=device).lt_(rate)
    return keep if dtype == torch.float32 else keep.to(dtype)


def _zoneout(new: tuple[Tensor, ...], old: tuple[Tensor, ...], names: tuple[str, ...], rate: float,
             training: bool) -> tuple[Tensor, ...]:
    out = []
    for name, n, o in zip(names, new, old):
        if name not in _ZONEOUT_STATES:
            out.append(n)
        else:
            out.append(torch.lerp(n, o, zoneout_keep(n.shape, rate, training, n.dtype, n.device)))
    return tuple(out)


def step_loop(cell: RecurrentCell, p: dict[str, Tensor], xp: Tensor, state: State, *, mask: Tensor | None = None,
              rec_mask: Tensor | None = None, lower: State | None = None, zoneout: float = 0.0,
              training: bool = False, keeps: tuple[Tensor, ...] | None = None,
              record: dict[str, list[Tensor]] | None = None, want_states: bool = False, probe: Tensor | None = None
              ) -> tuple[Tensor, State, State | None, dict[str, Tensor]]:
    """Run ``cell.step`` over the projected input ``xp`` (T, B, G*H) in processing order, from ``state``.

    - ``mask``: (T, B, 1) bool, true at valid steps (padded steps keep the state), or ``None``.
    - ``rec_mask``: recurrent dropout mask (B, H_out); ``lower``: the layer below's states, each (T, B, S_k).
    - zoneout: either ``zoneout`` > 0 (sampled here each step in ``training``, its expectation otherwise), or
      ``keeps``, (T, B, S_k) keep probabilities drawn by the caller for the leading state parts (the fused
      drivers draw them for their kernels, and their gradients through this loop must see the same masks);
      parts past ``len(keeps)`` take their new value.
    - ``record``: a dict that the cell's ``emit`` fills, stacked into the returned records.
    - ``want_states``: also return every step's state, each part (T, B, S_k).
    - ``probe``: (T, B, H_out) zeros added to h at every step, so that ∂loss/∂probe[t] = ∂loss/∂h_t (gradient
      flow through time: a per-step node of the recurrence itself, which a stacked copy of h is not).

    Returns the outputs (T, B, H_out), zero at padded steps, the final state, the state sequence (or ``None``)
    and the records, each (T, B, H).  Plain autograd ops, so it differentiates to any order.
    """
    ctx = StepContext(rec_mask, None, record)
    names = cell.state_names
    outs: list[Tensor] = []
    seq: list[list[Tensor]] = [[] for _ in state] if want_states else []
    # unbind, not xp[t]: the backward of T separate selects would build T full-size (T, B, G*H) zero
    # tensors (quadratic in T); unbind's backward is one stack
    xs = xp.unbind(0)
    masks = mask.unbind(0) if mask is not None else None
    lowers = list(zip(*(s.unbind(0) for s in lower))) if lower is not None else None
    probes = probe.unbind(0) if probe is not None else None
    for t, xp_t in enumerate(xs):
        if lowers is not None:
            ctx.lower = lowers[t]
        new = cell.step(xp_t, state, p, ctx)
        if keeps is not None:  # arithmetic, not lerp: it promotes mixed dtypes (autocast keeps, fp32 states)
            mixed = tuple(k[t] * s + (1.0 - k[t]) * n for k, n, s in zip(keeps, new, state))
            new = mixed + tuple(new[len(mixed):])
        elif zoneout:
            new = _zoneout(new, state, names, zoneout, training)
        if masks is not None:
            m = masks[t]  # (B, 1): padded sequences keep their state
            new = tuple(torch.where(m, n, s) for n, s in zip(new, state))
        if probes is not None:  # + 0: the values stay exact, the graph gains a node per step
            new = (new[0] + probes[t],) + tuple(new[1:])
        state = new
        outs.append(state[0])
        for acc, s in zip(seq, state):
            acc.append(s)
    output = torch.stack(outs)  # (T, B, H_out)
    if mask is not None:
        output = output.masked_fill(~mask, 0.0)
    states = tuple(torch.stack(s) for s in seq) if want_states else None
    records = {k: torch.stack(v) for k, v in (record or {}).items()}
    return output, state, states, records


def differentiable_loop(cell: RecurrentCell, p: dict[str, Tensor], x: Tensor, valid: Tensor,
                        rec_mask: Tensor | None, keeps: tuple[Tensor, ...] | None, state: tuple[Tensor, ...],
                        lower: State | None = None, want_states: bool = False):
    """:func:`step_loop` as the fused drivers call it (their second-derivative path): ``x`` (T, B, I) not yet
    projected, ``valid`` (T, B) marking each row's valid prefix, ``keeps`` the zoneout keep masks (T, B, S_k)
    of the leading state parts, ``lower`` the layer below's states.  Returns the outputs (T, B, H_out), zero at
    padded steps, the final state and, with ``want_states``, every step's state (else ``None``)."""
    mask = valid.bool().unsqueeze(-1)  # (T, B) -> (T, B, 1)
    output, final, states, _ = step_loop(cell, p, cell.project_input(x, p), state, mask=mask, rec_mask=rec_mask,
                                         keeps=keeps, lower=lower, want_states=want_states)
    return output, final, states
