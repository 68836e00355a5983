"""The pure-PyTorch reference backend: one input GEMM, then a Python loop of cell steps. Defines correctness."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.backends.base import LayerCall, LayerResult
from rnnlab.cells.base import StepContext
from rnnlab.sequence import reverse_within_lengths, step_mask

# zoneout mixes these state components only (never step counters or gate histories)
_ZONEOUT_STATES = ("h", "c")


def _zoneout(new: tuple[Tensor, ...], old: tuple[Tensor, ...], names: tuple[str, ...], rate: float,
             training: bool) -> tuple[Tensor, ...]:
    out = []
    for name, n, o in zip(names, new, old):
        if name not in _ZONEOUT_STATES:
            out.append(n)
        elif training:
            keep = torch.empty_like(n).bernoulli_(rate)  # 1 = keep the previous value (Krueger et al. 2016)
            out.append(torch.lerp(n, o, keep))
        else:
            out.append(torch.lerp(n, o, torch.full_like(n, rate)))
    return tuple(out)


class ReferenceBackend:
    """Supports every cell, device, dtype and option."""

    name = "reference"

    def supports(self, call: LayerCall) -> bool:
        return True

    def run(self, call: LayerCall) -> LayerResult:
        cell, p = call.cell, call.params
        x, lower = call.x, call.lower
        T = x.shape[0]
        if call.reverse:
            x = reverse_within_lengths(x, call.lengths)
            if lower is not None:
                lower = tuple(reverse_within_lengths(s, call.lengths) for s in lower)
        mask = step_mask(call.lengths, T, x.device)  # (T, B, 1) bool or None
        xp = cell.project_input(x, p)  # (T, B, G*H): the input part of every gate as one GEMM
        record: dict[str, list[Tensor]] | None = {} if call.record else None

        fast = None
        if call.rec_mask is None and call.zoneout == 0.0 and not call.want_states and lower is None:
            fast = cell.sequence(xp, call.state, p, mask, record)
        if fast is not None:
            output, state = fast
            states = None
            records = {k: torch.stack(v) if isinstance(v, list) else v for k, v in (record or {}).items()}
        else:
            output, state, states, records = self._loop(call, xp, mask, lower, record)

        if mask is not None:
            records = {k: v.masked_fill(~mask, 0.0) for k, v in records.items()}
        if call.reverse:
            output = reverse_within_lengths(output, call.lengths)
            if states is not None:
                states = tuple(reverse_within_lengths(s, call.lengths) for s in states)
            records = {k: reverse_within_lengths(v, call.lengths) for k, v in records.items()}
        return LayerResult(output, state, states, records)

    @staticmethod
    def _loop(call: LayerCall, xp: Tensor, mask: Tensor | None, lower, record):
        cell, p = call.cell, call.params
        state = call.state
        ctx = StepContext(call.rec_mask, None, record)
        names = cell.state_names
        outs: list[Tensor] = []
        seq: list[list[Tensor]] = [[] for _ in state] if call.want_states else []
        # unbind, not xp[t]: the backward of T separate selects would build T full-size (T, B, G*H) zero
        # tensors (quadratic in T); unbind's backward is one stack
        xs = xp.unbind(0)
        masks = mask.unbind(0) if mask is not None else None
        lowers = list(zip(*(s.unbind(0) for s in lower))) if lower is not None else None
        for t, xp_t in enumerate(xs):
            if lowers is not None:
                ctx.lower = lowers[t]
            new = cell.step(xp_t, state, p, ctx)
            if call.zoneout:
                new = _zoneout(new, state, names, call.zoneout, call.training)
            if masks is not None:
                m = masks[t]  # (B, 1): padded sequences keep their state
                new = tuple(torch.where(m, n, s) for n, s in zip(new, state))
            state = new
            outs.append(state[0])
            for acc, s in zip(seq, state):
                acc.append(s)
        output = torch.stack(outs)  # (T, B, H_out)
        if mask is not None:
            output = output.masked_fill(~mask, 0.0)
        states = tuple(torch.stack(s) for s in seq) if call.want_states else None
        records = {k: torch.stack(v) for k, v in (record or {}).items()}
        return output, state, states, records
