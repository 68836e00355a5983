"""One masked cell step as a module: the unit both the ONNX Scan body and torch.export's scan trace."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from rnnlab.backends.step_loop import _zoneout
from rnnlab.cells.base import RecurrentCell, StepContext


class MaskedStep(nn.Module):
    """One masked step: ``(state..., x_t, m_t, lower...) -> (new state..., y_t, new state again...)``.

    ``m_t`` (B, 1) is 1 on valid steps; padded steps keep the old state and output zeros, exactly as the
    reference backend does.  Parameters are buffers so the trace stores them as initializers.
    """

    def __init__(self, cell: RecurrentCell, params: dict[str, Tensor], zoneout: float, n_lower: int,
                 want_states: bool) -> None:
        super().__init__()
        self.cell = cell
        self.names = list(params)
        for n, t in params.items():
            self.register_buffer("p_" + n, t.detach().clone())
        self.zoneout = zoneout
        self.n_state = len(cell.state_names)
        self.n_lower = n_lower
        self.want_states = want_states
        # cells that cache derived constants (clockwork's mask and periods) get them as buffers here: a
        # tensor captured from outside the module cannot enter torch.export's scan
        self._const_key = None
        if hasattr(cell, "_constants"):
            ref = next(iter(params.values()))
            self._const_key = (ref.device, ref.dtype)
            for k, t in enumerate(cell._constants(*self._const_key)):
                self.register_buffer(f"const{k}", t.clone())

    @contextmanager
    def bound_constants(self) -> Iterator[None]:
        """While tracing, the cell's constant cache holds this module's buffers (the traced versions).

        Entered outside torch's scan: mutating the cell inside the scanned function is a side effect.
        """
        if self._const_key is None:
            yield
            return
        saved = self.cell._cache
        self.cell._cache = {self._const_key: tuple(t for n, t in self.named_buffers() if n.startswith("const"))}
        try:
            yield
        finally:
            self.cell._cache = saved

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        k = self.n_state
        state, x_t, m_t = tuple(args[:k]), args[k], args[k + 1]
        lower = tuple(args[k + 2:]) if self.n_lower else None
        p = {n: getattr(self, "p_" + n) for n in self.names}
        xp = self.cell.project_input(x_t, p)
        new = self.cell.step(xp, state, p, StepContext(None, lower, None))
        if self.zoneout:
            new = _zoneout(new, state, self.cell.state_names, self.zoneout, False)
        keep = m_t > 0.5  # (B, 1)
        new = tuple(torch.where(keep, n, s) for n, s in zip(new, state))
        y = new[0] * m_t
        # clones: torch's scan forbids returning one tensor twice (the ONNX trace makes them Identity nodes)
        return (*new, y, *(tuple(s.clone() for s in new) if self.want_states else ()))
