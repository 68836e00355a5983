"""Speech recognition with CTC: spoken digit strings synthesised by espeak-ng (or a folder of WAV + transcripts).

The synthetic speech is made offline and reproducibly: a seeded plan (digits, voice, speed, pitch, noise
level per clip) is written as ``manifest.json`` beside the WAV files in a cache folder named by the hash of
the plan and the espeak-ng version, so a second run reuses the clips.  Voices are held out whole: the
val and test clips are spoken by espeak-ng voice variants (``+f2``, ``+m3``, ...) that no train clip uses.
This is synthetic speech: a model that reads it well has learned espeak-ng's formant synthesiser, not
human speech; the figures say how CTC and the decoders work, not how rnnlab fares on real recordings
(for those, pass ``data_dir``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from rnnlab.audio import (ESPEAK_INSTALL, MelConfig, add_noise, espeak_available, espeak_version, log_mel,
                          read_wav, resample, synthesize)
from rnnlab.ctc import IGNORE, beam_decode, ctc_loss, edit_distance, greedy_decode
from rnnlab.tasks._util import SPLITS, check_batch_size, check_split, positive_int, split_counts
from rnnlab.tasks.base import Batch, Split, Task

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: espeak-ng's English accents (its own voices, no mbrola data needed)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
#: espeak-ng voice variants (`espeak-ng --voices=variant`): a voice is accent + variant
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
            "croak", "whisper", "Andy", "Annie", "Denis", "Lee", "linda", "steph", "max")
SPEEDS = (120, 220)  # words per minute, uniform
PITCHES = (20, 80)  # espeak-ng's 0..99 pitch scale, uniform
MIN_RATE = 8000  # Hz; below this the mel front end would see mostly nothing
CACHE_ENV = "RNNLAB_CACHE"


def default_cache_dir() -> Path:
    """``$RNNLAB_CACHE`` or ``~/.cache/rnnlab``: where synthesised clips are kept between runs."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rnnlab")


@dataclass
class SpeechConfig:
    """Options of :class:`SpeechTask`.

    Synthetic data (default): ``n_clips`` digit strings of ``min_digits``..``max_digits`` digits, spoken by
    random accents x voice variants at random speed and pitch, with white noise at ``min_snr_db``..
    ``max_snr_db``.  ``val_variants`` / ``test_variants`` are voice variants kept out of training (and of
    each other).  ``cache_dir``: where the clips are kept (default ``$RNNLAB_CACHE`` or ``~/.cache/rnnlab``).

    Real audio: ``data_dir`` = a folder of ``NAME.wav`` + ``NAME.txt`` (its transcript) pairs, searched
    recursively; any PCM sample rate >= 8 kHz is resampled to ``sample_rate``; a seeded random
    ``val_fraction`` / ``test_fraction`` of the files become val / test.

    Front end: ``n_mels`` log-mel energies every 10 ms, ``stack`` consecutive frames concatenated into one
    step (fewer, wider steps for the RNN).  ``beam_size``: prefix beam search width of the ``cer_beam`` metric.
    """

    data_dir: str | None = None
    n_clips: int = 600
    min_digits: int = 1
    max_digits: int = 4
    val_variants: tuple[str, ...] = ("f4", "m5", "klatt3")
    test_variants: tuple[str, ...] = ("f2", "m3", "klatt2")
    min_snr_db: float = 10.0
    max_snr_db: float = 30.0
    sample_rate: int = 16000
    n_mels: int = 40
    stack: int = 3
    beam_size: int = 8
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_clips", "min_digits", "max_digits", "n_mels", "stack", "beam_size"):
            positive_int(name, getattr(self, name))
        positive_int("sample_rate", self.sample_rate, minimum=MIN_RATE)
        if self.n_clips < 3:
            raise ValueError(f"n_clips: expected an int >= 3 (one clip per split at least), got {self.n_clips}")
        if self.max_digits < self.min_digits:
            raise ValueError(f"max_digits: expected >= min_digits={self.min_digits}, got {self.max_digits}")
        if not self.min_snr_db <= self.max_snr_db:
            raise ValueError(f"max_snr_db: expected >= min_snr_db={self.min_snr_db}, got {self.max_snr_db}")
        for name in ("val_variants", "test_variants"):
            value = getattr(self, name)
            value = (value,) if isinstance(value, str) else tuple(value)
            unknown = [v for v in value if v not in VARIANTS]
            if not value or unknown:
                raise ValueError(f"{name}: expected names among {sorted(set(VARIANTS))}, got {list(value)}")
            setattr(self, name, value)
        if set(self.val_variants) & set(self.test_variants):
            raise ValueError(f"test_variants: must not share voices with val_variants, got "
                             f"{sorted(set(self.val_variants) & set(self.test_variants))} in both")
        if not set(VARIANTS) - set(self.val_variants) - set(self.test_variants):
            raise ValueError("val_variants/test_variants: no voice variant is left for training")


# --- synthetic clips ---------------------------------------------------------------------------------------------
def synthesis_plan(cfg: SpeechConfig) -> list[dict[str, Any]]:
    """The seeded list of clips to synthesise: name, digits, words spoken, voice, speed, pitch, SNR, split."""
    g = torch.Generator().manual_seed(cfg.seed)
    n_train, n_val, _ = split_counts(cfg.n_clips, cfg.val_fraction, cfg.test_fraction)
    held = set(cfg.val_variants) | set(cfg.test_variants)
    pools = {"train": [v for v in dict.fromkeys(VARIANTS) if v not in held], "val": list(cfg.val_variants),
             "test": list(cfg.test_variants)}

    def pick(seq: list | tuple) -> Any:
        return seq[int(torch.randint(len(seq), (1,), generator=g))]

    plan = []
    for i in range(cfg.n_clips):
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        n = int(torch.randint(cfg.min_digits, cfg.max_digits + 1, (1,), generator=g))
        digits = "".join(str(int(d)) for d in torch.randint(10, (n,), generator=g))
        u = torch.rand(3, generator=g).tolist()
        plan.append({"name": f"clip-{i:05d}", "digits": digits, "words": " ".join(DIGIT_WORDS[int(d)] for d in digits),
                     "voice": f"{pick(ACCENTS)}+{pick(pools[split])}",
                     "speed": round(SPEEDS[0] + u[0] * (SPEEDS[1] - SPEEDS[0])),
                     "pitch": round(PITCHES[0] + u[1] * (PITCHES[1] - PITCHES[0])),
                     "snr_db": round(cfg.min_snr_db + u[2] * (cfg.max_snr_db - cfg.min_snr_db), 2), "split": split})
    return plan


def synthetic_clips(cfg: SpeechConfig) -> tuple[Path, list[dict[str, Any]]]:
    """Folder and manifest of the synthesised clips, made (with espeak-ng) only if not cached yet."""
    if not espeak_available():
        raise ValueError(f"espeak-ng not found: install it with {ESPEAK_INSTALL}, or pass data_dir=DIR with "
                         "NAME.wav + NAME.txt pairs")
    plan = synthesis_plan(cfg)
    key_data = {"espeak": espeak_version(), "plan": plan}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    folder = folder / f"speech-digits-{key}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return folder, json.loads(manifest.read_text(encoding="utf-8"))["clips"]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cache_dir: cannot create {str(folder)!r} ({e.strerror or e})") from None
    for clip in plan:
        wav = folder / f"{clip['name']}.wav"
        if not wav.is_file():  # an interrupted synthesis resumes where it stopped
            tmp = folder / f".{clip['name']}.tmp.wav"
            synthesize(clip["words"], tmp, voice=clip["voice"], speed=clip["speed"], pitch=clip["pitch"])
            os.replace(tmp, wav)
    # the manifest is written last: its presence means every clip is there
    tmp = folder / ".manifest.json.tmp"
    tmp.write_text(json.dumps({**key_data, "clips": plan}, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, manifest)
    return folder, plan


# --- real audio ----------------------------------------------------------------------------------------------------
def folder_clips(data_dir: str, cfg: SpeechConfig) -> list[dict[str, Any]]:
    """NAME.wav + NAME.txt pairs under ``data_dir`` with a seeded random split; problems name the file."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data_dir: {data_dir!r} is not a folder")
    wavs = sorted(root.rglob("*.wav"))
    if len(wavs) < 3:
        raise ValueError(f"data_dir: {data_dir!r} holds {len(wavs)} .wav files; expected at least 3 "
                         "(NAME.wav with its transcript NAME.txt)")
    clips = []
    for wav in wavs:
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            raise ValueError(f"data_dir: {str(wav)!r} has no transcript {txt.name!r} beside it")
        try:
            text = " ".join(txt.read_text(encoding="utf-8").split())
        except UnicodeDecodeError:
            raise ValueError(f"data_dir: transcript {str(txt)!r} is not UTF-8 text") from None
        if not text:
            raise ValueError(f"data_dir: transcript {str(txt)!r} is empty")
        clips.append({"name": str(wav.relative_to(root).with_suffix("")), "path": str(wav), "digits": text})
    n_train, n_val, _ = split_counts(len(clips), cfg.val_fraction, cfg.test_fraction)
    order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    for rank, i in enumerate(order):
        clips[i]["split"] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return clips


def load_audio(path: str | Path, rate: int) -> Tensor:
    """Samples of a WAV file at ``rate`` Hz (resampled when needed); too low a rate is an error naming the file."""
    samples, file_rate = read_wav(path)
    if file_rate < MIN_RATE:
        raise ValueError(f"{path}: sample rate {file_rate} Hz is below {MIN_RATE} Hz; record at {rate} Hz "
                         f"(or at least {MIN_RATE})")
    return resample(samples, file_rate, rate)


def stack_frames(feats: Tensor, k: int) -> Tensor:
    """(T, F) -> (ceil(T / k), k * F): k consecutive frames side by side (the last group repeats its last frame)."""
    T = feats.shape[0]
    pad = (-T) % k
    if pad:
        feats = torch.cat([feats, feats[-1:].expand(pad, -1)])
    return feats.reshape(-1, k * feats.shape[1])  # (T + pad, F) -> ((T + pad) / k, k * F)


class SpeechTask(Task):
    """Transcribe utterances with CTC: per-step outputs over blank + the alphabet (``target="seq_class"``).

    ``x`` (B, T, n_mels * stack) standardised log-mel features, ``lengths`` their frames; ``y`` (B, L) label
    ids (1.. = alphabet, 0 = blank is never a label) padded with -100.  Metric: character error rate
    ``cer`` (edit distance / reference characters) of greedy decoding; ``cer_beam`` with the prefix beam
    search.  Baseline: the most frequent train transcript said for every clip (``empty_cer`` = 1 is the
    empty guess).
    """

    name = "speech"
    target = "seq_class"
    metric = "cer"
    higher_is_better = False

    def __init__(self, config: SpeechConfig | None = None) -> None:
        self.config = cfg = config or SpeechConfig()
        if cfg.data_dir is not None:
            clips = folder_clips(cfg.data_dir, cfg)
            self.source = repr(cfg.data_dir)
        else:
            folder, clips = synthetic_clips(cfg)
            clips = [{**c, "path": str(folder / f"{c['name']}.wav")} for c in clips]
            self.source = f"espeak-ng digit strings ({folder})"
        self.clips = clips
        #: id -> symbol; id 0 is the CTC blank
        self.alphabet: list[str] = ["<blank>"] + sorted({ch for c in clips for ch in c["digits"]})
        self._index = {ch: i for i, ch in enumerate(self.alphabet) if i}
        self.output_size = len(self.alphabet)
        self.input_size = cfg.n_mels * cfg.stack
        mel = MelConfig(n_mels=cfg.n_mels, n_fft=round(0.025 * cfg.sample_rate), hop=round(0.010 * cfg.sample_rate))
        feats: dict[str, list[Tensor]] = {s: [] for s in SPLITS}
        texts: dict[str, list[str]] = {s: [] for s in SPLITS}
        for i, clip in enumerate(clips):
            samples = load_audio(clip["path"], cfg.sample_rate)
            if "snr_db" in clip:  # synthetic: the plan's noise, seeded per clip so a rebuild is identical
                samples = add_noise(samples, clip["snr_db"], torch.Generator().manual_seed(cfg.seed * 1_000_003 + i))
            feats[clip["split"]].append(stack_frames(log_mel(samples, cfg.sample_rate, mel), cfg.stack))
            texts[clip["split"]].append(clip["digits"])
        for s in SPLITS:
            if not feats[s]:
                raise ValueError(f"n_clips: the {s} split is empty; use more clips")
        frames = torch.cat(feats["train"])  # (sum T_i, F): statistics of train frames only
        mean, std = frames.mean(0), frames.std(0) + 1e-5
        self.texts = texts
        self._data: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for s in SPLITS:
            lengths = torch.tensor([len(f) for f in feats[s]], dtype=torch.int64)
            x = torch.zeros(len(feats[s]), int(lengths.max()), self.input_size)
            for j, f in enumerate(feats[s]):
                x[j, :len(f)] = (f - mean) / std
            labels = [self.encode(t) for t in texts[s]]
            y = torch.full((len(labels), max(len(t) for t in labels)), IGNORE, dtype=torch.int64)
            for j, t in enumerate(labels):
                y[j, :len(t)] = torch.tensor(t)
            self._data[s] = (x, y, lengths)

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> list[int]:
        return [self._index[ch] for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)

    # ------------------------------------------------------------------ batches
    def num_examples(self, split: Split) -> int:
        return int(self._data[check_split(split)][0].shape[0])

    def batches(self, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        x, y, lengths = self._data[check_split(split)]
        check_batch_size(batch_size)
        order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            bl, by = lengths[idx], y[idx]
            width = int((by != IGNORE).sum(1).max())
            yield Batch(x[idx, :int(bl.max())], by[:, :width], bl)  # each trimmed to its own longest

    # ------------------------------------------------------------------ loss and metrics
    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return ctc_loss(output, batch.y, batch.lengths)

    def transcribe(self, output: Tensor, lengths: Tensor | None = None, *, beam_size: int = 1) -> list[str]:
        """Texts of a batch of model outputs (B, T, C): greedy decoding, or prefix beam search when beam_size > 1."""
        log_probs = torch.log_softmax(output.float(), -1)
        ids = greedy_decode(log_probs, lengths) if beam_size == 1 else beam_decode(log_probs, lengths,
                                                                                    beam_size=beam_size)
        return [self.decode(s) for s in ids]

    def _refs(self, batch: Batch) -> list[str]:
        return [self.decode([i for i in row if i != IGNORE]) for row in batch.y.tolist()]

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            refs = self._refs(batch)
            out = {"loss": float(self.loss(output, batch)) * len(batch), "count": float(len(batch)),
                   "chars": float(sum(len(r) for r in refs))}
            for key, beam in (("", 1), ("_beam", self.config.beam_size)):
                hyps = self.transcribe(output, batch.lengths, beam_size=beam)
                out[f"edits{key}"] = float(sum(edit_distance(h, r) for h, r in zip(hyps, refs)))
                out[f"exact{key}"] = float(sum(h == r for h, r in zip(hyps, refs)))
        return out

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n, chars = sums.get("count", 0.0), sums.get("chars", 0.0)
        if n <= 0 or chars <= 0:
            raise ValueError(f"sums: expected positive 'count' and 'chars', got {n!r}, {chars!r}")
        return {"loss": sums["loss"] / n, "cer": sums["edits"] / chars, "cer_beam": sums["edits_beam"] / chars,
                "seq_acc": sums["exact"] / n, "seq_acc_beam": sums["exact_beam"] / n, "count": n}

    def baseline(self, split: Split = "test") -> dict[str, float]:
        """Saying the most frequent train transcript for every clip; ``empty_cer`` for saying nothing (1.0)."""
        train = self.texts["train"]
        common = max(sorted(set(train)), key=train.count)
        refs = self.texts[check_split(split)]
        chars = sum(len(r) for r in refs)
        cer = sum(edit_distance(common, r) for r in refs) / chars
        acc = sum(r == common for r in refs) / len(refs)
        return {"cer": cer, "cer_beam": cer, "seq_acc": acc, "seq_acc_beam": acc, "empty_cer": 1.0}

    def describe(self) -> str:
        sizes = ", ".join(f"{self.num_examples(s)} {s}" for s in SPLITS)
        frames = sum(int(self._data[s][2].sum()) for s in SPLITS) * self.config.stack * 0.01
        return (f"speech on {self.source}: {sizes} clips ({frames / 60:.1f} min), alphabet "
                f"{''.join(self.alphabet[1:])!r} + blank, metric=cer")
