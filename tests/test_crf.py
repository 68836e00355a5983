"""The linear-chain CRF against brute-force enumeration of every tag path on tiny cases."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnnlab.crf import IGNORE, LinearChainCRF, log_partition, neg_log_likelihood, path_score, viterbi_decode


def _brute(pot: torch.Tensor, length: int) -> tuple[torch.Tensor, list[int], dict[tuple[int, ...], float]]:
    """log Z, the best path and every path's score of one sequence (pot: (T, C, C)) by enumeration."""
    C = pot.shape[-1]
    scores = {}
    for path in itertools.product(range(C), repeat=length):
        s = pot[0, 0, path[0]]
        for t in range(1, length):
            s = s + pot[t, path[t - 1], path[t]]
        scores[path] = s
    best = max(scores, key=lambda p: float(scores[p]))
    return torch.logsumexp(torch.stack(list(scores.values())), 0), list(best), scores


@pytest.mark.parametrize("C,T", [(2, 1), (3, 4), (4, 3), (2, 6)])
def test_forward_and_viterbi_match_enumeration(C, T):
    pot = torch.randn(3, T, C, C, dtype=torch.float64)
    lengths = torch.tensor([T, max(1, T - 1), 1])
    logz = log_partition(pot, lengths)
    decoded = viterbi_decode(pot, lengths)
    tags = torch.randint(0, C, (3, T))
    score = path_score(pot, tags, lengths)
    for b in range(3):
        L = int(lengths[b])
        ref_z, ref_best, scores = _brute(pot[b], L)
        assert torch.allclose(logz[b], ref_z), (b, logz[b], ref_z)
        assert decoded[b, :L].tolist() == ref_best
        assert (decoded[b, L:] == IGNORE).all()
        assert torch.allclose(score[b], scores[tuple(tags[b, :L].tolist())])


def test_probabilities_sum_to_one_and_padding_labels_ignored():
    crf = LinearChainCRF(3).double()
    with torch.no_grad():
        crf.transitions.normal_()
        crf.start.normal_()
    pot = crf(torch.randn(1, 4, 3, dtype=torch.float64))
    total = sum(torch.exp(-neg_log_likelihood(pot, torch.tensor([p]))) for p in itertools.product(range(3), repeat=4))
    assert torch.allclose(total, torch.ones(1, dtype=torch.float64))
    # a -100 label past the length must not change the likelihood
    a = neg_log_likelihood(pot, torch.tensor([[1, 2, IGNORE, IGNORE]]), torch.tensor([2]))
    b = neg_log_likelihood(pot, torch.tensor([[1, 2, 0, 0]]), torch.tensor([2]))
    assert torch.allclose(a, b)


def test_crf_learns_a_transition_rule():
    """Emissions carry no signal at odd steps; only the transitions can learn 'tag 1 follows tag 0'."""
    torch.manual_seed(0)
    crf = LinearChainCRF(2)
    opt = torch.optim.Adam(crf.parameters(), lr=0.1)
    tags = torch.tensor([[0, 1, 0, 1, 0, 1]] * 4)
    emissions = torch.zeros(4, 6, 2)
    emissions[:, 0::2, 0] = 2.0  # even steps say "0", odd steps say nothing
    for _ in range(50):
        loss = neg_log_likelihood(crf(emissions), tags).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert viterbi_decode(crf(emissions)).tolist() == tags.tolist()


def test_bad_shapes_are_one_line_errors():
    with pytest.raises(ValueError, match="potentials: expected"):
        log_partition(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="lengths: expected"):
        log_partition(torch.randn(2, 3, 4, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="emissions: expected"):
        LinearChainCRF(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="num_tags"):
        LinearChainCRF(0)
