"""Run a model once with recording on and return every gate / state activation as numpy (B, T, H)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from rnnlab.recurrent import Recurrent


@dataclass
class Activations:
    """Recorded activations of one batch.

    ``values[(layer, direction)][gate]`` is a float32 array (B, T, H) (batch-first whatever the model's
    layout), zero at padded steps; ``lengths`` (B,) the valid steps of each sequence; ``cell`` the cell's
    registered kind (``"lstm"``, ``"gru"``, ``"rnn"``, ...).
    """

    values: dict[tuple[int, int], dict[str, np.ndarray]]
    lengths: np.ndarray
    cell: str

    @property
    def keys(self) -> list[tuple[int, int]]:
        return sorted(self.values)

    def gates(self, key: tuple[int, int] = (0, 0)) -> list[str]:
        """Gate names of one layer/direction, ``h`` last."""
        names = [n for n in self.values[key] if n != "h"]
        return names + ["h"]


def _find_rnn(model: nn.Module) -> Recurrent:
    if isinstance(model, Recurrent):
        return model
    rnn = getattr(model, "rnn", None)
    if isinstance(rnn, Recurrent):
        return rnn
    found = [m for m in model.modules() if isinstance(m, Recurrent)]
    if len(found) != 1:
        raise TypeError(f"model: expected an rnnlab.Recurrent or a model holding exactly one, "
                        f"got {type(model).__name__} with {len(found)}")
    return found[0]


def record_activations(model: nn.Module, x: Tensor, lengths: Tensor | None = None) -> Activations:
    """Forward ``x`` through ``model`` (a :class:`Recurrent` or e.g. a ``SequenceModel``) in eval mode,
    no grad, and return every recorded gate.

    For a bare :class:`Recurrent`, ``x`` is in its own layout; for a model, whatever ``model(x, lengths)``
    takes.

    Example:
        >>> acts = record_activations(Recurrent("gru", 3, 4), torch.randn(6, 2, 3))
        >>> acts.gates(), acts.values[(0, 0)]["z"].shape
        (['r', 'z', 'n', 'h'], (2, 6, 4))
    """
    rnn = _find_rnn(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), rnn.recording() as rec:
            model(x, lengths=lengths) if lengths is not None else model(x)
    finally:
        model.train(was_training)
    values: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for key, gates in rec.gates.items():
        out = {}
        for name, v in gates.items():
            if v.dim() == 2:  # unbatched (T, H) -> (1, T, H)
                v = v.unsqueeze(0)
            elif not rnn.batch_first:
                v = v.transpose(0, 1)  # (T, B, H) -> (B, T, H)
            out[name] = v.detach().float().cpu().numpy()
        values[key] = out
    B, T = next(iter(values[(0, 0)].values())).shape[:2]
    lens = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(torch.as_tensor(lengths).cpu())
    return Activations(values, lens, rnn.cell.kind)
