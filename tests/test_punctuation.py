"""Punctuation/capitalisation restoration: labels, masking, the bidirectional tagger (+CRF) against its baselines, CLI."""

from __future__ import annotations

import pytest
import torch

from rnnlab.cli import main
from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.tasks import make_task
from rnnlab.tasks.base import Batch
from rnnlab.tasks.punctuation import (IGNORE, NUM_TAGS, PunctuationConfig, PunctuationTask, confusion_counts,
                                      f1_scores, label_words, restore, split_tag, tag_text, words_of)
from rnnlab.train import TrainConfig
from rnnlab.train.runner import train_run

torch.set_num_threads(1)
PLAYS = {"works": ("hamlet", "macbeth", "othello")}


def test_labels_round_trip_through_restore():
    text = "Where is my lord? I know not, madam; Go: tell him so. Alas!"
    words, tags = label_words(text)
    assert words == words_of(text)
    # ";" and ":" share one class; each word keeps the first mark after it
    assert restore(words, tags) == "Where is my lord? I know not, madam: Go: tell him so. Alas!"
    assert [split_tag(t) for t in tags[:4]] == [(0, True), (0, False), (0, False), (3, False)]


def test_f1_counts_against_hand_computed_values():
    truth = torch.tensor([[0, 2, 4, 1, IGNORE]])  # none, comma, period, none+cap, padding
    pred = torch.tensor([[0, 2, 2, 0, 5]])        # the padded prediction must not count
    c = confusion_counts(pred, truth)
    assert c["count"] == 4 and c["correct"] == 2
    f1 = f1_scores(c)
    assert f1["f1_comma"] == pytest.approx(2 / 3)  # tp 1, fp 1 (the missed period), fn 0
    assert f1["f1_period"] == 0.0 and f1["f1_cap"] == 0.0
    assert f1["macro_f1"] == pytest.approx((2 / 3 + 0 + 0) / 3)


def test_windows_and_padding_are_masked():
    task = PunctuationTask(PunctuationConfig(works=("sonnets",), seq_len=7))
    x, y, lengths = task.split_tensors("test")
    last = int(lengths[-1])
    assert last <= 7 and (y[-1, last:] == IGNORE).all() and (y[:-1] != IGNORE).all()
    # the loss ignores padded steps: changing the logits there changes nothing (with and without a CRF)
    batch = Batch(x[-2:], y[-2:], lengths[-2:])
    for shape in [(2, 7, NUM_TAGS), (2, 7, NUM_TAGS, NUM_TAGS)]:
        out = torch.randn(*shape)
        noisy = out.clone()
        noisy[1, last:] += 100 * torch.randn_like(noisy[1, last:])
        assert torch.allclose(task.loss(out, batch), task.loss(noisy, batch))
        assert task.metrics(out, batch) == task.metrics(noisy, batch)


def test_baselines():
    task = make_task("punctuation", **PLAYS)
    base = task.baseline("test")
    assert base["majority_macro_f1"] == 0.0  # always "no mark, lower case"
    assert 0.2 < base["macro_f1"] < 0.4  # the unigram tagger knows e.g. that "i" is capitalised


@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
def test_small_bidirectional_tagger_beats_unigram_baseline(crf):
    # measured: macro F1 0.48 (either head) vs 0.29 for the unigram tagger, 5-10 s on one thread
    r = train_run("punctuation", PLAYS, ModelConfig(cell="gru", hidden_size=64, embedding_dim=32,
                                                    bidirectional=True, crf=crf),
                  TrainConfig(threads=1, epochs=4, batch_size=32, lr=1e-2))
    assert r.test["macro_f1"] > r.baseline["macro_f1"] + 0.1, (r.test, r.baseline)
    assert r.test["f1_period"] > r.baseline["f1_period"], (r.test, r.baseline)


@pytest.mark.slow
def test_full_shakespeare_tagger():
    # all 42 works, the README row: macro F1 0.36 vs 0.14 for the unigram tagger (270 s on one thread)
    r = train_run("punctuation", {}, ModelConfig(cell="lstm", hidden_size=128, embedding_dim=64,
                                                 bidirectional=True),
                  TrainConfig(threads=1, epochs=2, batch_size=64, lr=5e-3))
    assert r.test["macro_f1"] > r.baseline["macro_f1"] + 0.15, (r.test, r.baseline)


def test_tag_command_restores_text_and_reports_unknown_words(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "punctuation", "--works", "sonnets", "--cell", "gru", "--hidden-size", "16",
                 "--embedding-dim", "8", "--bidirectional", "--epochs", "1", "--threads", "1", "-q",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["tag", str(run), "Shall I compare thee to a summer's day? Xyzzy!"]) == 0
    out, err = capsys.readouterr()
    words = out.strip().split()
    assert [w.strip(",.?!:").lower() for w in words] == ["shall", "i", "compare", "thee", "to", "a", "summer's",
                                                         "day", "xyzzy"]
    assert "xyzzy" in err and "<unk>" in err
    assert main(["tag", str(run), "  ?!  "]) == 2
    assert "text: expected at least one word" in capsys.readouterr().err
    assert main(["tag", str(run), ""]) == 2
    assert main(["tag", str(tmp_path / "missing"), "hello"]) == 2


def test_tag_text_uses_viterbi_with_a_crf_model():
    task = PunctuationTask(PunctuationConfig(works=("sonnets",)))
    model = SequenceModel(ModelConfig(cell="gru", hidden_size=8, embedding_dim=4, bidirectional=True, crf=True),
                          input_size=1, output_size=NUM_TAGS, target="seq_class", vocab_size=task.vocab_size)
    text, unknown = tag_text(model, task, "when i do count the clock")
    assert len(text.split()) == 6 and unknown == []


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="works: unknown"):
        make_task("punctuation", works=("nosuchplay",))
    with pytest.raises(ValueError, match="seq_len"):
        make_task("punctuation", seq_len=0)
    with pytest.raises(ValueError, match="min_count: no train word"):
        make_task("punctuation", works=("sonnets",), max_words=30, min_count=50)
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(ValueError, match="is empty"):
        make_task("punctuation", path=str(empty))
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("1 2 3, 4. 5\n")
    with pytest.raises(ValueError, match="has no words"):
        make_task("punctuation", path=str(numbers))
    with pytest.raises(ValueError, match="crf: needs a per-step"):
        SequenceModel(ModelConfig(crf=True), input_size=3, output_size=2, target="class")
