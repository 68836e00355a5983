"""Seq2Seq building blocks: attention shapes and masking, the bridge, teacher forcing, greedy vs beam search."""

from __future__ import annotations

import math

import pytest
import torch

from rnnlab.seq2seq import (ATTENTIONS, BOS, EOS, BahdanauAttention, LuongAttention, Seq2Seq, Seq2SeqConfig,
                            beam_search, edit_distance, error_rates, error_sums, length_penalty, pack_pair,
                            source_mask)

SRC_V, TGT_V = 12, 9


def tiny(attention: str = "bahdanau", cell: str = "gru", **kw) -> Seq2Seq:
    cfg = Seq2SeqConfig(cell=cell, hidden_size=16, embedding_dim=8, attention=attention, **kw)
    return Seq2Seq(cfg, src_vocab=SRC_V, tgt_vocab=TGT_V).eval()


def batch():
    src = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0], [9, 0, 0, 0]])
    return src, torch.tensor([4, 2, 1])


@pytest.mark.parametrize("att", [BahdanauAttention(5, 6, 7), LuongAttention(5, 6, "general"), LuongAttention(6, 6, "dot")])
def test_attention_shapes_and_masking(att):
    q = torch.randn(3, 5 if not isinstance(att, LuongAttention) or att.mode == "general" else 6)
    keys = torch.randn(3, 4, 6)
    mask = source_mask(torch.tensor([4, 2, 1]), 4)
    ctx, w = att(q, keys, mask)
    assert ctx.shape == (3, 6) and w.shape == (3, 4)
    assert torch.allclose(w.sum(-1), torch.ones(3))
    assert (w[~mask] == 0).all() and (w[mask] > 0).all()
    # what sits in the padded positions cannot change the result
    noisy = keys.clone()
    noisy[~mask] = 1e3 * torch.randn(int((~mask).sum()), 6)
    ctx2, w2 = att(q, noisy, mask)
    assert torch.allclose(ctx, ctx2, atol=1e-6) and torch.allclose(w, w2)


def test_luong_dot_needs_equal_sizes():
    with pytest.raises(ValueError, match="luong-dot needs the decoder size"):
        LuongAttention(5, 6, "dot")
    with pytest.raises(ValueError, match="attention: expected one of"):
        Seq2SeqConfig(attention="cosine")
    with pytest.raises(ValueError, match="teacher_forcing"):
        Seq2SeqConfig(teacher_forcing=1.5)


ARCHS = [("gru", None, True, 1), ("lstm", "gru", True, 2), ("rnn", "lstm", False, 1), ("clockwork", "mingru", True, 1)]


# luong-dot needs the decoder size to equal the encoder's output size: only the one-directional encoder has that
@pytest.mark.parametrize("attention, cell, decoder_cell, bidirectional, layers",
                         [(a, *arch) for a in ATTENTIONS for arch in ARCHS if a != "luong-dot" or not arch[2]])
def test_padding_does_not_change_a_sequence(attention, cell, decoder_cell, bidirectional, layers):
    m = tiny(attention, cell, decoder_cell=decoder_cell, bidirectional=bidirectional, num_layers=layers)
    src, lengths = batch()
    tgt_in = torch.tensor([[BOS, 4, 5], [BOS, 6, 0], [BOS, 7, 3]])
    out, state = m(pack_pair(src, tgt_in), lengths)
    assert state is None and out.logits.shape == (3, 4, TGT_V)  # x packs both to max(S, T) = 4 steps
    alone, _ = m(pack_pair(src[1:2, :2], tgt_in[1:2]), lengths[1:2])
    assert torch.allclose(out.logits[1, :3], alone.logits[0, :3], atol=1e-5)
    assert out.predictions is not None and out.predictions.shape[0] == 3  # eval mode decodes greedily too
    tokens, n, att = m.greedy(src, lengths)
    if attention == "none":
        assert att is None
    else:
        assert torch.allclose(att.sum(-1), torch.ones(att.shape[:2]))
        assert (att[1, :, 2:] == 0).all() and (att[2, :, 1:] == 0).all()  # padded steps get no weight


@pytest.mark.parametrize("attention", ["bahdanau", "luong-general", "none"])
def test_every_parameter_learns(attention):
    m = tiny(attention, "lstm").train()
    src, lengths = batch()
    out, _ = m(pack_pair(src, torch.tensor([[BOS, 4, 5]] * 3)), lengths)
    out.logits.sum().backward()
    silent = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_teacher_forcing_ratio():
    m = tiny(teacher_forcing=0.0, dropout=0.0)
    src, lengths = batch()
    x = pack_pair(src, torch.tensor([[BOS, 4, 5, 6]] * 3))
    forced, _ = m.decode_forced(src, lengths, x[:, 1])  # eval mode: always the reference tokens
    m.train()
    own, _ = m.decode_forced(src, lengths, x[:, 1])  # ratio 0: always its own previous prediction
    assert torch.allclose(forced[:, 0], own[:, 0])  # step 0 reads BOS either way
    assert not torch.allclose(forced[:, 1:], own[:, 1:])
    greedy_tokens, _, _ = m.eval().greedy(src, lengths, max_len=4)
    # feeding its own argmax is exactly greedy decoding (until a sequence ends)
    assert torch.equal(own.argmax(-1)[:, 0], greedy_tokens[:, 0].where(greedy_tokens[:, 0] != 0, EOS))


@pytest.mark.parametrize("attention", ["bahdanau", "luong-general", "none"])
def test_beam_one_equals_greedy(attention):
    torch.manual_seed(3)
    m = tiny(attention, "lstm")
    src = torch.randint(1, SRC_V, (6, 5))
    lengths = torch.tensor([5, 4, 3, 2, 1, 5])
    tokens, n, _ = m.greedy(src, lengths, max_len=7)
    best = m.beam(src, lengths, beam=1, max_len=7, alpha=0.0)
    assert [h.tokens for h in best] == [t[:k].tolist() for t, k in zip(tokens, n)]


def test_beam_scores_are_model_log_probs():
    torch.manual_seed(4)
    m = tiny("bahdanau", "gru")
    src, lengths = batch()
    found = m.beam(src, lengths, beam=4, max_len=6, alpha=0.0, nbest=True)
    for b, hyps in enumerate(found):
        assert 1 <= len(hyps) <= 4 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        h = hyps[0]
        tgt = [BOS] + h.tokens
        out, _ = m(pack_pair(src[b:b + 1, :int(lengths[b])], torch.tensor([tgt])), lengths[b:b + 1])
        logp = torch.log_softmax(out.logits[0].detach(), -1)
        ended = len(h.tokens) < 6
        want = [*h.tokens, EOS] if ended else h.tokens
        total = sum(float(logp[t, w]) for t, w in enumerate(want))
        assert math.isclose(total, h.log_prob, rel_tol=1e-4, abs_tol=1e-4)


def test_length_normalisation_prefers_longer_outputs():
    # after BOS: EOS 0.5 or token 3 0.5; after 3: EOS 0.99.  log P: short -0.693 > long -0.703
    table = torch.full((4, 4), 1e-9)
    table[BOS, EOS], table[BOS, 3] = 0.5, 0.5
    table[3, EOS] = 0.99
    table[EOS, EOS] = 1.0
    logp = table.log()

    def step(tokens, state):
        return logp[tokens], state

    def best(alpha):
        return beam_search(step, lambda s, i: s, None, 1, beam=2, bos=BOS, eos=EOS, max_len=5, alpha=alpha)[0][0]

    assert best(0.0).tokens == []  # raw log-probability: the shorter output wins
    assert best(1.0).tokens == [3]  # normalised by ((5 + len) / 6) ** alpha: the longer one wins
    assert length_penalty(1, 0.7) == 1.0 and length_penalty(4, 1.0) == 1.5 and length_penalty(9, 0.0) == 1.0


def test_beam_search_rejects_bad_widths():
    with pytest.raises(ValueError, match="beam: expected an integer >= 1"):
        beam_search(lambda t, s: (torch.zeros(1, 3), s), lambda s, i: s, None, 1, beam=0, bos=0, eos=1, max_len=3)


def test_error_rates():
    assert edit_distance(["K", "AE", "T"], ["K", "AA", "T", "S"]) == 2
    sums = error_sums([["K", "AE", "T"], ["D", "AO", "G"]], [["K", "AE", "T"], ["D", "AO", "G", "Z"]])
    assert sums == {"edits": 1.0, "tokens": 7.0, "word_errors": 1.0, "count": 2.0}
    assert error_rates(sums) == {"per": 1 / 7, "wer": 0.5}
