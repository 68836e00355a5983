"""SequenceModel: optional embedding, a Recurrent stack and a task head; built from a ModelConfig."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnnlab.crf import LinearChainCRF
from rnnlab.recurrent import Recurrent
from rnnlab.tasks.base import Target


@dataclass
class ModelConfig:
    """Architecture of a :class:`SequenceModel`; JSON-serialisable (saved beside every checkpoint)."""

    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0
    #: DropConnect on the hidden-to-hidden weights (AWD-LSTM), training only
    weight_drop: float = 0.0
    #: embedding width for token inputs (tasks with a vocab_size)
    embedding_dim: int = 64
    #: extra options of the cell (e.g. {"peepholes": "if"}, {"reset_after": False})
    cell_options: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    #: per-step tasks: a linear-chain CRF on top of the head; the output becomes (B, T, C, C) edge potentials
    crf: bool = False
    #: token LM tasks: the output head reuses the input embedding matrix (Press & Wolf 2017); needs
    #: embedding_dim == the head's input size (hidden size, or the projection size, x directions)
    tie_embeddings: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"model config: unknown field(s) {unknown}; expected {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


class TiedLinear(nn.Module):
    """Output layer whose weight *is* an embedding's matrix (V, E): logits = x @ E^T + bias.

    The embedding is not registered as a child, so ``state_dict`` and ``parameters()`` hold the shared
    matrix once (under the embedding's name) and checkpoints need no aliasing.
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        object.__setattr__(self, "_embedding", embedding)  # a plain reference, not a submodule
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))

    @property
    def weight(self) -> Tensor:
        return self._embedding.weight

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias)  # (..., E) -> (..., V)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, tied to the embedding"


class SequenceModel(nn.Module):
    """Embedding (token tasks) -> :class:`Recurrent` -> linear head.

    ``forward(x, lengths=None, state=None)`` returns ``(output, state)``: output is (B, C) for the
    ``"class"`` / ``"regression"`` targets (from the final state of the last layer, both directions) and
    (B, T, C) for ``"seq_class"`` ((B, T, C, C) CRF edge potentials with ``crf``, see :mod:`rnnlab.crf`);
    ``state`` is the final recurrent state to carry into the next chunk.
    """

    def __init__(self, config: ModelConfig, *, input_size: int, output_size: int, target: Target,
                 vocab_size: int | None = None) -> None:
        super().__init__()
        if target not in ("class", "seq_class", "regression"):
            raise ValueError(f"target: expected 'class', 'seq_class' or 'regression', got {target!r}")
        self.config = config
        self.target = target
        self.input_size, self.output_size, self.vocab_size = input_size, output_size, vocab_size
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim) if vocab_size else None
        rnn_in = config.embedding_dim if vocab_size else input_size
        self.rnn = Recurrent(config.cell, rnn_in, config.hidden_size, config.num_layers, dropout=config.dropout,
                             bidirectional=config.bidirectional, batch_first=True,
                             recurrent_dropout=config.recurrent_dropout, zoneout=config.zoneout,
                             weight_drop=config.weight_drop,
                             backend=config.backend, **config.cell_options)
        D = 2 if config.bidirectional else 1
        head_in = D * self.rnn.cell.output_size
        if config.tie_embeddings:
            self.head: nn.Module = TiedLinear(self._tied_embedding(config, target, output_size, head_in))
        else:
            self.head = nn.Linear(head_in, output_size)
        if config.crf and target != "seq_class":
            raise ValueError(f"crf: needs a per-step (seq_class) task, got target={target!r}")
        self.crf = LinearChainCRF(output_size) if config.crf else None

    def _tied_embedding(self, config: ModelConfig, target: Target, output_size: int, head_in: int) -> nn.Embedding:
        if self.embedding is None or target != "seq_class" or output_size != self.vocab_size:
            raise ValueError(f"tie_embeddings: needs a per-step model over its input vocabulary (a token LM task), "
                             f"got target={target!r}, vocab_size={self.vocab_size}, output_size={output_size}")
        if config.embedding_dim != head_in:
            raise ValueError(f"tie_embeddings: embedding_dim must equal the head's input size {head_in} "
                             f"(hidden/projection size x directions), got embedding_dim={config.embedding_dim}")
        # N(0, 1) rows (nn.Embedding's default) would make the initial logits ~sqrt(E) wide; the small uniform
        # init of the tied-weights LMs (Press & Wolf 2017, PyTorch's word_language_model) starts near uniform
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        return self.embedding

    def forward(self, x: Tensor, lengths: Tensor | None = None, state=None):
        if self.embedding is not None:
            if x.dtype != torch.int64:
                raise TypeError(f"x: token inputs must be int64 ids, got dtype {x.dtype}")
            x = self.embedding(x)  # (B, T) -> (B, T, E)
        out, state = self.rnn(x, state, lengths=lengths)  # out (B, T, D*H)
        if self.target == "seq_class":
            if self.crf is not None:
                return self.crf(self.head(out)), state  # (B, T, C) emissions -> (B, T, C, C) potentials
            return self.head(out), state
        h_n = state if isinstance(state, Tensor) else state[0]  # (L*D, B, H)
        D = self.rnn.num_directions
        last = h_n[-D:].transpose(0, 1).reshape(h_n.shape[1], -1)  # (B, D*H): last layer, every direction
        return self.head(last), state
