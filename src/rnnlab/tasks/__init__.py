"""Task registry: every built-in task by name, with its options as a dataclass config.

>>> task = make_task("adding", lag=20, n_train=8, n_val=4, n_test=4)
>>> task.name, task.target, task.num_examples("train")
('adding', 'regression', 8)
>>> make_task("cue", lag="5", n_train="8").config.lag   # CLI strings are converted to the field's type
5
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from rnnlab.tasks._util import coerce_options, summarize
from rnnlab.tasks.base import Batch, Split, Target, Task
from rnnlab.tasks.charlm import CharLMConfig, CharLMTask, StreamChunk, generate
from rnnlab.tasks.classify import DigitsConfig, DigitsTask, VowelsConfig, VowelsTask
from rnnlab.tasks.forecast import ForecastConfig, SunspotsTask, WeatherTask
from rnnlab.tasks.g2p import G2PConfig, G2PTask
from rnnlab.tasks.punctuation import PunctuationConfig, PunctuationTask
from rnnlab.tasks.speech import SpeechConfig, SpeechTask
from rnnlab.tasks.synthetic import AddingConfig, AddingTask, CopyConfig, CopyTask, CueConfig, CueTask
from rnnlab.tasks.wordlm import WordLMConfig, WordLMTask


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its class, its config dataclass and a one-line summary for ``--help``."""

    cls: type[Task]
    config: type
    summary: str

    def options(self) -> dict[str, Any]:
        """Option name -> default value."""
        return {f.name: getattr(self.config(), f.name) for f in fields(self.config)}


TASKS: dict[str, TaskSpec] = {
    "adding": TaskSpec(AddingTask, AddingConfig, "adding problem: sum of two marked values, lag = sequence length"),
    "copy": TaskSpec(CopyTask, CopyConfig, "copy memory: recall n_copy symbols after lag blanks"),
    "cue": TaskSpec(CueTask, CueConfig, "'I grew up in France ... I speak fluent' -> French, lag filler words"),
    "charlm": TaskSpec(CharLMTask, CharLMConfig, "character language model on Shakespeare or a text file (bpc)"),
    "wordlm": TaskSpec(WordLMTask, WordLMConfig, "word language model on Shakespeare, the KJV Bible or a text file "
                       "(perplexity vs Kneser-Ney)"),
    "weather": TaskSpec(WeatherTask, ForecastConfig, "Seattle daily weather: next day's temp_max (MAE, °C)"),
    "sunspots": TaskSpec(SunspotsTask, ForecastConfig, "monthly sunspot numbers 1749-1983: next month (MAE)"),
    "vowels": TaskSpec(VowelsTask, VowelsConfig, "JapaneseVowels: speaker of a variable-length utterance"),
    "digits": TaskSpec(DigitsTask, DigitsConfig, "8x8 handwritten digits read row by row"),
    "g2p": TaskSpec(G2PTask, G2PConfig, "CMU Pronouncing Dictionary: spelling -> phonemes, seq2seq (PER/WER)"),
    "punctuation": TaskSpec(PunctuationTask, PunctuationConfig,
                            "restore punctuation and capitals of lower-cased Shakespeare words (per-word F1)"),
    "speech": TaskSpec(SpeechTask, SpeechConfig, "CTC speech recognition of espeak-ng digit strings (held-out "
                       "voices) or a folder of WAV + transcripts (character error rate)"),
}


def task_names() -> list[str]:
    return list(TASKS)


def make_task(name: str, **options: Any) -> Task:
    """Build the task ``name`` with ``options`` (fields of its config; strings are converted).

    Unknown names or options raise ``ValueError`` listing the valid ones.
    """
    if name not in TASKS:
        raise ValueError(f"task: unknown {name!r}; expected one of {task_names()}")
    spec = TASKS[name]
    config = spec.config(**coerce_options(spec.config, options, task=name))
    return spec.cls(config)


__all__ = ["TASKS", "TaskSpec", "task_names", "make_task", "summarize", "Task", "Batch", "Split", "Target",
           "generate", "StreamChunk", "AddingTask", "CopyTask", "CueTask", "CharLMTask", "WeatherTask",
           "SunspotsTask", "VowelsTask", "DigitsTask", "AddingConfig", "CopyConfig", "CueConfig", "CharLMConfig",
           "ForecastConfig", "VowelsConfig", "DigitsConfig", "G2PTask", "G2PConfig", "WordLMTask", "WordLMConfig",
           "PunctuationTask", "PunctuationConfig", "SpeechTask", "SpeechConfig"]
