"""Seq2SeqConfig: the architecture options of an encoder-decoder (cells, sizes, attention, teacher forcing)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rnnlab.seq2seq.attention import ATTENTIONS

if TYPE_CHECKING:  # pragma: no cover
    from rnnlab.models import ModelConfig


@dataclass
class Seq2SeqConfig:
    """Architecture of a :class:`Seq2Seq`.

    ``cell`` is any registered rnnlab cell (``rnnlab cells``) for the encoder; ``decoder_cell`` defaults to
    the same.  ``bidirectional`` applies to the encoder; its final forward and backward states are joined
    and bridged (linear + tanh) to every decoder layer's initial state.  ``attention``: ``"bahdanau"``
    (additive, query = previous decoder state), ``"luong-dot"`` / ``"luong-general"`` (multiplicative,
    query = current decoder output, with input feeding) or ``"none"``.  ``teacher_forcing`` is the
    probability of feeding the reference token instead of the model's own previous prediction in training.
    """

    cell: str = "lstm"
    decoder_cell: str | None = None
    hidden_size: int = 128
    num_layers: int = 1
    embedding_dim: int = 64
    bidirectional: bool = True
    attention: str = "bahdanau"
    attention_size: int | None = None
    teacher_forcing: float = 1.0
    dropout: float = 0.0
    cell_options: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention: expected one of {list(ATTENTIONS)}, got {self.attention!r}")
        tf = self.teacher_forcing
        if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0.0 <= tf <= 1.0:
            raise ValueError(f"teacher_forcing: expected a probability in [0, 1], got {tf!r}")
        for name in ("hidden_size", "num_layers", "embedding_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        if self.attention_size is not None and (not isinstance(self.attention_size, int) or self.attention_size < 1):
            raise ValueError(f"attention_size: expected an integer >= 1 or None, got {self.attention_size!r}")

    #: the fields a :class:`ModelConfig` does not have (they travel as task options in a run's config)
    EXTRA = ("decoder_cell", "attention", "attention_size", "teacher_forcing")

    @classmethod
    def from_model_config(cls, config: "ModelConfig", **extra: Any) -> "Seq2SeqConfig":
        """The shared fields from a :class:`ModelConfig` (``rnnlab train`` flags), the rest from ``extra``."""
        unknown = sorted(set(extra) - set(cls.EXTRA))
        if unknown:
            raise ValueError(f"seq2seq options: unknown {unknown}; expected among {list(cls.EXTRA)}")
        return cls(cell=config.cell, hidden_size=config.hidden_size, num_layers=config.num_layers,
                   embedding_dim=config.embedding_dim, bidirectional=config.bidirectional, dropout=config.dropout,
                   cell_options=dict(config.cell_options), backend=config.backend, **extra)

    def model_config(self) -> "ModelConfig":
        """The :class:`ModelConfig` part (what the trainer saves as ``model`` in a checkpoint)."""
        from rnnlab.models import ModelConfig  # here: rnnlab.models imports the task registry, which imports this

        return ModelConfig(cell=self.cell, hidden_size=self.hidden_size, num_layers=self.num_layers,
                           dropout=self.dropout, bidirectional=self.bidirectional, embedding_dim=self.embedding_dim,
                           cell_options=dict(self.cell_options), backend=self.backend)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
