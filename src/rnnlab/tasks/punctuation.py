"""Punctuation and capitalisation restoration: tag every lower-cased word of Shakespeare (or a text file).

Input: the words of the text, lower-cased, punctuation removed.  Label of each word: the punctuation mark that
followed it (none , . ? ! or : for both colon and semicolon) times whether it was capitalised: 6 x 2 = 12
tags.  A bidirectional tagger sees the words after each one, which is where most evidence for a full stop lies.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.crf import IGNORE, neg_log_likelihood, viterbi_decode
from rnnlab.tasks._util import SPLITS, TensorTask, positive_int, split_counts
from rnnlab.tasks.base import Batch, Split
from rnnlab.tasks.charlm import _shakespeare_text, read_text_file

#: punctuation classes: the name used in metric keys, and the mark written back by :func:`restore`
PUNCT_NAMES = ("none", "comma", "period", "question", "exclaim", "colon")
PUNCT_MARKS = ("", ",", ".", "?", "!", ":")
_MARK_CLASS = {",": 1, ".": 2, "?": 3, "!": 4, ":": 5, ";": 5}
NUM_TAGS = 2 * len(PUNCT_NAMES)  # tag = punct * 2 + capitalised
UNK = "<unk>"
# a word keeps inner apostrophes (e'er, o'er, thou'rt); the marks are the ones the labels know
_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|[,.;:?!]")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def tag_of(punct: int, capitalised: bool) -> int:
    return punct * 2 + int(capitalised)


def split_tag(tag: int) -> tuple[int, bool]:
    """tag -> (punctuation class, capitalised)."""
    return tag // 2, bool(tag % 2)


def label_words(text: str) -> tuple[list[str], list[int]]:
    """Lower-cased words of ``text`` and their tags (the first mark after a word counts; later ones are dropped).

    >>> words, tags = label_words("Good night, sweet prince!")
    >>> words, [split_tag(t) for t in tags]
    (['good', 'night', 'sweet', 'prince'], [(0, True), (1, False), (0, False), (4, False)])
    """
    words: list[str] = []
    tags: list[int] = []
    marked = True  # no word yet: a leading mark has nothing to attach to
    for tok in _TOKEN.findall(text):
        if tok[0].isalpha():
            words.append(tok.lower())
            tags.append(tag_of(0, tok[0].isupper()))
            marked = False
        elif not marked:
            tags[-1] += 2 * _MARK_CLASS[tok]
            marked = True
    return words, tags


def words_of(text: str) -> list[str]:
    """What the tagger reads: the lower-cased words of ``text``, punctuation and other symbols dropped."""
    return _WORD.findall(text.lower())


@functools.lru_cache(maxsize=4)
def _labelled(path: str | None, works: tuple[str, ...] | None) -> tuple[list[str], list[int]]:
    text = read_text_file(path) if path is not None else _shakespeare_text(works)
    return label_words(text)


@dataclass
class PunctuationConfig:
    """Options of :class:`PunctuationTask`.

    ``path``: a UTF-8 text file instead of Shakespeare (``works`` picks plays, all 42 otherwise);
    ``max_words`` keeps the start.  The word stream is split by position into train | val | test and cut
    into windows of ``seq_len`` words.  The vocabulary: the ``max_vocab`` - 1 most frequent train words
    seen at least ``min_count`` times; every other word becomes ``<unk>``.
    """

    path: str | None = None
    works: tuple[str, ...] | None = None
    max_words: int | None = None
    seq_len: int = 50
    max_vocab: int = 10000
    min_count: int = 2
    val_fraction: float = 0.05
    test_fraction: float = 0.05

    def __post_init__(self) -> None:
        positive_int("seq_len", self.seq_len)
        positive_int("max_vocab", self.max_vocab, minimum=2)
        positive_int("min_count", self.min_count)
        if self.max_words is not None:
            positive_int("max_words", self.max_words, minimum=3)
        if self.path is not None and self.works is not None:
            raise ValueError("works: only for the Shakespeare texts, not together with path")
        if isinstance(self.works, str):
            self.works = (self.works,)
        elif isinstance(self.works, list):  # from JSON (saved run configs): the text cache needs a tuple
            self.works = tuple(self.works)


def f1_scores(counts: dict[str, float]) -> dict[str, float]:
    """Per-class F1 from summed ``tp_K`` / ``fp_K`` / ``fn_K`` counts; ``macro_f1`` = mean over the five marks
    and capitalisation ("none" is reported but left out of the mean: it is what a do-nothing tagger gets right).
    A class with no true and no predicted instances is left out of the mean."""
    out: dict[str, float] = {}
    scored: list[float] = []
    for name in (*PUNCT_NAMES, "cap"):
        tp, fp, fn = (counts.get(f"{k}_{name}", 0.0) for k in ("tp", "fp", "fn"))
        if tp + fp + fn == 0:
            continue
        out[f"f1_{name}"] = 2 * tp / (2 * tp + fp + fn)
        if name != "none":
            scored.append(out[f"f1_{name}"])
    out["macro_f1"] = sum(scored) / len(scored) if scored else 0.0
    return out


def confusion_counts(pred: Tensor, truth: Tensor) -> dict[str, float]:
    """tp/fp/fn per punctuation class and for capitalisation, plus correct tags and ``count``; -100 ignored."""
    valid = truth != IGNORE
    pred, truth = pred[valid], truth[valid]
    out: dict[str, float] = {"correct": float((pred == truth).sum()), "count": float(truth.numel())}
    pp, tp_ = pred // 2, truth // 2
    for k, name in enumerate(PUNCT_NAMES):
        out[f"tp_{name}"] = float(((pp == k) & (tp_ == k)).sum())
        out[f"fp_{name}"] = float(((pp == k) & (tp_ != k)).sum())
        out[f"fn_{name}"] = float(((pp != k) & (tp_ == k)).sum())
    pc, tc = pred % 2 == 1, truth % 2 == 1
    out.update(tp_cap=float((pc & tc).sum()), fp_cap=float((pc & ~tc).sum()), fn_cap=float((~pc & tc).sum()))
    return out


def reduce_counts(sums: dict[str, float]) -> dict[str, float]:
    count = sums.get("count", 0.0)
    if count <= 0:
        raise ValueError(f"sums: expected a positive 'count', got {count!r}")
    out = {"loss": sums.get("loss", math.nan) / count, "accuracy": sums["correct"] / count}
    out.update(f1_scores(sums))
    out["count"] = count
    return out


class PunctuationTask(TensorTask):
    """Restore punctuation and capitals from lower-cased words: one of 12 tags per word (``target="seq_class"``).

    The model's output is either logits (B, T, 12) (cross-entropy, argmax) or, with ``ModelConfig(crf=True)``,
    CRF edge potentials (B, T, 12, 12) (negative log-likelihood, Viterbi).  Padded steps carry the label -100
    and are masked out of both.  Metric: ``macro_f1`` over the five marks and capitalisation.  Baseline: the
    unigram tagger (each word's most frequent train tag; ``<unk>`` and unseen words get the overall most
    frequent tag), with the majority tagger's scores under ``majority_*``.

    >>> task = PunctuationTask(PunctuationConfig(works=("sonnets",), seq_len=20))
    >>> b = next(task.batches("train", 4)); tuple(b.y.shape), task.output_size
    ((4, 20), 12)
    """

    name = "punctuation"
    target = "seq_class"
    metric = "macro_f1"
    higher_is_better = True
    input_size = 1
    output_size = NUM_TAGS

    def __init__(self, config: PunctuationConfig | None = None) -> None:
        self.config = cfg = config or PunctuationConfig()
        words, tags = _labelled(cfg.path, cfg.works)
        self.source = repr(cfg.path) if cfg.path is not None else "the Shakespeare texts"
        if cfg.max_words is not None:
            words, tags = words[:cfg.max_words], tags[:cfg.max_words]
        if not words:
            raise ValueError(f"path: {self.source} has no words to tag")
        n_train, n_val, _ = split_counts(len(words), cfg.val_fraction, cfg.test_fraction)
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(words))}
        counts: dict[str, int] = {}
        for w in words[:n_train]:
            counts[w] = counts.get(w, 0) + 1
        kept = sorted((w for w, c in counts.items() if c >= cfg.min_count), key=lambda w: (-counts[w], w))
        #: id -> word; id 0 is <unk> (also the padding id: padded steps are masked by their -100 label)
        self.words: list[str] = [UNK] + kept[:cfg.max_vocab - 1]
        if len(self.words) < 2:
            raise ValueError(f"min_count: no train word of {self.source} occurs {cfg.min_count} times; "
                             f"lower min_count or use a longer text")
        self._index = {w: i for i, w in enumerate(self.words)}
        self.vocab_size = len(self.words)
        self._ids: dict[str, Tensor] = {}
        self._tags: dict[str, Tensor] = {}
        self._data = {}
        for split, (a, b) in bounds.items():
            ids = torch.tensor([self._index.get(w, 0) for w in words[a:b]], dtype=torch.int64)
            tg = torch.tensor(tags[a:b], dtype=torch.int64)
            self._ids[split], self._tags[split] = ids, tg
            self._data[split] = self._windows(ids, tg)
        self._unigram = self._unigram_table()

    def _windows(self, ids: Tensor, tags: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        T = self.config.seq_len
        n = math.ceil(len(ids) / T)
        x = torch.zeros(n * T, dtype=torch.int64)
        y = torch.full((n * T,), IGNORE, dtype=torch.int64)
        x[:len(ids)], y[:len(ids)] = ids, tags
        lengths = torch.full((n,), T, dtype=torch.int64)
        lengths[-1] = len(ids) - (n - 1) * T  # the last window is shorter; its tail is padding
        return x.view(n, T), y.view(n, T), lengths  # (N, T), (N, T), (N,)

    def _unigram_table(self) -> Tensor:
        """Most frequent train tag of each word id (V,); ``<unk>`` gets the overall most frequent tag."""
        ids, tags = self._ids["train"], self._tags["train"]
        joint = torch.bincount(ids * NUM_TAGS + tags, minlength=self.vocab_size * NUM_TAGS)
        table = joint.view(self.vocab_size, NUM_TAGS).argmax(1)  # (V,)
        table[0] = torch.bincount(tags, minlength=NUM_TAGS).argmax()
        return table

    # ------------------------------------------------------------------ encoding
    def encode(self, words: list[str]) -> tuple[Tensor, list[str]]:
        """Ids (T,) of ``words`` and the words that were not in the vocabulary (mapped to ``<unk>``)."""
        ids = [self._index.get(w, 0) for w in words]
        return torch.tensor(ids, dtype=torch.int64), [w for w, i in zip(words, ids) if i == 0]

    # ------------------------------------------------------------------ loss, predictions, metrics
    @staticmethod
    def predict(output: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Tags (B, T) from logits (argmax) or CRF potentials (Viterbi); padded steps get -100."""
        if output.dim() == 4:
            return viterbi_decode(output, lengths)
        pred = output.argmax(-1)
        if lengths is not None:
            mask = torch.arange(pred.shape[1], device=pred.device).unsqueeze(0) < lengths.to(pred.device)[:, None]
            pred = torch.where(mask, pred, torch.full_like(pred, IGNORE))
        return pred

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        if output.dim() == 4:  # CRF: mean negative log-likelihood per tagged word
            nll = neg_log_likelihood(output, batch.y, batch.lengths)
            return nll.sum() / (batch.y != IGNORE).sum().clamp(min=1)
        return F.cross_entropy(output.flatten(0, 1), batch.y.flatten(), ignore_index=IGNORE)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            out = confusion_counts(self.predict(output, batch.lengths), batch.y)
            out["loss"] = float(self.loss(output.float(), batch)) * out["count"]
        return out

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return reduce_counts(sums)

    def baseline(self, split: Split = "test") -> dict[str, float]:
        """The unigram tagger's scores, and the majority tagger's under ``majority_*``."""
        ids, tags = self._ids[split], self._tags[split]
        majority = int(self._unigram[0])
        uni = reduce_counts({**confusion_counts(self._unigram[ids], tags), "loss": math.nan})
        maj = reduce_counts({**confusion_counts(torch.full_like(tags, majority), tags), "loss": math.nan})
        uni.pop("loss"), uni.pop("count"), maj.pop("loss"), maj.pop("count")
        return {**uni, **{f"majority_{k}": v for k, v in maj.items()}}

    def describe(self) -> str:
        sizes = ", ".join(f"{len(self._ids[s])} {s}" for s in SPLITS)
        return f"punctuation on {self.source}: {sizes} words, vocab {self.vocab_size}, 12 tags, metric=macro_f1"


def restore(words: list[str], tags: list[int]) -> str:
    """Write ``words`` back with each tag's capital and mark.

    >>> restore(["good", "night", "sweet", "prince"], [1, 2, 0, 8])
    'Good night, sweet prince!'
    """
    out = []
    for w, t in zip(words, tags):
        punct, cap = split_tag(int(t))
        out.append((w[:1].upper() + w[1:] if cap else w) + PUNCT_MARKS[punct])
    return " ".join(out)


@torch.no_grad()
def tag_text(model: nn.Module, task: PunctuationTask, text: str) -> tuple[str, list[str]]:
    """Restore punctuation and capitals in ``text``; returns the text and the words read as ``<unk>``.

    Unknown words are tagged like any other (as ``<unk>``, from their context) and written back unchanged.
    """
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string, got {type(text).__name__}")
    words = words_of(text)
    if not words:
        raise ValueError(f"text: expected at least one word (letters a-z), got {text!r}")
    if getattr(model, "target", None) != "seq_class" or getattr(model, "output_size", None) != NUM_TAGS:
        raise ValueError("model: expected a punctuation tagger (seq_class model with 12 tags)")
    ids, unknown = task.encode(words)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out, _ = model(ids.unsqueeze(0).to(device))  # (1, T, 12) or (1, T, 12, 12)
    finally:
        model.train(was_training)
    tags = task.predict(out.float().cpu())[0].tolist()
    return restore(words, tags), unknown
