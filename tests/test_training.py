"""Short real-task runs that must beat the task's baseline (small unmarked versions; fuller ones are slow)."""

from __future__ import annotations

import pytest
import torch

from rnnlab.models import ModelConfig
from rnnlab.train import TrainConfig
from rnnlab.train.runner import train_run

torch.set_num_threads(1)


def _beats(result, margin):
    value, base = result.test[result.metric], result.baseline[result.metric]
    return value > base + margin if result.higher_is_better else value < base - margin


def test_cue_short_lag_beats_chance():
    r = train_run("cue", {"lag": 3, "n_countries": 4, "n_train": 1024, "n_val": 128, "n_test": 128},
                  ModelConfig(cell="gru", hidden_size=16, embedding_dim=8),
                  TrainConfig(epochs=4, batch_size=32, lr=2e-2, threads=1))
    assert _beats(r, 0.3), r.test


@pytest.mark.slow
@pytest.mark.parametrize("task,options,model,train,margin", [
    ("cue", {"lag": 20, "n_countries": 4, "n_train": 4000, "n_val": 300, "n_test": 300},
     dict(cell="lstm", hidden_size=32, embedding_dim=16, cell_options={"forget_bias": 1.0}),
     dict(epochs=10, batch_size=32, lr=1e-2), 0.5),
    ("digits", {}, dict(cell="gru", hidden_size=64), dict(epochs=8, batch_size=32, lr=5e-3), 0.5),
    ("charlm", {"max_chars": 300_000}, dict(cell="lstm", hidden_size=128, embedding_dim=32),
     dict(epochs=1, max_steps=300, batch_size=32, bptt=64, lr=4e-3), 1.0),
])
def test_real_tasks_beat_baseline(task, options, model, train, margin):
    r = train_run(task, options, ModelConfig(**model), TrainConfig(threads=2, **train))
    assert _beats(r, margin), (r.test, r.baseline)
