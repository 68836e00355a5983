"""Synthetic long-range memory tasks with the lag as a parameter: adding problem, copy memory, cue at distance.

Each split is drawn from its own seeded generator, so a (config, seed) pair always gives the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.tasks._util import SPLITS, ClassificationMixin, RegressionMixin, TensorTask, check_split, positive_int
from rnnlab.tasks.base import Batch, Split


def _split_generator(seed: int, split: Split) -> torch.Generator:
    # distinct, fixed streams per split: the test set never depends on how large train is
    return torch.Generator().manual_seed(seed * 1_000_003 + SPLITS.index(split))


def _check_counts(cfg) -> None:
    for name in ("n_train", "n_val", "n_test"):
        positive_int(name, getattr(cfg, name))
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {cfg.seed!r}")


# ------------------------------------------------------------------------------------------------ adding
@dataclass
class AddingConfig:
    """Options of :class:`AddingTask`; ``lag`` is the sequence length T."""

    lag: int = 50
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        positive_int("lag", self.lag, minimum=2)
        _check_counts(self)


class AddingTask(RegressionMixin, TensorTask):
    """The adding problem (Hochreiter & Schmidhuber 1997, as in Le et al. 2015): sum the two marked values.

    Each step carries two features, a value ~ U(0, 1) and a marker; exactly one marker lies in the
    first half of the sequence and one in the second half.  The target is the sum of the two marked
    values, read from the last step, so the first one must be remembered for at least T/2 steps.
    Predicting the constant 1.0 scores MSE = Var(U1 + U2) = 1/6 ≈ 0.1667: the baseline to beat.

    >>> task = AddingTask(AddingConfig(lag=10, n_train=4, n_val=2, n_test=2))
    >>> b = next(task.batches("train", 4)); tuple(b.x.shape), tuple(b.y.shape)
    ((4, 10, 2), (4, 1))
    """

    name = "adding"
    target = "regression"
    metric = "mse"
    input_size = 2
    output_size = 1

    def __init__(self, config: AddingConfig | None = None) -> None:
        self.config = config or AddingConfig()
        counts = {"train": self.config.n_train, "val": self.config.n_val, "test": self.config.n_test}
        self._data = {s: (*self._make(counts[s], _split_generator(self.config.seed, s)), None) for s in SPLITS}

    def _make(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        T = self.config.lag
        half = T // 2
        values = torch.rand(n, T, generator=g)
        first = torch.randint(0, half, (n,), generator=g)
        second = torch.randint(half, T, (n,), generator=g)
        markers = torch.zeros(n, T)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        x = torch.stack([values, markers], dim=-1)  # (N, T, 2)
        y = (values[rows, first] + values[rows, second]).unsqueeze(1)  # (N, 1)
        return x, y

    def baseline(self, split: Split = "test") -> dict[str, float]:
        """Error of always predicting 1.0 (the expected sum) on the split's targets."""
        y = self._data[check_split(split)][1]
        return self.error_summary(torch.ones_like(y), y)


# ------------------------------------------------------------------------------------------------ copy
@dataclass
class CopyConfig:
    """Options of :class:`CopyTask`; ``lag`` is the number of steps between a symbol and its recall cue."""

    lag: int = 20
    n_symbols: int = 8
    n_copy: int = 5
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        positive_int("lag", self.lag)
        positive_int("n_symbols", self.n_symbols, minimum=2)
        positive_int("n_copy", self.n_copy)
        _check_counts(self)


class CopyTask(TensorTask):
    """Copy memory (Hochreiter & Schmidhuber 1997; the form of Arjovsky et al. 2016, "Unitary evolution RNNs").

    Input tokens: ``n_copy`` random symbols, ``lag - 1`` blanks, a delimiter, ``n_copy - 1`` more blanks;
    after the delimiter the model must output the symbols in order.  T = lag + 2·n_copy.
    Deviation from Arjovsky et al.: only the ``n_copy`` recall steps are scored (the others are -100),
    so accuracy measures memory and not the trivial "output blank" steps.  A memoryless model cannot
    beat chance there: accuracy 1/n_symbols, cross-entropy log2(n_symbols) bits.

    Token ids: 0 blank, 1..n_symbols symbols, n_symbols+1 delimiter; class c at a recall step = symbol c+1.

    >>> task = CopyTask(CopyConfig(lag=4, n_symbols=3, n_copy=2, n_train=1, n_val=1, n_test=1))
    >>> x, y, _ = task.split_tensors("train"); x.shape[1] == 4 + 2 * 2 and (y[0, :6] == -100).all().item()
    True
    """

    name = "copy"
    target = "seq_class"
    metric = "accuracy"
    higher_is_better = True
    input_size = 1

    def __init__(self, config: CopyConfig | None = None) -> None:
        self.config = config or CopyConfig()
        self.vocab_size = self.config.n_symbols + 2
        self.output_size = self.config.n_symbols
        counts = {"train": self.config.n_train, "val": self.config.n_val, "test": self.config.n_test}
        self._data = {s: (*self._make(counts[s], _split_generator(self.config.seed, s)), None) for s in SPLITS}

    def _make(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        K, m, lag = self.config.n_symbols, self.config.n_copy, self.config.lag
        T = lag + 2 * m
        symbols = torch.randint(1, K + 1, (n, m), generator=g)
        x = torch.zeros(n, T, dtype=torch.int64)  # (N, T) token ids, blank = 0
        x[:, :m] = symbols
        x[:, m + lag - 1] = K + 1  # delimiter: "recall now"
        y = torch.full((n, T), -100, dtype=torch.int64)  # (N, T); only the recall steps are scored
        y[:, lag + m:] = symbols - 1
        return x, y

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.flatten(0, 1), batch.y.flatten(), ignore_index=-100)

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            y = batch.y.flatten()
            keep = y != -100
            logits = output.flatten(0, 1)[keep].float()  # (N_scored, C)
            ce = F.cross_entropy(logits, y[keep], reduction="sum")
            correct = (logits.argmax(-1) == y[keep]).sum()
        return {"loss": float(ce), "bits": float(ce) / math.log(2), "accuracy": float(correct),
                "count": float(keep.sum())}

    def baseline(self, split: Split = "test") -> dict[str, float]:
        """A memoryless predictor: the train symbol frequencies (accuracy of the most frequent one)."""
        train_y = self._data["train"][1]
        counts = torch.bincount(train_y[train_y != -100], minlength=self.output_size).double()
        probs = counts / counts.sum()
        y = self._data[check_split(split)][1]
        y = y[y != -100]
        ce = float(-probs.clamp_min(1e-12).log()[y].mean())
        return {"accuracy": float((y == int(counts.argmax())).double().mean()), "loss": ce,
                "bits": ce / math.log(2)}


# ------------------------------------------------------------------------------------------------ cue
#: (country, language) pairs: the cue and the answer of the cue-at-distance task
COUNTRIES: tuple[tuple[str, str], ...] = (
    ("france", "french"), ("germany", "german"), ("spain", "spanish"), ("italy", "italian"),
    ("japan", "japanese"), ("china", "chinese"), ("russia", "russian"), ("greece", "greek"),
    ("portugal", "portuguese"), ("poland", "polish"), ("turkey", "turkish"), ("sweden", "swedish"),
)
PREFIX = ("i", "grew", "up", "in")
SUFFIX = ("so", "i", "speak", "fluent")
#: neutral filler words (no country or language among them)
FILLER = ("the", "weather", "was", "often", "rainy", "and", "we", "walked", "to", "school", "every",
          "morning", "with", "my", "brother", "who", "liked", "music", "books", "a", "small", "house",
          "near", "river", "later", "moved", "city", "for", "work", "friends", "old", "years")


@dataclass
class CueConfig:
    """Options of :class:`CueTask`; ``lag`` is the number of filler words between the cue and the question.

    The defaults (4 countries: chance 0.25; 4,000 training sequences) are the ones where, at lag 20, a
    32-unit LSTM (forget bias 2) or GRU reaches accuracy 1.0 in 8-10 epochs of Adam at lr 1e-2 while the
    Elman RNN stays at chance; with 8 countries and 2,000 sequences even the LSTM does not find the cue.
    """

    lag: int = 20
    n_countries: int = 4
    #: how many distinct filler words are drawn from (fewer = less noise a model can memorise)
    filler_words: int = len(FILLER)
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        positive_int("lag", self.lag, minimum=0)
        positive_int("n_countries", self.n_countries, minimum=2)
        if self.n_countries > len(COUNTRIES):
            raise ValueError(f"n_countries: expected at most {len(COUNTRIES)}, got {self.n_countries!r}")
        positive_int("filler_words", self.filler_words)
        if self.filler_words > len(FILLER):
            raise ValueError(f"filler_words: expected at most {len(FILLER)}, got {self.filler_words!r}")
        _check_counts(self)


class CueTask(ClassificationMixin, TensorTask):
    """Cue at distance: "i grew up in france . <lag filler words> so i speak fluent" -> "french".

    Word tokens; the country named early decides the language class at the end, and the filler
    between them is random neutral words, so only a memory spanning ``lag + 5`` steps solves it.
    A model without that memory is at chance, 1 / n_countries (baseline: majority class of train).

    >>> task = CueTask(CueConfig(lag=3, n_countries=2, n_train=2, n_val=1, n_test=1))
    >>> x, y, _ = task.split_tensors("train"); task.decode(x[0])[:5], task.languages[int(y[0])] in ("french", "german")
    (['i', 'grew', 'up', 'in', 'france'], True)
    """

    name = "cue"
    target = "class"
    input_size = 1

    def __init__(self, config: CueConfig | None = None) -> None:
        self.config = config or CueConfig()
        pairs = COUNTRIES[:self.config.n_countries]
        self.countries = [c for c, _ in pairs]
        self.languages = [lang for _, lang in pairs]
        self.vocab: list[str] = list(dict.fromkeys([*PREFIX, *self.countries, ".", *FILLER, *SUFFIX]))
        self._ids = {w: i for i, w in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)
        self.output_size = len(pairs)
        counts = {"train": self.config.n_train, "val": self.config.n_val, "test": self.config.n_test}
        self._data = {s: (*self._make(counts[s], _split_generator(self.config.seed, s)), None) for s in SPLITS}

    def encode(self, words: list[str]) -> Tensor:
        return torch.tensor([self._ids[w] for w in words], dtype=torch.int64)

    def decode(self, ids: Tensor) -> list[str]:
        return [self.vocab[int(i)] for i in ids.tolist()]

    def _make(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, self.output_size, (n,), generator=g)
        filler_ids = self.encode(list(FILLER[:self.config.filler_words]))
        filler = filler_ids[torch.randint(0, len(filler_ids), (n, self.config.lag), generator=g)]  # (N, lag)
        prefix = self.encode(list(PREFIX)).expand(n, -1)  # (N, 4)
        country = torch.tensor([self._ids[c] for c in self.countries])[y].unsqueeze(1)  # (N, 1)
        dot = torch.full((n, 1), self._ids["."], dtype=torch.int64)
        suffix = self.encode(list(SUFFIX)).expand(n, -1)  # (N, 4)
        x = torch.cat([prefix, country, dot, filler, suffix], dim=1)  # (N, T = lag + 10)
        return x, y

    def baseline(self, split: Split = "test") -> dict[str, float]:
        return self.majority_baseline(split)
