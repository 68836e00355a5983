"""The pure-PyTorch reference backend: one input GEMM, then a Python loop of cell steps. Defines correctness."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.backends.base import LayerCall, LayerResult
from rnnlab.backends.step_loop import step_loop
from rnnlab.sequence import reverse_within_lengths, step_mask


class ReferenceBackend:
    """Supports every cell, device, dtype and option."""

    name = "reference"

    def supports(self, call: LayerCall) -> bool:
        return True

    def run(self, call: LayerCall) -> LayerResult:
        cell, p = call.cell, call.params
        x, lower, probe = call.x, call.lower, call.probe
        T = x.shape[0]
        if call.reverse:
            x = reverse_within_lengths(x, call.lengths)
            if lower is not None:
                lower = tuple(reverse_within_lengths(s, call.lengths) for s in lower)
            if probe is not None:
                probe = reverse_within_lengths(probe, call.lengths)
        mask = step_mask(call.lengths, T, x.device)  # (T, B, 1) bool or None
        xp = cell.project_input(x, p)  # (T, B, G*H): the input part of every gate as one GEMM
        record: dict[str, list[Tensor]] | None = {} if call.record else None

        fast = None
        if (call.rec_mask is None and call.zoneout == 0.0 and not call.want_states and lower is None
                and probe is None):
            fast = cell.sequence(xp, call.state, p, mask, record)
        if fast is not None:
            output, state = fast
            states = None
            records = {k: torch.stack(v) if isinstance(v, list) else v for k, v in (record or {}).items()}
        else:
            output, state, states, records = step_loop(cell, p, xp, call.state, mask=mask, rec_mask=call.rec_mask,
                                                       lower=lower, zoneout=call.zoneout, training=call.training,
                                                       record=record, want_states=call.want_states, probe=probe)

        if mask is not None:
            records = {k: v.masked_fill(~mask, 0.0) for k, v in records.items()}
        if call.reverse:
            output = reverse_within_lengths(output, call.lengths)
            if states is not None:
                states = tuple(reverse_within_lengths(s, call.lengths) for s in states)
            records = {k: reverse_within_lengths(v, call.lengths) for k, v in records.items()}
        return LayerResult(output, state, states, records)
