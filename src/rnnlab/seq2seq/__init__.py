"""Encoder-decoder models over token sequences: Seq2Seq, attention modules, beam search, error rates.

``Seq2Seq`` and ``Memory`` load on first use: :mod:`rnnlab.models` imports the task registry, whose g2p task
imports this package, so importing the model eagerly here would be circular.
"""

from typing import Any

from rnnlab.seq2seq.attention import (ATTENTIONS, Attention, BahdanauAttention, LuongAttention, make_attention,
                                      masked_softmax, source_mask)
from rnnlab.seq2seq.config import Seq2SeqConfig
from rnnlab.seq2seq.data import BOS, EOS, PAD, Seq2SeqOutput, pack_pair, unpack_pair
from rnnlab.seq2seq.metrics import edit_distance, error_rates, error_sums
from rnnlab.seq2seq.search import Hypothesis, beam_search, length_penalty

__all__ = ["ATTENTIONS", "Attention", "BahdanauAttention", "LuongAttention", "make_attention", "masked_softmax",
           "source_mask", "edit_distance", "error_rates", "error_sums", "BOS", "EOS", "PAD", "Memory", "Seq2Seq",
           "Seq2SeqConfig", "Seq2SeqOutput", "pack_pair", "unpack_pair", "Hypothesis", "beam_search",
           "length_penalty"]


def __getattr__(name: str) -> Any:
    if name in ("Seq2Seq", "Memory"):
        from rnnlab.seq2seq import model

        return getattr(model, name)
    raise AttributeError(f"module 'rnnlab.seq2seq' has no attribute {name!r}")
