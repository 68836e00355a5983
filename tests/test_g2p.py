"""Grapheme-to-phoneme on CMUdict: data, splits, baseline, a short training run that beats it, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rnnlab.cli import main
from rnnlab.tasks import make_task
from rnnlab.tasks.g2p import G2PConfig, G2PTask, SuffixNeighbour, read_cmudict

#: the default-suite training run: ~100 steps on 1,000 words, well under a minute on one thread
TRAIN = ["train", "g2p", "-o", "max_train=1000", "-o", "max_eval=200", "--cell", "gru", "--hidden-size", "64",
         "--embedding-dim", "32", "--bidirectional", "--epochs", "3", "--lr", "0.005", "--threads", "1", "--quiet"]


def test_reader_keeps_first_pronunciation_and_drops_comments():
    text = "a AH0\na(2) EY1\nread R IY1 D\nread(2) R EH1 D # past\n\n"
    assert read_cmudict(text) == {"a": ["AH0"], "read": ["R", "IY1", "D"]}


def test_dictionary_vocabularies_and_stress():
    task = G2PTask(G2PConfig(max_train=10, max_eval=10))
    assert len(task.phonemes) == 39 and not any(ch.isdigit() for p in task.phonemes for ch in p)
    assert set("abcdefghijklmnopqrstuvwxyz'") <= set(task.chars)
    stressed = G2PTask(G2PConfig(max_train=10, max_eval=10, stress=True))
    assert "AH0" in stressed.phonemes and "AH1" in stressed.phonemes and len(stressed.phonemes) > 39
    total = sum(len(G2PTask().words[s]) for s in ("train", "val", "test"))
    assert total > 120_000  # ~126k distinct words once alternates are dropped


def test_split_is_by_word_deterministic_and_nested():
    full = G2PTask()
    words = {s: {w for w, _ in full.words[s]} for s in ("train", "val", "test")}
    assert not words["train"] & words["val"] and not words["train"] & words["test"] and not words["val"] & words["test"]
    assert 0.04 < len(words["test"]) / sum(map(len, words.values())) < 0.06
    small, smaller = G2PTask(G2PConfig(max_train=300, max_eval=50)), G2PTask(G2PConfig(max_train=100, max_eval=20))
    assert small.words["train"][:100] == smaller.words["train"] and small.words["test"][:20] == smaller.words["test"]
    assert {w for w, _ in small.words["test"]} <= words["test"]


def test_batches_pack_source_and_target():
    task = G2PTask(G2PConfig(max_train=40, max_eval=10))
    b = next(task.batches("train", 8))
    assert b.x.dtype == torch.int64 and b.x.shape[:2] == (8, 2) and b.y.shape == (8, b.x.shape[2])
    for i, (w, ph) in enumerate(task.words["train"][:8]):
        assert b.x[i, 0, :len(w)].tolist() == task.encode_word(w) and int(b.lengths[i]) == len(w)
        assert task.decode_phonemes(b.y[i][b.y[i] >= 0].tolist()) == list(ph)
        assert (b.y[i, len(ph) + 1:] == -100).all()


def test_unknown_character_and_bad_options():
    task = G2PTask(G2PConfig(max_train=10, max_eval=10))
    with pytest.raises(ValueError, match="unknown character 'é' in 'café'"):
        task.encode_word("café")
    with pytest.raises(ValueError, match="max_train: expected an integer >= 1"):
        make_task("g2p", max_train="0")
    with pytest.raises(ValueError, match="attention: expected one of"):
        make_task("g2p", attention="cosine")


def test_suffix_neighbour_baseline():
    nn_ = SuffixNeighbour([("station", "S T EY SH AH N".split()), ("cat", "K AE T".split()),
                           ("hat", "HH AE T".split())])
    assert nn_.predict("nation") == "S T EY SH AH N".split()
    assert nn_.predict("bat") == "K AE T".split()  # tie on "at": the shorter, then alphabetically first word
    base = G2PTask(G2PConfig(max_train=2000, max_eval=200)).baseline("test")
    assert 0.3 < base["per"] < 0.95 and base["wer"] > 0.9


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("g2p") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def test_training_beats_the_baseline_on_held_out_words(run_dir):
    result = json.loads((run_dir / "results.json").read_text())
    test, base = result["test"], result["baseline"]
    assert test["count"] == 200
    assert test["per"] < base["per"] - 0.15, (test, base)
    assert test["wer"] < base["wer"], (test, base)


def test_eval_cli(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    saved = json.loads((run_dir / "results.json").read_text())["test"]
    assert got["metrics"]["per"] == pytest.approx(saved["per"]) and got["baseline"]["per"] > got["metrics"]["per"]


def test_translate_cli(run_dir, capsys):
    assert main(["translate", str(run_dir), "hello world", "--beam", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["word"] for r in rows] == ["hello", "world"]
    assert all(len(r["phonemes"]) == 1 and r["phonemes"][0].split() for r in rows)
    assert main(["translate", str(run_dir), "Cat", "--beam", "3", "--nbest", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("Cat ")
    # beam 1 = greedy = what eval scores
    assert main(["translate", str(run_dir), "--score", "test", "--beam", "1", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    saved = json.loads((run_dir / "results.json").read_text())["test"]
    assert scored["per"] == pytest.approx(saved["per"]) and scored["wer"] == pytest.approx(saved["wer"])


@pytest.mark.parametrize("argv, message", [
    (["café"], "text: unknown character 'é' in 'café'"),
    (["  "], "text: expected at least one word to pronounce, got '  '"),
    ([""], "text: expected at least one word to pronounce"),
    (["word", "--beam", "0"], "--beam: expected an integer >= 1, got 0"),
    (["word", "--nbest", "9"], "--nbest: expected an integer in [1, --beam=5], got 9"),
])
def test_translate_bad_input_is_one_line(run_dir, capsys, argv, message):
    assert main(["translate", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_translate_needs_a_seq2seq_run(tmp_path, capsys):
    assert main(["translate", str(tmp_path / "missing"), "word"]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_inspect_writes_the_attention_picture(run_dir, tmp_path, capsys):
    out = tmp_path / "inspect"
    assert main(["inspect", str(run_dir), "--out", str(out), "--sequences", "3"]) == 0
    assert (out / "attention.png").stat().st_size > 1000
    assert (out / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    items = json.loads((out / "attention.json").read_text())
    assert len(items) == 3
    for item in items:
        m = torch.tensor(item["attention"])
        assert m.shape == (len(item["rows"]), len(item["word"]))
        assert torch.allclose(m.sum(-1), torch.ones(m.shape[0]), atol=1e-4)


def test_resume_and_reload_with_seq2seq_options(tmp_path, capsys):
    """Seq2seq options typed on the command line (saved as strings) rebuild the same model for every command."""
    out = tmp_path / "small"
    small = ["train", "g2p", "-o", "max_train=64", "-o", "max_eval=16", "-o", "attention=luong-general", "-o",
             "teacher_forcing=0.5", "-o", "decoder_cell=gru", "--cell", "lstm", "--num-layers", "2", "--hidden-size",
             "16", "--embedding-dim", "8", "--epochs", "1", "--threads", "1", "--quiet", "--out", str(out)]
    assert main(small) == 0
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    manifest = json.loads((out / "checkpoints" / "MANIFEST.json").read_text())
    assert manifest["latest"] == "step-00000004"  # 2 epochs x 2 batches of 32
    from rnnlab.train.checkpoint import load_model

    model, _ = load_model(out, "latest")
    cfg = model.seq2seq_config
    assert (cfg.attention, cfg.teacher_forcing, cfg.decoder_cell, cfg.num_layers) == ("luong-general", 0.5, "gru", 2)
    capsys.readouterr()
    assert main(["translate", str(out), "cab"]) == 0 and capsys.readouterr().out.startswith("cab ")


@pytest.mark.slow
def test_longer_training_gets_a_low_error_rate(tmp_path):
    """The README run (~5 min on an idle thread): 20k training words, BiLSTM-128 encoder, attention, 2 epochs."""
    out = tmp_path / "run"
    argv = ["train", "g2p", "-o", "max_train=20000", "-o", "max_eval=1000", "--cell", "lstm", "--hidden-size", "128",
            "--embedding-dim", "64", "--bidirectional", "--epochs", "2", "--batch-size", "64", "--lr", "0.004",
            "--threads", "1", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    test = json.loads((out / "results.json").read_text())["test"]
    assert test["per"] < 0.17 and test["wer"] < 0.6, test  # README: 0.147 and 0.533 on all 6,240 test words
