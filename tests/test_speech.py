"""Speech with CTC: the audio front end, CTC loss and decoders against enumeration, espeak-ng data, a folder of WAVs."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from rnnlab import audio
from rnnlab.cli import main
from rnnlab.ctc import (IGNORE, beam_decode, collapse, ctc_loss, edit_distance, greedy_decode,
                        prefix_beam_search)
from rnnlab.models import ModelConfig
from rnnlab.tasks import make_task
from rnnlab.tasks import speech as sp
from rnnlab.train import TrainConfig
from rnnlab.train.runner import train_run

torch.set_num_threads(1)
needs_espeak = pytest.mark.skipif(not audio.espeak_available(),
                                  reason="espeak-ng is not installed (`make speech` or apt-get install espeak-ng)")
SMALL = {"n_clips": 120, "max_digits": 3}


# --- audio front end -----------------------------------------------------------------------------------------------
def _tone(freq: float, rate: int, seconds: float = 0.5) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * freq * torch.arange(int(rate * seconds)) / rate)


def test_wav_round_trip_and_resampling(tmp_path):
    path = tmp_path / "a.wav"
    x = _tone(440, 22050)
    audio.write_wav(path, x, 22050)
    y, rate = audio.read_wav(path)
    assert rate == 22050 and (y - x).abs().max() < 1e-4
    z = audio.resample(y, 22050, 16000)
    assert len(z) == 8000 and (z - _tone(440, 16000)).abs()[100:-100].max() < 1e-2


def test_log_mel_puts_a_tone_in_its_band_and_matches_a_direct_dft():
    cfg = audio.MelConfig(n_fft=400, hop=160, n_mels=40)
    bank = audio.mel_filterbank(cfg, 16000)
    # triangles peak at 1 at their centre frequency; sampled at the FFT bins every one is still clearly present
    assert bank.shape == (40, 201) and (bank.max(1).values > 0.5).all() and (bank.argmax(1).diff() >= 0).all()
    for freq in (400.0, 1000.0, 4000.0):  # on FFT bin centres (every 40 Hz)
        feats = audio.log_mel(_tone(freq, 16000), 16000, cfg)
        # the window leaks into the next bins, so a narrow low band's neighbour may win
        assert abs(int(feats.mean(0).argmax()) - int(bank[:, round(freq * 400 / 16000)].argmax())) <= 1
    # one frame by hand: Hann window, DFT power, filterbank, log
    x = torch.randn(4000, dtype=torch.float64)
    frame = x[1600 - 200:1600 + 200] * torch.hann_window(400, dtype=torch.float64)
    n = torch.arange(400, dtype=torch.float64)
    k = torch.arange(201, dtype=torch.float64)[:, None]
    dft = (frame * torch.exp(-2j * math.pi * k * n / 400)).sum(1)
    manual = torch.log(bank.double() @ dft.abs() ** 2 + 1e-6)
    assert torch.allclose(audio.log_mel(x, 16000, cfg)[10], manual, atol=1e-6)


def test_bad_wav_is_a_one_line_error_naming_the_file(tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="noise.wav: not a PCM WAV file"):
        audio.read_wav(bad)


# --- CTC -----------------------------------------------------------------------------------------------------------
def _enumerate(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """p(labels) for every labelling: the sum over every frame path (C^T of them) that collapses to it."""
    T, C = log_probs.shape
    out: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(C), repeat=T):
        lab = tuple(collapse(list(path)))
        out[lab] = out.get(lab, 0.0) + math.exp(sum(float(log_probs[t, s]) for t, s in enumerate(path)))
    return out


@pytest.mark.parametrize("T,C", [(3, 3), (4, 3), (5, 2)])
def test_ctc_loss_and_exact_beam_search_match_enumeration(T, C):
    logits = torch.randn(T, C, dtype=torch.float64)
    lp = torch.log_softmax(logits, -1)
    probs = _enumerate(lp)
    assert sum(probs.values()) == pytest.approx(1.0)
    # the loss of every labelling that fits: -log p(labels) / len(labels)
    for lab, p in probs.items():
        if lab:
            loss = ctc_loss(logits.float().unsqueeze(0), torch.tensor([list(lab)]))
            assert float(loss) == pytest.approx(-math.log(p) / len(lab), rel=1e-4)
    # a beam as wide as the number of prefixes is exact: the best labelling and its probability
    best = prefix_beam_search(lp, beam_size=C ** T)
    ref = max(probs, key=probs.get)
    assert tuple(best[0][0]) == ref and math.exp(best[0][1]) == pytest.approx(probs[ref])
    for lab, logp in best:
        assert math.exp(logp) == pytest.approx(probs[tuple(lab)])


def test_greedy_beam_and_padding():
    lp = torch.log_softmax(torch.randn(2, 6, 4), -1)
    lengths = torch.tensor([6, 3])
    g = greedy_decode(lp, lengths)
    assert g[1] == collapse(lp[1, :3].argmax(-1).tolist())
    # where one path holds nearly all the mass, the beam finds the same labelling as the best path
    peaked = torch.log_softmax(20 * lp, -1)
    assert beam_decode(peaked, lengths, beam_size=8) == greedy_decode(peaked, lengths)
    # a -100-padded target batch gives the same loss as each target alone
    targets = torch.tensor([[1, 2, 3], [2, IGNORE, IGNORE]])
    both = ctc_loss(lp, targets, lengths)
    alone = (ctc_loss(lp[:1], targets[:1]) + ctc_loss(lp[1:, :3], targets[1:, :1])) / 2
    assert torch.allclose(both, alone)
    assert edit_distance("123", "13") == 1 and edit_distance("", "12") == 2
    with pytest.raises(ValueError, match="beam_size"):
        prefix_beam_search(lp[0], beam_size=0)


# --- a folder of real-audio files (no espeak-ng needed) -------------------------------------------------------------
def _folder(tmp_path, n: int = 6, rate: int = 22050):
    d = tmp_path / "clips"
    d.mkdir()
    for i in range(n):
        audio.write_wav(d / f"utt{i}.wav", _tone(300 + 100 * (i % 3), rate), rate)
        (d / f"utt{i}.txt").write_text(["ab", "ba", "a"][i % 3] + "\n")
    return d


def test_data_dir_task_resamples_and_splits(tmp_path):
    d = _folder(tmp_path)
    audio.write_wav(d / "odd_rate.wav", _tone(300, 44100), 44100)  # resampled to 16 kHz
    (d / "odd_rate.txt").write_text("ab")
    task = make_task("speech", data_dir=str(d))
    assert task.alphabet == ["<blank>", "a", "b"]
    assert sum(task.num_examples(s) for s in ("train", "val", "test")) == 7
    b = next(task.batches("train", 4))
    assert b.x.shape[-1] == task.input_size == 40 * 3 and b.y.dtype == torch.int64
    assert task.baseline("test")["empty_cer"] == 1.0


def test_data_dir_errors_name_the_file(tmp_path):
    d = _folder(tmp_path)
    audio.write_wav(d / "phone.wav", _tone(300, 4000), 4000)
    (d / "phone.txt").write_text("a")
    with pytest.raises(ValueError, match=r"phone.wav: sample rate 4000 Hz is below 8000 Hz"):
        make_task("speech", data_dir=str(d))
    (d / "phone.wav").unlink()
    (d / "phone.txt").unlink()
    audio.write_wav(d / "lonely.wav", _tone(300, 16000), 16000)
    with pytest.raises(ValueError, match="lonely.wav' has no transcript 'lonely.txt'"):
        make_task("speech", data_dir=str(d))
    (d / "lonely.txt").write_text("  \n")
    with pytest.raises(ValueError, match="lonely.txt' is empty"):
        make_task("speech", data_dir=str(d))
    with pytest.raises(ValueError, match="is not a folder"):
        make_task("speech", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="test_variants: must not share"):
        make_task("speech", val_variants="f2", test_variants="f2")
    with pytest.raises(ValueError, match="val_variants: expected names"):
        make_task("speech", val_variants="nobody")


def test_cli_trains_and_evaluates_on_a_folder(tmp_path, capsys):
    d = _folder(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "speech", "-o", f"data_dir={d}", "--hidden-size", "8", "--epochs", "1", "--threads", "1",
                 "-q", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert set(json.loads(out)["metrics"]) >= {"cer", "cer_beam", "seq_acc"}
    assert main(["train", "speech", "-o", f"data_dir={tmp_path / 'nowhere'}", "--out", str(tmp_path / "r2")]) == 2
    assert "is not a folder" in capsys.readouterr().err


# --- espeak-ng synthetic digits ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def speech_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("speech-cache"))


def test_plan_is_deterministic_and_holds_out_voices():
    cfg = sp.SpeechConfig(**SMALL)
    plan = sp.synthesis_plan(cfg)
    assert plan == sp.synthesis_plan(sp.SpeechConfig(**SMALL))
    variants = {s: {c["voice"].split("+")[1] for c in plan if c["split"] == s} for s in ("train", "val", "test")}
    assert variants["test"] <= set(cfg.test_variants) and variants["val"] <= set(cfg.val_variants)
    assert not variants["train"] & (set(cfg.test_variants) | set(cfg.val_variants))
    assert all(1 <= len(c["digits"]) <= 3 for c in plan)


@needs_espeak
def test_every_voice_variant_exists(tmp_path):
    # espeak-ng silently falls back to its default voice for an unknown variant: each must sound different
    audio.synthesize("one", tmp_path / "default.wav", voice="en-us", speed=150, pitch=50)
    default = (tmp_path / "default.wav").read_bytes()
    for v in dict.fromkeys(sp.VARIANTS):
        audio.synthesize("one", tmp_path / "v.wav", voice=f"en-us+{v}", speed=150, pitch=50)
        assert (tmp_path / "v.wav").read_bytes() != default, v


@needs_espeak
def test_synthesis_is_cached_with_a_manifest(speech_cache, monkeypatch):
    task = make_task("speech", cache_dir=speech_cache, **SMALL)
    folder = next(Path(speech_cache).iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["clips"]) == 120 and manifest["espeak"].startswith("eSpeak NG")
    monkeypatch.setattr(sp, "synthesize", lambda *a, **k: pytest.fail("cached clips were synthesised again"))
    again = make_task("speech", cache_dir=speech_cache, **SMALL)
    assert torch.equal(next(again.batches("test", 64)).x, next(task.batches("test", 64)).x)


@needs_espeak
def test_small_ctc_model_beats_baseline_on_held_out_voices(speech_cache):
    # measured: CER 0.13 greedy / 0.08 beam vs 0.92 for the most frequent transcript, ~25 s on one thread
    r = train_run("speech", {"cache_dir": speech_cache, **SMALL},
                  ModelConfig(cell="gru", hidden_size=64, bidirectional=True),
                  TrainConfig(threads=1, epochs=30, batch_size=8, lr=3e-3))
    assert r.test["cer"] < r.baseline["cer"] - 0.4, (r.test, r.baseline)
    assert r.test["cer_beam"] < r.baseline["cer"] - 0.4, (r.test, r.baseline)


@needs_espeak
@pytest.mark.slow
def test_full_speech_run(speech_cache):
    # the README row: 600 clips of 1-4 digits, 2-layer bidirectional GRU
    r = train_run("speech", {"cache_dir": speech_cache}, ModelConfig(cell="gru", hidden_size=128, num_layers=2,
                                                                     bidirectional=True),
                  TrainConfig(threads=1, epochs=30, batch_size=16, lr=3e-3))
    assert r.test["cer"] < 0.3 and r.baseline["cer"] > 0.8, (r.test, r.baseline)


def test_missing_espeak_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sp, "espeak_available", lambda: False)
    with pytest.raises(ValueError, match="espeak-ng not found: install it with apt-get install espeak-ng"):
        make_task("speech", cache_dir=str(tmp_path))
    assert main(["train", "speech", "-o", f"cache_dir={tmp_path}", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "espeak-ng not found" in err
