"""Attention over encoder outputs: Bahdanau (additive) and Luong (dot / general), masked for padded sources."""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: attention kinds a :class:`~rnnlab.seq2seq.Seq2Seq` accepts ("none": the decoder sees only the bridged state)
ATTENTIONS = ("bahdanau", "luong-dot", "luong-general", "none")


def source_mask(lengths: Tensor | None, S: int, device: torch.device | None = None) -> Tensor | None:
    """(B, S) bool, true at real source positions (``step < lengths[b]``); ``None`` when no lengths are given.

    >>> source_mask(torch.tensor([3, 1]), 3).tolist()
    [[True, True, True], [True, False, False]]
    """
    if lengths is None:
        return None
    steps = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    return steps < lengths.to(device).unsqueeze(1)  # (B, S)


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax of (B, S) ``scores`` over S, with zero weight where ``mask`` is false (padded steps)."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


class Attention(nn.Module):
    """Base of the attention modules: ``forward(query, keys, mask) -> (context, weights)``.

    ``query`` (B, Q) is the decoder state, ``keys`` (B, S, K) the encoder outputs, ``mask`` (B, S) true at
    real steps.  ``context`` (B, K) is the weighted sum of the keys, ``weights`` (B, S) sum to 1 over the
    unmasked steps.  :meth:`precompute` does the per-sequence part once, so a decoder calls it before its
    first step and passes the result as ``projected`` on every step.
    """

    def precompute(self, keys: Tensor) -> Tensor:
        return keys

    def score(self, query: Tensor, projected: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None,
                projected: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if projected is None:
            projected = self.precompute(keys)
        weights = masked_softmax(self.score(query, projected), mask)  # (B, S)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (B, 1, S) @ (B, S, K) -> (B, K)
        return context, weights


class BahdanauAttention(Attention):
    """Additive attention (Bahdanau, Cho & Bengio 2015): ``score = v . tanh(W_k k_s + W_q q)``.

    >>> att = BahdanauAttention(query_size=4, key_size=6, attention_size=5)
    >>> ctx, w = att(torch.randn(2, 4), torch.randn(2, 3, 6), source_mask(torch.tensor([3, 2]), 3))
    >>> tuple(ctx.shape), torch.allclose(w.sum(-1), torch.ones(2)), w[1, 2].item() == 0.0
    ((2, 6), True, True)
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(key_size, attention_size, bias=False)
        self.query_proj = nn.Linear(query_size, attention_size)
        self.v = nn.Linear(attention_size, 1, bias=False)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.key_proj(keys)  # (B, S, K) -> (B, S, A)

    def score(self, query: Tensor, projected: Tensor) -> Tensor:
        q = self.query_proj(query).unsqueeze(1)  # (B, Q) -> (B, 1, A)
        return self.v(torch.tanh(projected + q)).squeeze(-1)  # (B, S, 1) -> (B, S)


class LuongAttention(Attention):
    """Multiplicative attention (Luong, Pham & Manning 2015): ``dot`` = q . k, ``general`` = q . W k.

    ``dot`` needs ``query_size == key_size``.

    >>> att = LuongAttention(query_size=4, key_size=6, mode="general")
    >>> ctx, w = att(torch.randn(2, 4), torch.randn(2, 3, 6))
    >>> tuple(ctx.shape), tuple(w.shape)
    ((2, 6), (2, 3))
    """

    def __init__(self, query_size: int, key_size: int, mode: str = "general") -> None:
        super().__init__()
        if mode not in ("dot", "general"):
            raise ValueError(f"mode: expected 'dot' or 'general', got {mode!r}")
        if mode == "dot" and query_size != key_size:
            raise ValueError(f"attention: luong-dot needs the decoder size ({query_size}) to equal the encoder "
                             f"output size ({key_size}); use luong-general or bahdanau")
        self.mode = mode
        self.key_proj = nn.Linear(key_size, query_size, bias=False) if mode == "general" else None

    def precompute(self, keys: Tensor) -> Tensor:
        return keys if self.key_proj is None else self.key_proj(keys)  # (B, S, K) -> (B, S, Q)

    def score(self, query: Tensor, projected: Tensor) -> Tensor:
        return torch.bmm(projected, query.unsqueeze(-1)).squeeze(-1)  # (B, S, Q) @ (B, Q, 1) -> (B, S)


def make_attention(kind: str, query_size: int, key_size: int, attention_size: int) -> Attention | None:
    """The attention module named ``kind`` (one of :data:`ATTENTIONS`); ``None`` for ``"none"``."""
    if kind == "bahdanau":
        return BahdanauAttention(query_size, key_size, attention_size)
    if kind in ("luong-dot", "luong-general"):
        return LuongAttention(query_size, key_size, kind.split("-", 1)[1])
    if kind == "none":
        return None
    raise ValueError(f"attention: expected one of {list(ATTENTIONS)}, got {kind!r}")
