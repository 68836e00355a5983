"""Seq2Seq: an rnnlab-cell encoder (optionally bidirectional), a bridge, an attentional decoder, greedy and beam."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.recurrent import Recurrent
from rnnlab.seq2seq.attention import make_attention, source_mask
from rnnlab.seq2seq.config import Seq2SeqConfig
from rnnlab.seq2seq.data import BOS, EOS, PAD, Seq2SeqOutput, pack_pair, unpack_pair  # noqa: F401 (pack_pair: doctest)
from rnnlab.seq2seq.search import Hypothesis, beam_search


@dataclass
class Memory:
    """The encoded source a decoder attends to: outputs (N, S, K), their attention projection, the mask."""

    keys: Tensor
    projected: Tensor | None
    mask: Tensor | None


class Seq2Seq(SequenceModel):
    """Encoder-decoder over token ids, with any rnnlab cell on both sides.

    * encoder: embedding -> :class:`~rnnlab.recurrent.Recurrent` (``bidirectional`` option), padded source
      steps excluded through ``lengths``; attention masks them too;
    * bridge: the encoder's final h of each layer (both directions joined) -> linear + tanh -> every state
      of the matching decoder layer (so an LSTM encoder may feed a GRU decoder);
    * decoder: one :class:`Recurrent` step per output token, fed the previous token's embedding plus the
      attention context (Bahdanau) or the previous attentional vector (Luong input feeding);
    * :meth:`greedy` and :meth:`beam` (GNMT length normalisation ``alpha``) decode.

    It is a :class:`~rnnlab.models.SequenceModel` for the generic trainer: ``forward(x, lengths)`` takes
    ``x = pack_pair(src, tgt_in)`` and returns ``(Seq2SeqOutput, None)``; ``target`` is ``"seq2seq"``.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> m = Seq2Seq(Seq2SeqConfig(cell="gru", hidden_size=16, embedding_dim=8), src_vocab=10, tgt_vocab=7)
        >>> src, lengths = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
        >>> out, _ = m(pack_pair(src, torch.tensor([[BOS, 4], [BOS, 5]])), lengths)
        >>> tuple(out.logits.shape)
        (2, 3, 7)
        >>> tokens, n, att = m.greedy(src, lengths, max_len=4)
        >>> tuple(att.shape[::2]), bool((att[1, :, 2] == 0).all())   # no weight on the padded step
        ((2, 3), True)
        >>> [h.tokens for h in m.beam(src, lengths, beam=1, max_len=4)] == [t[:k].tolist() for t, k in zip(tokens, n)]
        True
    """

    target = "seq2seq"

    def __init__(self, config: Seq2SeqConfig, *, src_vocab: int, tgt_vocab: int) -> None:
        nn.Module.__init__(self)  # not SequenceModel.__init__: its embedding/stack/head are replaced below
        if tgt_vocab <= EOS:
            raise ValueError(f"tgt_vocab: expected more than {EOS + 1} ids (PAD, BOS, EOS reserved), got {tgt_vocab}")
        self.seq2seq_config = cfg = config
        self.config = cfg.model_config()
        self.input_size, self.output_size, self.vocab_size = src_vocab, tgt_vocab, src_vocab
        self.decode_in_eval = True
        E, H, L = cfg.embedding_dim, cfg.hidden_size, cfg.num_layers
        dec_cell = cfg.decoder_cell or cfg.cell
        self.src_embed = nn.Embedding(src_vocab, E, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(tgt_vocab, E, padding_idx=PAD)
        self.encoder = Recurrent(cfg.cell, E, H, L, dropout=cfg.dropout if L > 1 else 0.0,
                                 bidirectional=cfg.bidirectional, batch_first=True, backend=cfg.backend,
                                 **cfg.cell_options)
        D = self.encoder.num_directions
        key_size = D * self.encoder.cell.output_size
        # the decoder's input: previous token + (Bahdanau) context or (Luong) previous attentional vector
        feed = {"bahdanau": key_size, "none": 0}.get(cfg.attention, H)
        dec_options = cfg.cell_options if dec_cell == cfg.cell else {}
        self.decoder = Recurrent(dec_cell, E + feed, H, L, dropout=cfg.dropout if L > 1 else 0.0,
                                 batch_first=True, backend=cfg.backend, **dec_options)
        out_size = self.decoder.cell.output_size
        enc_h = D * self.encoder.cell.state_sizes()[0]
        self.bridge = nn.ModuleList(nn.Linear(enc_h, s) for s in self.decoder.cell.state_sizes())
        self.attention = make_attention(cfg.attention, out_size, key_size, cfg.attention_size or H)
        ctx = key_size if self.attention is not None else 0
        self.combine = nn.Linear(out_size + ctx, H)  # attentional vector tanh(W [s_t; c_t])
        self.drop = nn.Dropout(cfg.dropout)
        self.generator = nn.Linear(H, tgt_vocab)

    # --- encoder ------------------------------------------------------------------------------------------
    def encode(self, src: Tensor, lengths: Tensor | None) -> tuple[Memory, tuple[Tensor, ...]]:
        """Source ids (B, S) -> the attention memory and the decoder's initial state (each (L, B, S_k))."""
        if src.dtype != torch.int64:
            raise TypeError(f"src: expected int64 token ids, got dtype {src.dtype}")
        if lengths is not None:
            lengths = lengths.to("cpu", torch.int64)
            src = src[:, :int(lengths.max())]  # (B, S_max): drop all-padding columns
        out, state = self.encoder(self.drop(self.src_embed(src)), lengths=lengths)  # out (B, S, D*H)
        h_n = state if isinstance(state, Tensor) else state[0]  # (L*D, B, S0)
        L, D = self.encoder.num_layers, self.encoder.num_directions
        h_n = h_n.view(L, D, h_n.shape[1], h_n.shape[2]).permute(0, 2, 1, 3).reshape(L, h_n.shape[1], -1)  # (L, B, D*S0)
        init = tuple(torch.tanh(lin(h_n)) for lin in self.bridge)
        projected = self.attention.precompute(out) if self.attention is not None else None
        return Memory(out, projected, source_mask(lengths, out.shape[1], out.device)), init

    # --- one decoder step ---------------------------------------------------------------------------------
    def initial_feed(self, memory: Memory) -> Tensor:
        """The Luong input-feeding vector before the first step (zeros), or an empty (N, 0) tensor."""
        N = memory.keys.shape[0]
        width = self.combine.out_features if self.seq2seq_config.attention.startswith("luong") else 0
        return memory.keys.new_zeros(N, width)

    def step(self, tokens: Tensor, state: tuple[Tensor, ...], feed: Tensor,
             memory: Memory) -> tuple[Tensor, tuple[Tensor, ...], Tensor, Tensor | None]:
        """Previous tokens (N,) -> ``(logits (N, V), state, feed, attention weights (N, S) or None)``."""
        kind = self.seq2seq_config.attention
        emb = self.drop(self.tgt_embed(tokens))  # (N, E)
        weights = ctx = None
        if kind == "bahdanau":  # query = the previous state's top layer
            ctx, weights = self.attention(state[0][-1], memory.keys, memory.mask, memory.projected)
            inp = torch.cat([emb, ctx], dim=-1)
        elif kind == "none":
            inp = emb
        else:  # Luong: input feeding of the previous attentional vector
            inp = torch.cat([emb, feed], dim=-1)
        hx = state[0] if len(state) == 1 else state
        out, new = self.decoder(inp.unsqueeze(1), hx)  # (N, 1, O)
        state = (new,) if isinstance(new, Tensor) else tuple(new)
        s = out[:, 0]  # (N, O)
        if kind.startswith("luong"):
            ctx, weights = self.attention(s, memory.keys, memory.mask, memory.projected)
        att = torch.tanh(self.combine(s if ctx is None else torch.cat([s, ctx], dim=-1)))  # (N, H)
        if kind.startswith("luong"):
            feed = att
        return self.generator(self.drop(att)), state, feed, weights

    # --- training-time forward ----------------------------------------------------------------------------
    def decode_forced(self, src: Tensor, lengths: Tensor | None, tgt_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, V) for decoder inputs ``tgt_in`` (B, T) (BOS first) and the attention (B, T, S).

        In training, each step after the first feeds the reference token with probability
        ``teacher_forcing`` and the model's own previous prediction otherwise.
        """
        memory, state = self.encode(src, lengths)
        feed = self.initial_feed(memory)
        ratio = self.seq2seq_config.teacher_forcing
        logits, weights = [], []
        tokens = tgt_in[:, 0]
        for t in range(tgt_in.shape[1]):
            if t > 0:
                tokens = tgt_in[:, t]
                if self.training and ratio < 1.0:
                    own = logits[-1].detach().argmax(-1)
                    tokens = torch.where(torch.rand(tokens.shape[0], device=tokens.device) < ratio, tokens, own)
            out, state, feed, w = self.step(tokens, state, feed, memory)
            logits.append(out)
            weights.append(w)
        att = torch.stack(weights, dim=1) if weights and weights[0] is not None else None  # (B, T, S)
        return torch.stack(logits, dim=1), att  # (B, T, V)

    def forward(self, x: Tensor, lengths: Tensor | None = None, state: Any = None) -> tuple[Seq2SeqOutput, None]:
        """The trainer's call: ``x = pack_pair(src, tgt_in)``; ``state`` is unused (no carried state)."""
        src, tgt_in = unpack_pair(x)
        logits, _ = self.decode_forced(src, lengths, tgt_in)
        out = Seq2SeqOutput(logits)
        if not self.training and self.decode_in_eval:
            out.predictions, out.pred_lengths, _ = self.greedy(src, lengths, max_len=self.default_max_len(lengths,
                                                                                                       src))
        return out, None

    @staticmethod
    def default_max_len(lengths: Tensor | None, src: Tensor) -> int:
        """Decoding limit: twice the longest source plus 5 tokens."""
        longest = int(lengths.max()) if lengths is not None else src.shape[1]
        return 2 * longest + 5

    # --- decoding -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, src: Tensor, lengths: Tensor | None = None, *,
               max_len: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Argmax decoding: ``(tokens (B, T) PAD-filled after the end, lengths (B,) before EOS, attention (B, T, S))``."""
        max_len = max_len or self.default_max_len(lengths, src)
        memory, state = self.encode(src, lengths)
        feed = self.initial_feed(memory)
        B = src.shape[0]
        tokens = torch.full((B,), BOS, dtype=torch.int64, device=src.device)
        alive = torch.ones(B, dtype=torch.bool, device=src.device)
        out_len = torch.full((B,), max_len, dtype=torch.int64)
        seq, weights = [], []
        for t in range(max_len):
            logits, state, feed, w = self.step(tokens, state, feed, memory)
            tokens = logits.argmax(-1)  # (B,)
            ended = alive & (tokens == EOS)
            out_len[ended.cpu()] = t
            alive = alive & ~ended
            seq.append(torch.where(alive, tokens, torch.full_like(tokens, PAD)))
            weights.append(w)
            if not bool(alive.any()):
                break
        att = torch.stack(weights, dim=1) if weights[0] is not None else None  # (B, T, S)
        return torch.stack(seq, dim=1), out_len, att

    @torch.no_grad()
    def beam(self, src: Tensor, lengths: Tensor | None = None, *, beam: int = 5, alpha: float = 0.6,
             max_len: int | None = None, nbest: bool = False) -> list[Hypothesis] | list[list[Hypothesis]]:
        """Beam search (see :func:`~rnnlab.seq2seq.search.beam_search`): the best :class:`Hypothesis` of each
        source, or with ``nbest`` the ``beam`` best, ranked by ``log P / ((5 + len) / 6) ** alpha``."""
        max_len = max_len or self.default_max_len(lengths, src)
        memory, state = self.encode(src, lengths)
        B = src.shape[0]
        rows = torch.arange(B).repeat_interleave(beam)  # (B*K,): hypothesis row -> source row
        memory = Memory(memory.keys[rows], None if memory.projected is None else memory.projected[rows],
                        None if memory.mask is None else memory.mask[rows])
        state = (tuple(s[:, rows] for s in state), self.initial_feed(memory))

        def step(tokens: Tensor, st: Any) -> tuple[Tensor, Any]:
            logits, dec, feed, _ = self.step(tokens, st[0], st[1], memory)
            return F.log_softmax(logits.float(), dim=-1), (dec, feed)

        def reorder(st: Any, index: Tensor) -> Any:
            return tuple(s[:, index] for s in st[0]), st[1][index]

        found = beam_search(step, reorder, state, B, beam=beam, bos=BOS, eos=EOS, max_len=max_len, alpha=alpha)
        return found if nbest else [h[0] for h in found]

    @classmethod
    def from_checkpoint_config(cls, config: dict[str, Any]) -> "Seq2Seq":
        """Rebuild from a run's config: ``model`` (ModelConfig), ``model_io`` vocabularies and the seq2seq
        options (:attr:`Seq2SeqConfig.EXTRA`) found among the task options."""
        from rnnlab.tasks._util import coerce_options

        options = (config.get("task") or {}).get("options") or {}
        # options given on the command line are saved as the strings typed ("0.5"): convert like make_task does
        extra = coerce_options(Seq2SeqConfig, {k: options[k] for k in Seq2SeqConfig.EXTRA if k in options},
                               task="seq2seq")
        cfg = Seq2SeqConfig.from_model_config(ModelConfig.from_dict(config["model"]), **extra)
        io = config["model_io"]
        return cls(cfg, src_vocab=io["vocab_size"], tgt_vocab=io["output_size"])
