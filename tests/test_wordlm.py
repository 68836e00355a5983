"""Word language model: tokenizer and vocabulary, the Kneser-Ney baseline, tied embeddings, training that beats
Kneser-Ney, `rnnlab predict` / `rnnlab generate` on a word run, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rnnlab.cli import main
from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.tasks import make_task
from rnnlab.tasks.kneser_ney import KneserNey
from rnnlab.tasks.wordlm import UNK, WordLMConfig, WordLMTask, detokenize, generate_words, tokenize, top_words
from rnnlab.train.config import TrainConfig
from rnnlab.train.runner import train_run


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# --- tokenizer and vocabulary ------------------------------------------------------------------------------------
def test_tokenize_words_and_punctuation():
    assert tokenize("Is this a dagger, which I see? 'Tis O'er -- ROMEO!") == \
        ["is", "this", "a", "dagger", ",", "which", "i", "see", "?", "'", "tis", "o'er", "--", "romeo", "!"]
    assert tokenize("   \n\t ") == []
    assert detokenize(["to", "be", ",", "or", "not", "to", "be", ":", "that", "(", "is", ")", "it", "."]) == \
        "to be, or not to be: that (is) it."


def _text_file(tmp_path, text, name="corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_vocabulary_from_train_only_and_contiguous_splits(tmp_path):
    # 20 common words in train, then a val/test region holding words train never saw
    train_words = " ".join(f"w{i % 20} w{i % 7}" for i in range(400)) + " rare1 rare2 ."
    tail = " ".join(["w1", "zebra", "w2", "w3"] * 15)
    path = _text_file(tmp_path, train_words + " " + tail)
    task = WordLMTask(WordLMConfig(path=path, vocab_size=10, seq_len=4, val_fraction=0.06, test_fraction=0.06))
    tokens = tokenize(train_words + " " + tail)
    assert task.words[0] == UNK and task.vocab_size == len(task.words) == 10
    n_train = len(task.stream("train"))
    from collections import Counter

    counts = Counter(tokens[:n_train])
    top = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:9]]
    assert task.words[1:] == top  # most frequent train words, ties alphabetical
    assert "zebra" not in task.words  # only in val/test: no leakage into the vocabulary
    # the three streams are consecutive pieces of the whole token stream, every word outside the vocab -> <unk>
    whole = torch.cat([task.stream(s) for s in ("train", "val", "test")])
    assert whole.tolist() == [task.words.index(w) if w in task.words else 0 for w in tokens]
    assert task.encode("w1 zebra").tolist() == [task.words.index("w1"), 0]
    assert task.unknown_words("w1 zebra Zebra nope") == ["zebra", "nope"]
    assert task.decode(task.encode("W1 zebra w2")) == "w1 <unk> w2"


def test_registered_with_shakespeare_and_bible():
    shk = make_task("wordlm", works="sonnets", vocab_size="500", seq_len="20")
    assert isinstance(shk, WordLMTask) and shk.vocab_size == 500 and "shall" in shk.words
    bible = make_task("wordlm", corpus="bible", max_words=20000, vocab_size=300)
    assert bible.words[:3] == [UNK, "and", ","] and "lord" in bible.words  # Genesis: "and" before ","
    assert bible.decode(bible.stream("train")[:8]) == "in the <unk> god created the heaven and"


@pytest.mark.parametrize("options,message", [
    (dict(works=("sonnets",), vocab_size=100000), "vocab_size: the train split"),
    (dict(works=("sonnets",), max_words=300, vocab_size=50), "too few for seq_len=35"),
    (dict(works=()), "works: expected at least one work"),
    (dict(corpus="bible", path="x.txt"), "corpus: give either corpus or path"),
    (dict(corpus="quran"), "corpus: expected one of"),
    (dict(vocab_size=1), "vocab_size: expected an int >= 2"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        make_task("wordlm", **options)


# --- Kneser-Ney baseline -------------------------------------------------------------------------------------------
# toy corpus "a b a c a b" over the vocabulary {a, b, c, d} (d never seen), all discounts 0.5
TOY, A, B, C, D = [0, 1, 0, 2, 0, 1], 0, 1, 2, 3


def test_kneser_ney_bigram_by_hand():
    lm = KneserNey(TOY, vocab=4, order=2, discounts=(0.5, 0.5))
    # continuation counts: bigram types ab, ba, ac, ca -> a is preceded by {b, c}: 2, b by {a}: 1, c by {a}: 1
    # P1(w) = max(N1+(.w) - .5, 0) / 4 + .5 * 3 / 4 / 4   (3 words with a continuation count, 4 bigram types)
    uniform = 0.5 * 3 / 4 / 4
    for w, expected in ((A, 1.5 / 4 + uniform), (B, 0.5 / 4 + uniform), (C, 0.5 / 4 + uniform), (D, uniform)):
        assert lm.prob([], w) == pytest.approx(expected, abs=1e-12)
    # P(b | a): c(ab) = 2, c(a.) = 3, a has 2 distinct followers -> (2 - .5) / 3 + .5 * 2 / 3 * P1(b)
    assert lm.prob([A], B) == pytest.approx(1.5 / 3 + 1 / 3 * 0.21875, abs=1e-12)
    assert lm.prob([A], D) == pytest.approx(1 / 3 * 0.09375, abs=1e-12)
    # P(a | b): c(ba) = 1 = c(b.), one follower -> .5 + .5 * P1(a)
    assert lm.prob([B], A) == pytest.approx(0.5 + 0.5 * 0.46875, abs=1e-12)
    # a history never seen backs off entirely
    assert lm.prob([D], A) == pytest.approx(lm.prob([], A), abs=1e-12)


def test_kneser_ney_trigram_by_hand():
    lm = KneserNey(TOY, vocab=4, order=3, discounts=(0.5, 0.5, 0.5))
    # middle order, continuation counts of bigrams from trigram types aba, bac, aca, cab: ba, ac, ca, ab: 1 each
    p2_a_given_b = 0.5 + 0.5 * 0.46875  # c'(ba) = 1 = c'(b.), one follower
    p2_b_given_a = (1 - 0.5) / 2 + 0.5 * 2 / 2 * 0.21875  # c'(ab) = 1, c'(a.) = 2 (ab, ac), two followers
    assert lm.prob([B], A) == pytest.approx(p2_a_given_b, abs=1e-12)
    assert lm.prob([A], B) == pytest.approx(p2_b_given_a, abs=1e-12)
    # top order, raw counts: c(aba) = 1 = c(ab.) (the final "a b" has no follower), one follower
    assert lm.prob([A, B], A) == pytest.approx(0.5 + 0.5 * p2_a_given_b, abs=1e-12)
    assert lm.prob([A, B], D) == pytest.approx(0.5 * (0.5 * 0.09375), abs=1e-12)
    assert lm.prob([C, A], B) == pytest.approx(0.5 + 0.5 * p2_b_given_a, abs=1e-12)
    assert lm.prob([B, B], C) == pytest.approx(lm.prob([B], C), abs=1e-12)  # unseen history
    assert lm.prob([D, C, A], B) == lm.prob([C, A], B)  # only the last order-1 words count


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_sums_to_one_and_scores_streams(order):
    rng = np.random.default_rng(order)
    train = rng.integers(0, 30, 3000) // rng.integers(1, 4, 3000)  # skewed: frequent small ids
    lm = KneserNey(train, vocab=31, order=order)  # id 30 never occurs
    for context in ([], [1], [1, 2], [3, 1, 2], [30, 30, 30], list(train[:order - 1])):
        dist = lm.distribution(context)
        assert dist.shape == (31,) and (dist > 0).all()
        assert dist.sum() == pytest.approx(1.0, abs=1e-10)
    test = rng.integers(0, 31, 200)
    lp = lm.log_probs(test)
    assert np.allclose(lp, [np.log(lm.prob(test[:i], int(test[i]))) for i in range(1, len(test))])
    assert lm.perplexity(test) == pytest.approx(float(np.exp(-lp.mean())))


def test_kneser_ney_beats_lower_orders_on_shakespeare():
    # 300k words: enough that trigrams help (286 / 158 / 154); on Hamlet alone 2- and 3-gram tie
    task = make_task("wordlm", max_words=300000, vocab_size=5000)
    train, test = task.stream("train").numpy(), task.stream("test").numpy()
    ppl = {n: KneserNey(train, 5000, n).perplexity(test) for n in (1, 2, 3)}
    assert ppl[3] < ppl[2] < ppl[1]
    assert task.baseline("test")["ppl"] == pytest.approx(ppl[3])


def test_kneser_ney_bad_input():
    with pytest.raises(ValueError, match="ids must lie in"):
        KneserNey([0, 5, 1], vocab=3)
    with pytest.raises(ValueError, match="fewer than the order"):
        KneserNey([0, 1], vocab=3, order=3)
    with pytest.raises(ValueError, match="discounts: expected 2 values"):
        KneserNey(TOY, vocab=4, order=2, discounts=(0.5,))


# --- tied embeddings ---------------------------------------------------------------------------------------------
def test_tied_embeddings_share_one_tensor():
    cfg = ModelConfig(hidden_size=12, embedding_dim=12, tie_embeddings=True)
    model = SequenceModel(cfg, input_size=1, output_size=50, target="seq_class", vocab_size=50)
    assert model.head.weight is model.embedding.weight
    untied = SequenceModel(ModelConfig(hidden_size=12, embedding_dim=12), input_size=1, output_size=50,
                           target="seq_class", vocab_size=50)
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for p in untied.parameters()) - 50 * 12  # one (V, E) matrix fewer
    assert "head.weight" not in model.state_dict() and "head.bias" in model.state_dict()
    out, _ = model(torch.randint(0, 50, (2, 5)))  # (B, T, V)
    assert out.shape == (2, 5, 50)
    out.sum().backward()
    grad_out = model.embedding.weight.grad.clone()
    # the gradient holds the output layer's part: rows of words never in the input still get one
    assert grad_out.abs().sum(1).gt(0).all()
    # and the weights round-trip through a state_dict into a fresh tied model
    fresh = SequenceModel(cfg, input_size=1, output_size=50, target="seq_class", vocab_size=50)
    fresh.load_state_dict(model.state_dict())
    assert fresh.head.weight is fresh.embedding.weight and torch.equal(fresh.head.weight, model.head.weight)


@pytest.mark.parametrize("kwargs,message", [
    (dict(model=dict(hidden_size=12, embedding_dim=8), vocab_size=50, output_size=50, target="seq_class"),
     "embedding_dim must equal the head's input size 12"),
    (dict(model=dict(hidden_size=6, embedding_dim=8, bidirectional=True), vocab_size=50, output_size=50,
          target="seq_class"), "input size 12"),
    (dict(model=dict(hidden_size=8, embedding_dim=8), vocab_size=None, output_size=50, target="seq_class"),
     "needs a per-step model over its input vocabulary"),
    (dict(model=dict(hidden_size=8, embedding_dim=8), vocab_size=50, output_size=3, target="class"),
     "needs a per-step model"),
])
def test_tied_embeddings_need_matching_sizes(kwargs, message):
    cfg = ModelConfig(tie_embeddings=True, **kwargs.pop("model"))
    with pytest.raises(ValueError, match=message):
        SequenceModel(cfg, input_size=1, **kwargs)


# --- training beats the baseline -----------------------------------------------------------------------------------
def test_small_lstm_beats_kneser_ney():
    """Hamlet (37k train words), 1000-word vocabulary, a 64-unit LSTM with tied embeddings, 7 epochs of
    truncated BPTT (~25 s on one thread): its test perplexity must beat the 3-gram Kneser-Ney baseline
    counted on the same train split (~63.9; the run reaches ~56)."""
    opts = dict(works=("hamlet",), vocab_size=1000, seq_len=35)
    task = make_task("wordlm", **opts)
    model_cfg = ModelConfig(cell="lstm", hidden_size=64, embedding_dim=64, tie_embeddings=True)
    result = train_run("wordlm", opts, model_cfg, TrainConfig(epochs=7, batch_size=16, bptt=35, lr=8e-3),
                       task=task)
    kn = result.baseline["ppl"]
    assert result.test["ppl"] < kn, (result.test, result.baseline)
    assert result.test["ppl"] == pytest.approx(np.exp(result.test["loss"]))


@pytest.mark.slow
def test_shakespeare_lstm_beats_kneser_ney():
    """The README's word LM row: the first 300k words of Shakespeare (270k train), 5,000-word vocabulary, a
    128-unit LSTM with tied embeddings, 3 epochs (~4-5 min on one thread): test perplexity 128.5 against
    153.6 for the 3-gram Kneser-Ney model counted on the same train split."""
    opts = dict(max_words=300000, vocab_size=5000, seq_len=35)
    task = make_task("wordlm", **opts)
    model_cfg = ModelConfig(cell="lstm", hidden_size=128, embedding_dim=128, tie_embeddings=True)
    result = train_run("wordlm", opts, model_cfg, TrainConfig(epochs=3, batch_size=32, bptt=35, lr=4e-3),
                       task=task)
    assert result.baseline["ppl"] == pytest.approx(153.55, abs=0.1)
    assert result.test["ppl"] < 0.9 * result.baseline["ppl"], (result.test, result.baseline)


# --- CLI: predict and generate --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def word_run(tmp_path_factory):
    """A tiny tied-embedding word model on the sonnets, trained through `rnnlab train`."""
    root = tmp_path_factory.mktemp("wordlm")
    config = root / "tied.json"
    config.write_text(json.dumps({"model": {"tie_embeddings": True}}))
    out = root / "run"
    code = main(["train", "wordlm", "--works", "sonnets", "-o", "vocab_size=400", "--config", str(config),
                 "--hidden-size", "16", "--embedding-dim", "16", "--bptt", "20", "--batch-size", "16",
                 "--max-steps", "30", "--lr", "0.01", "--threads", "1", "--quiet", "--out", str(out)])
    assert code == 0
    return str(out)


def test_predict_lists_top_k_words(capsys, word_run):
    assert main(["predict", word_run, "--prompt", "And yet the love of my", "--top-k", "5"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 5 and captured.err == ""
    words, probs = zip(*(line.split("\t") for line in lines))
    probs = [float(p) for p in probs]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 and UNK not in words
    # the same figures as the library call on the saved model
    from rnnlab.train import load_model

    model, _ = load_model(word_run)
    task = make_task("wordlm", works=("sonnets",), vocab_size=400)
    expected = top_words(model, task, "And yet the love of my", 5)
    assert [w for w, _ in expected] == list(words)
    assert [round(p, 4) for _, p in expected] == probs


def test_predict_notes_unknown_words(capsys, word_run):
    assert main(["predict", word_run, "--prompt", "the xyzzy of", "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2
    assert captured.err.strip() == "rnnlab predict: note: not in the vocabulary, read as <unk>: 'xyzzy'"


def test_generate_words(capsys, word_run):
    assert main(["generate", word_run, "--prime", "When I", "--length", "12", "--seed", "3"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("when i") and len(tokenize(text)) == 14
    assert " ," not in text and " ." not in text  # punctuation attached to the word before it
    assert main(["generate", word_run, "--prime", "When I", "--length", "12", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == text  # same seed, same text


def test_generate_words_library_without_prompt():
    task = make_task("wordlm", works=("sonnets",), vocab_size=400)
    model = SequenceModel(ModelConfig(hidden_size=8, embedding_dim=8), input_size=1,
                          output_size=task.output_size, target="seq_class", vocab_size=task.vocab_size)
    text = generate_words(model, task, "", 10, generator=torch.Generator().manual_seed(0))
    assert len(tokenize(text)) == 10 and UNK not in text


@pytest.mark.parametrize("argv,message", [
    (["--prompt", ""], "--prompt: expected at least one word, got ''"),
    (["--prompt", "   "], "--prompt: expected at least one word"),
    (["--prompt", "the", "--top-k", "0"], "--top-k: expected an integer >= 1, got 0"),
    (["--prompt", "the", "--top-k", "-3"], "--top-k: expected an integer >= 1, got -3"),
])
def test_predict_bad_input(capsys, word_run, argv, message):
    assert message in _err(capsys, ["predict", word_run, *argv])


def test_predict_needs_a_word_run(capsys, tmp_path):
    assert "no such file or directory" in _err(capsys, ["predict", str(tmp_path / "none"), "--prompt", "a"]).lower()
    out = tmp_path / "cue"
    assert main(["train", "cue", "--lag", "2", "-o", "n_countries=3", "--n-train", "32", "-o", "n_val=16",
                 "-o", "n_test=16", "--hidden-size", "4", "--embedding-dim", "4", "--max-steps", "1",
                 "--threads", "1", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert "needs a wordlm model, this one was trained on 'cue'" in \
        _err(capsys, ["predict", str(out), "--prompt", "the"])


@pytest.mark.parametrize("extra,message", [
    (["-o", "vocab_size=100000"], "vocab_size: the train split"),
    (["-o", "max_words=200", "-o", "vocab_size=20"], "too few for seq_len"),
    (["-o", "vocab_size=500", "--hidden-size", "16", "--embedding-dim", "8", "--config", "TIED"],
     "--tie-embeddings: embedding_dim must equal the head's input size 16"),
])
def test_train_bad_input(capsys, tmp_path, extra, message):
    tied = tmp_path / "tied.json"
    tied.write_text(json.dumps({"model": {"tie_embeddings": True}}))
    extra = [str(tied) if e == "TIED" else e for e in extra]
    err = _err(capsys, ["train", "wordlm", "--works", "sonnets", "--bptt", "10", "--max-steps", "1",
                        "--out", str(tmp_path / "r"), *extra])
    assert message in err


def test_predict_on_a_text_file_run_needs_the_file(capsys, tmp_path):
    text = tmp_path / "words.txt"
    text.write_text(" ".join(f"w{i % 40} w{i % 13} ." for i in range(600)))
    out = tmp_path / "run"
    assert main(["train", "wordlm", "--text", str(text), "-o", "vocab_size=30", "--hidden-size", "8",
                 "--embedding-dim", "8", "--bptt", "10", "--max-steps", "5", "--threads", "1", "--quiet",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    # the checkpoint's recorded path is never opened: the user names the file again, checked by its hash
    assert "pass that file with --data FILE" in _err(capsys, ["predict", str(out), "--prompt", "w1 w2"])
    assert main(["predict", str(out), "--prompt", "w1 w2", "--top-k", "3", "--data", str(text)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    other = tmp_path / "other.txt"
    other.write_text(text.read_text() + " w1")
    assert "different or edited file" in _err(capsys, ["predict", str(out), "--prompt", "w1", "--data", str(other)])
