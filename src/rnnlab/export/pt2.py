"""torch.export of any rnnlab model with a dynamic batch and sequence length (time loop as torch's scan)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch._higher_order_ops.scan import scan

from rnnlab.export.check import check_exportable
from rnnlab.export.step import MaskedStep
from rnnlab.models import SequenceModel
from rnnlab.recurrent import Recurrent


def _reverse(x: Tensor, idx: Tensor) -> Tensor:
    """Reverse (T, B, F) within each sequence's length with the (T, B) index of rnnlab.sequence.reverse_index."""
    return x.gather(0, idx.unsqueeze(-1).expand_as(x))


class ScanStack(nn.Module):
    """The layers of a :class:`Recurrent` (eval semantics) with the time loop as ``torch.scan``.

    A Python loop over time would be unrolled by ``torch.export`` at the example's length; ``scan`` keeps
    the length symbolic.  Each step is the masked cell step of the ONNX Scan path (reference math).
    """

    def __init__(self, rnn: Recurrent) -> None:
        super().__init__()
        self.num_layers, self.D = rnn.num_layers, rnn.num_directions
        self.steps = nn.ModuleList()
        for layer, d, cell in rnn.cells():
            want = layer + 1 < rnn.num_layers and rnn._cells[layer + 1][0].needs_lower
            n_lower = len(cell.state_names) if cell.needs_lower and layer > 0 else 0
            self.steps.append(MaskedStep(cell, rnn.layer_params(layer, d), rnn.zoneout, n_lower, want))

    def forward(self, x: Tensor, lengths: Tensor, init: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """``x`` (T, B, I), ``lengths`` (B,) int64, ``init`` (L*D, B, S_k) -> output (T, B, D*H), finals."""
        T = x.shape[0]
        t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
        L = lengths.unsqueeze(0)  # (1, B)
        valid = t < L  # (T, B)
        mask = valid.unsqueeze(-1).to(x.dtype)  # (T, B, 1)
        rev = torch.where(valid, L - 1 - t, t.expand_as(valid))  # (T, B)
        finals: list[list[Tensor]] = [[] for _ in init]
        lower: list[list[Tensor] | None] = [None] * self.D
        for layer in range(self.num_layers):
            outs, next_lower = [], []
            for d in range(self.D):
                step = self.steps[layer * self.D + d]
                k = layer * self.D + d
                x_d = _reverse(x, rev) if d else x
                low = lower[d] if step.n_lower else []
                if d:
                    low = [_reverse(s, rev) for s in low]
                n = step.n_state

                def combine(carry, xs, step=step, n=n):
                    res = step(*carry, *xs)
                    return list(res[:n]), list(res[n:])

                with step.bound_constants():
                    fin, seq = scan(combine, [s[k] for s in init], [x_d, mask, *low])
                y, states = seq[0], seq[1:]
                if d:
                    y = _reverse(y, rev)
                    states = [_reverse(s, rev) for s in states]
                outs.append(y)
                next_lower.append(states)
                for acc, f in zip(finals, fin):
                    acc.append(f)
            x = outs[0] if self.D == 1 else torch.cat(outs, dim=-1)  # (T, B, D*H)
            lower = next_lower
        return x, [torch.stack(parts) for parts in finals]


class ExportableModel(nn.Module):
    """A :class:`SequenceModel` with explicit inputs for export: ``(x, lengths, *state0) -> (output, *state_n)``."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.embedding, self.head, self.target = model.embedding, model.head, model.target
        self.stack = ScanStack(model.rnn)
        self.D, self.LD = model.rnn.num_directions, model.rnn.num_layers * model.rnn.num_directions

    def forward(self, x: Tensor, lengths: Tensor, *state0: Tensor) -> tuple[Tensor, ...]:
        if self.embedding is not None:
            x = self.embedding(x)  # (B, T) -> (B, T, E)
        y, finals = self.stack(x.transpose(0, 1), lengths, list(state0))  # y (T, B, D*H)
        if self.target == "seq_class":
            return (self.head(y.transpose(0, 1)), *finals)
        last = finals[0][self.LD - self.D:].transpose(0, 1).flatten(1)  # (B, D*H)
        return (self.head(last), *finals)


def export_pt2(model: SequenceModel, *, batch: int = 2, time: int = 5) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval mode) with dynamic batch and time dimensions."""
    check_exportable(model)
    model = model.eval()
    wrapper = ExportableModel(model).eval()
    rnn = model.rnn
    if model.embedding is not None:
        x = torch.randint(0, model.vocab_size, (batch, time))
    else:
        x = torch.randn(batch, time, model.input_size)
    lengths = torch.full((batch,), time, dtype=torch.int64)
    state = tuple(torch.zeros(s) for s in rnn.state_shapes(batch))
    B, T = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=1)
    shapes = ({0: B, 1: T}, {0: B}, tuple({1: B} for _ in state))  # *state0 is one tuple input
    with torch.no_grad():
        return torch.export.export(wrapper, (x, lengths, *state), dynamic_shapes=shapes)


def save_pt2(program: torch.export.ExportedProgram, path: str | Path) -> None:
    torch.export.save(program, str(path))
