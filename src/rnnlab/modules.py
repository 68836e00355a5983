"""Drop-in replacements for torch.nn.RNN, LSTM and GRU: same signatures, outputs, shapes and state_dict keys."""

from __future__ import annotations

from typing import Any

import torch

from rnnlab.recurrent import Recurrent
from rnnlab.validation import OptionError


class _TorchRepr:
    """Mixin: print like ``torch.nn`` (``LSTM(3, 5, num_layers=2)``), without the cell name."""

    def _repr_head(self) -> str:
        return ""


def _no_proj_size(options: dict[str, Any]) -> None:
    """torch.nn.RNN/GRU reject any ``proj_size`` (even 0) with ValueError; OptionError is also a TypeError."""
    if "proj_size" in options:
        raise OptionError(f"proj_size: only supported by LSTM, not RNN or GRU, got proj_size={options['proj_size']!r}")


class LSTM(_TorchRepr, Recurrent):
    r"""``torch.nn.LSTM`` with the same signature, outputs and ``state_dict``, running on rnnlab.

    See :class:`rnnlab.cells.LSTMCell` for the equations.  Extra keyword-only options
    (``recurrent_dropout``, ``zoneout``, ``backend``, ``forget_bias``, ``peepholes``, ...) are those of
    :class:`Recurrent` and of the cell.

    Example:
        >>> ref = torch.nn.LSTM(3, 5, num_layers=2, proj_size=2)
        >>> ours = LSTM(3, 5, num_layers=2, proj_size=2)
        >>> _ = ours.load_state_dict(ref.state_dict())
        >>> x = torch.randn(7, 4, 3)
        >>> torch.allclose(ours(x)[0], ref(x)[0], atol=1e-6)
        True
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **options: Any) -> None:
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size=proj_size, device=device, dtype=dtype, **options)
        self.mode = "LSTM"  # torch.nn.RNNBase attributes, read by code written for torch.nn
        self.proj_size = proj_size


class GRU(_TorchRepr, Recurrent):
    r"""``torch.nn.GRU`` with the same signature, outputs and ``state_dict``, running on rnnlab.

    ``reset_after=False`` (keyword-only) selects the paper's form; see :class:`rnnlab.cells.GRUCell`.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **options: Any) -> None:
        _no_proj_size(options)
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, **options)
        self.mode = "GRU"
        self.proj_size = 0


class RNN(_TorchRepr, Recurrent):
    r"""``torch.nn.RNN`` (Elman) with the same signature, outputs and ``state_dict``, running on rnnlab.

    ``nonlinearity`` is ``"tanh"`` or ``"relu"``; see :class:`rnnlab.cells.ElmanCell`.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **options: Any) -> None:
        _no_proj_size(options)
        super().__init__("rnn", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         nonlinearity=nonlinearity, device=device, dtype=dtype, **options)
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        self.proj_size = 0

    def extra_repr(self) -> str:
        # torch.nn.RNN's repr never shows the nonlinearity; print exactly what it prints
        options = self.cell_kwargs
        self.cell_kwargs = {k: v for k, v in options.items() if k != "nonlinearity"}
        try:
            return super().extra_repr()
        finally:
            self.cell_kwargs = options
