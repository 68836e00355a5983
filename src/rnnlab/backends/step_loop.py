"""The layer computed with the cell's own differentiable PyTorch step: the fused drivers' second-derivative path."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.cells.base import RecurrentCell, StepContext


def differentiable_loop(cell: RecurrentCell, p: dict[str, Tensor], x: Tensor, valid: Tensor,
                        rec_mask: Tensor | None, keeps: tuple[Tensor, ...] | None, state: tuple[Tensor, ...]):
    """One layer and direction with the cell's own PyTorch step (the definition the fused drivers equal):
    ``valid`` (T, B) marks each row's valid prefix, ``rec_mask`` is the recurrent dropout mask, ``keeps`` the
    zoneout keep masks (T, B, S_k) per state part.  Plain autograd ops, so it differentiates to any order.
    Returns the outputs (T, B, H_out), zero at padded steps, and the final state."""
    xp = cell.project_input(x, p)
    ctx = StepContext(rec_mask)
    outs = []
    for t in range(x.shape[0]):
        new = cell.step(xp[t], state, p, ctx)
        if keeps is not None:
            new = tuple(k[t] * s + (1.0 - k[t]) * n for k, n, s in zip(keeps, new, state))
        m = valid[t].bool().unsqueeze(-1)  # (B, 1)
        state = tuple(torch.where(m, n, s) for n, s in zip(new, state))
        outs.append(state[0] * m)
    return torch.stack(outs), state
