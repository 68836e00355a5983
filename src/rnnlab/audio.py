"""Audio for speech tasks: WAV reading, band-limited resampling, log-mel features, espeak-ng synthesis.

Everything is plain torch (no torchaudio): ``torch.stft`` with a Hann window, a triangular mel filterbank
on the HTK mel scale, ``log(energy + 1e-6)``.

>>> wave = torch.sin(2 * math.pi * 1000 * torch.arange(16000) / 16000)  # 1 s of a 1 kHz tone
>>> feats = log_mel(wave, 16000, MelConfig(n_mels=40))
>>> tuple(feats.shape), int(feats.mean(0).argmax()) == int(mel_filterbank(MelConfig(n_mels=40), 16000)
...     .argmax(0)[round(1000 * 400 / 16000)])
((101, 40), True)
"""

from __future__ import annotations

import math
import shutil
import subprocess
import wave as wavefile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ESPEAK = "espeak-ng"
ESPEAK_INSTALL = "apt-get install espeak-ng (or `make speech`)"


@dataclass(frozen=True)
class MelConfig:
    """Log-mel front end: ``n_fft``-sample Hann frames every ``hop`` samples (25 ms / 10 ms at 16 kHz)."""

    n_fft: int = 400
    hop: int = 160
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float | None = None  # None: Nyquist


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """Mono float32 samples in [-1, 1] (N,) and the sample rate of a PCM WAV file (8/16/24/32-bit, any channels).

    Anything else raises ``ValueError`` naming the file.
    """
    p = Path(path)
    try:
        with wavefile.open(str(p), "rb") as f:
            rate, channels, width, n = f.getframerate(), f.getnchannels(), f.getsampwidth(), f.getnframes()
            raw = f.readframes(n)
    except (wavefile.Error, EOFError) as e:
        raise ValueError(f"{p}: not a PCM WAV file ({e})") from None
    except OSError as e:
        raise ValueError(f"{p}: cannot read ({e.strerror or e})") from None
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:  # 24-bit: three little-endian bytes, sign-extended through the top byte
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        data = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 8388608.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:  # pragma: no cover - the wave module rejects other widths itself
        raise ValueError(f"{p}: unsupported sample width {width} bytes")
    if data.size == 0:
        raise ValueError(f"{p}: the WAV file holds no samples")
    samples = torch.from_numpy(data.reshape(-1, channels).mean(1))  # (N, channels) -> (N,) mono
    return samples, rate


def write_wav(path: str | Path, samples: Tensor, rate: int) -> None:
    """16-bit mono PCM WAV of ``samples`` (N,) in [-1, 1] (clipped)."""
    pcm = (samples.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().astype("<i2")
    with wavefile.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def resample(samples: Tensor, rate: int, new_rate: int) -> Tensor:
    """Band-limited resampling by the FFT: keep (or zero-pad) the spectrum below the lower Nyquist frequency.

    >>> x = torch.sin(2 * math.pi * 440 * torch.arange(22050) / 22050)
    >>> y = resample(x, 22050, 16000)
    >>> len(y), bool((y - torch.sin(2 * math.pi * 440 * torch.arange(16000) / 16000)).abs().max() < 1e-3)
    (16000, True)
    """
    for name, value in (("rate", rate), ("new_rate", new_rate)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if rate == new_rate:
        return samples
    n = samples.shape[-1]
    m = max(1, round(n * new_rate / rate))
    spec = torch.fft.rfft(samples.double())
    keep = min(spec.shape[-1], m // 2 + 1)
    out = torch.zeros(m // 2 + 1, dtype=spec.dtype)
    out[:keep] = spec[:keep]
    return (torch.fft.irfft(out, n=m) * (m / n)).to(samples.dtype)


def hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(config: MelConfig, rate: int) -> Tensor:
    """Triangular filters (n_mels, n_fft // 2 + 1), equally spaced on the mel scale, peaking at 1 at their centre
    frequency (the FFT bins sample them, so the narrow low ones may show a lower maximum)."""
    f_max = config.f_max or rate / 2
    if not 0 <= config.f_min < f_max <= rate / 2:
        raise ValueError(f"f_min/f_max: expected 0 <= f_min < f_max <= {rate / 2} Hz, got {config.f_min}, {f_max}")
    bins = torch.linspace(0, rate / 2, config.n_fft // 2 + 1, dtype=torch.float64)  # FFT bin centres (Hz)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(torch.tensor(config.f_min))),
                                     float(hz_to_mel(torch.tensor(f_max))), config.n_mels + 2, dtype=torch.float64))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    rising = (bins - lo) / (mid - lo)
    falling = (hi - bins) / (hi - mid)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()  # (n_mels, F)


def log_mel(samples: Tensor, rate: int, config: MelConfig = MelConfig()) -> Tensor:
    """Log mel energies (frames, n_mels) of mono ``samples`` (N,); frames are centred (``N // hop + 1`` of them)."""
    if samples.dim() != 1 or samples.numel() == 0:
        raise ValueError(f"samples: expected a non-empty 1-D waveform, got shape {tuple(samples.shape)}")
    window = torch.hann_window(config.n_fft, dtype=samples.dtype)
    spec = torch.stft(samples, config.n_fft, config.hop, window=window, center=True, pad_mode="reflect"
                      if samples.numel() > config.n_fft // 2 else "constant", return_complex=True)  # (F, frames)
    power = spec.abs() ** 2
    mel = mel_filterbank(config, rate).to(power.dtype) @ power  # (n_mels, F) @ (F, frames)
    return torch.log(mel + 1e-6).T.contiguous()  # (frames, n_mels)


def add_noise(samples: Tensor, snr_db: float, generator: torch.Generator) -> Tensor:
    """White Gaussian noise at ``snr_db`` dB below the signal's mean power."""
    power = samples.pow(2).mean().clamp(min=1e-10)
    noise = torch.randn(samples.shape, generator=generator, dtype=samples.dtype)
    return samples + noise * torch.sqrt(power / 10 ** (snr_db / 10))


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def espeak_version() -> str:
    """``espeak-ng --version`` (part of the synthetic data's cache key: another version speaks differently)."""
    return subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def synthesize(text: str, path: str | Path, *, voice: str, speed: int, pitch: int) -> None:
    """Speak ``text`` with espeak-ng into the WAV file ``path`` (22,050 Hz mono)."""
    if not espeak_available():
        raise FileNotFoundError(f"{ESPEAK} not found: install it with {ESPEAK_INSTALL}")
    cmd = [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not Path(path).is_file():
        raise RuntimeError(f"{ESPEAK} failed for voice {voice!r}: {done.stderr.strip() or done.returncode}")
