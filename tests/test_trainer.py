"""Trainer: schedules, optimisers, clipping, truncated BPTT, early stopping, hooks, NaN handling, resume."""

from __future__ import annotations

import math

import pytest
import torch

from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.train import (Checkpointing, EarlyStopping, Hook, MetricsLog, TrainConfig, Trainer, TrainingDiverged,
                          load_checkpoint)
from rnnlab.train.checkpoint import read_manifest
from rnnlab.train.optim import build_optimizer, lr_at
from toy_tasks import SignTask, StreamTask

torch.set_num_threads(1)


def sign_model(cell="gru", seed=0, **kw) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(ModelConfig(cell=cell, hidden_size=12, **kw), input_size=1, output_size=2, target="class")


def stream_model(seed=0) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(ModelConfig(cell="lstm", hidden_size=16, embedding_dim=8), input_size=1, output_size=5,
                         target="seq_class", vocab_size=5)


class Recorder(Hook):
    def __init__(self):
        self.events, self.logs = [], []

    def on_fit_start(self, trainer):
        self.events.append("start")

    def on_step_end(self, trainer, logs):
        self.events.append("step")
        self.logs.append(logs)

    def on_eval_end(self, trainer, split, metrics):
        self.events.append(f"eval:{split}")

    def on_epoch_end(self, trainer, logs):
        self.events.append("epoch")

    def on_checkpoint(self, trainer, path):
        self.events.append("ckpt")

    def on_fit_end(self, trainer, logs):
        self.events.append(f"end:{logs['status']}")


class StopAfter(Hook):
    """Simulates a crash: raises after ``n`` optimiser steps (after checkpoints of that step were written)."""

    def __init__(self, n):
        self.n = n

    def on_step_end(self, trainer, logs):
        if trainer.state.step == self.n:
            raise KeyboardInterrupt


def test_lr_schedules():
    cfg = TrainConfig(lr=0.1, schedule="step", step_size=3, gamma=0.5)
    assert [lr_at(s, cfg, 10) for s in (0, 2, 3, 6)] == [0.1, 0.1, 0.05, 0.025]
    cfg = TrainConfig(lr=1.0, schedule="cosine", warmup_steps=4)
    assert [lr_at(s, cfg, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(9, cfg, 14) == pytest.approx(0.5)  # halfway through the 10 decay steps
    assert lr_at(14, cfg, 14) == pytest.approx(0.0)
    assert lr_at(100, TrainConfig(lr=0.3), 10) == 0.3


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers_train(name, cls):
    assert isinstance(build_optimizer(sign_model().parameters(), TrainConfig(optimizer=name)), cls)
    lr = 0.05 if name in ("sgd",) else 0.01
    task = SignTask(T=2, n=128)
    out = Trainer(sign_model(), task, TrainConfig(epochs=6, batch_size=16, optimizer=name, lr=lr)).fit()
    assert out["best_metric"] > task.baseline("val")["accuracy"] + 0.1


@pytest.mark.parametrize("bad,match", [({"lr": 0.0}, "lr"), ({"batch_size": 0}, "batch_size"),
                                       ({"optimizer": "lbfgs"}, "optimizer"), ({"schedule": "cyclic"}, "schedule"),
                                       ({"clip_norm": -1.0}, "clip_norm"), ({"epochs": 1.5}, "epochs"),
                                       ({"lr": float("nan")}, "lr")])
def test_config_validation(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        TrainConfig(**bad).validate()
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"learning_rate": 1})


def test_hook_order_and_logged_grad_norm():
    rec = Recorder()
    cfg = TrainConfig(epochs=2, batch_size=32, clip_norm=1e-3)
    Trainer(sign_model(), SignTask(n=64), cfg, hooks=[rec]).fit()
    assert rec.events == ["start", "step", "step", "eval:val", "epoch", "step", "step", "eval:val", "epoch",
                          "end:finished"]
    # the logged norm is the pre-clip one: far above the tiny clip threshold
    assert all(log["grad_norm"] > 1e-2 and log["lr"] == 1e-3 for log in rec.logs)


def test_gradient_clipping_bounds_the_update():
    """With SGD (no momentum) the parameter change is lr * clipped gradient, so its norm is <= lr * clip."""
    model = sign_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = TrainConfig(epochs=1, max_steps=1, batch_size=64, optimizer="sgd", momentum=0.0, lr=1.0, clip_norm=0.01)
    Trainer(model, SignTask(n=64), cfg).fit()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() == pytest.approx(0.01, rel=1e-4)


def test_truncated_bptt_carries_state_and_cuts_gradient():
    task = StreamTask()
    model = stream_model()
    seen = []
    orig = model.forward

    def spy(x, lengths=None, state=None):
        seen.append(state)
        return orig(x, lengths, state)

    model.forward = spy
    trainer = Trainer(model, task, TrainConfig(epochs=1, max_steps=3, batch_size=8, bptt=10))
    trainer.fit()
    assert seen[0] is None  # a new stream starts from zeros
    assert all(s is not None and not s[0].requires_grad and s[0].shape == (1, 8, 16) for s in seen[1:3])
    # learning the recurrence beats the unigram-ish start within a few epochs
    out = Trainer(stream_model(), task, TrainConfig(epochs=4, batch_size=8, bptt=20, lr=1e-2)).fit()
    assert out["best_metric"] < math.log2(5) - 0.3


def test_early_stopping_stops_and_restores_on_resume(tmp_path):
    task = SignTask(n=64)
    cfg = TrainConfig(epochs=50, batch_size=32, lr=1e-9, patience=2)  # lr ~ 0: never improves
    trainer = Trainer(sign_model(), task, cfg, hooks=[EarlyStopping(2), Checkpointing()], run_dir=tmp_path)
    trainer.fit()
    assert trainer.state.epoch == 3 and "early stopping" in trainer.stop_reason
    assert read_manifest(tmp_path)["best"] == "step-00000002"
    assert load_checkpoint(tmp_path, "latest").config["hooks"]["early_stopping"] == {"wait": 2}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    task = SignTask(n=64, nan_after=5)  # the 6th training loss is NaN
    cfg = TrainConfig(epochs=10, batch_size=16, checkpoint_every=2)
    trainer = Trainer(sign_model(), task, cfg, hooks=[Checkpointing(2), MetricsLog(tmp_path)], run_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"step 6 .*loss is nan"):
        trainer.fit()
    ck = load_checkpoint(tmp_path, "latest")
    assert ck.config["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck.model_state.values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad step was not applied


def test_nonfinite_input_is_reported():
    task = SignTask(n=32)
    task.data["train"][0][3, 2, 0] = float("inf")
    with pytest.raises(ValueError, match="batch x: contains 1 non-finite"):
        Trainer(sign_model(), task, TrainConfig(epochs=1, batch_size=32)).fit()


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["sequences", "stream"])
def test_resume_equals_uninterrupted(tmp_path, kind):
    """Interrupt a run after 7 steps (checkpoint at step 6), resume in a fresh Trainer: same final weights."""
    if kind == "sequences":
        # recurrent dropout + shuffling exercise the RNG state and the per-epoch generator
        task = SignTask(n=80)
        make = lambda seed: sign_model(seed=seed, recurrent_dropout=0.2, dropout=0.0)  # noqa: E731
        cfg = TrainConfig(epochs=4, batch_size=16, checkpoint_every=3, schedule="cosine", warmup_steps=2)
    else:
        task = StreamTask()
        make = stream_model
        cfg = TrainConfig(epochs=2, batch_size=8, bptt=16, checkpoint_every=3, optimizer="rmsprop", lr=3e-3)
    full = make(0)
    a = Trainer(full, task, cfg, hooks=[Checkpointing(3), MetricsLog(tmp_path / "a")], run_dir=tmp_path / "a")
    a.fit()

    b = Trainer(make(0), task, cfg, hooks=[Checkpointing(3), MetricsLog(tmp_path / "b"), StopAfter(7)],
                run_dir=tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        b.fit()
    assert load_checkpoint(tmp_path / "b", "latest").config["step"] == 6
    resumed = make(123)  # different init: everything must come from the checkpoint
    c = Trainer(resumed, task, cfg, hooks=[Checkpointing(3), MetricsLog(tmp_path / "b")], run_dir=tmp_path / "b")
    c.resume()
    c.fit()
    assert c.state.step == a.state.step
    for k, v in _params(full).items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-6)
    assert c.state.best_metric == pytest.approx(a.state.best_metric, abs=1e-6)
    # the metric log of the resumed run equals the uninterrupted one
    strip = lambda p: [ln.split('"examples_per_s"')[0] for ln in p.read_text().splitlines()]  # noqa: E731
    assert strip(tmp_path / "b" / "metrics.jsonl") == strip(tmp_path / "a" / "metrics.jsonl")


def test_a_closed_trainer_evaluates_but_refuses_to_train():
    """close() (or leaving a ``with`` block) releases the DDP wrapper before destroy_process_group; training after
    it would not synchronise replicas, so it raises; evaluation still works."""
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(cell="gru", hidden_size=4), input_size=1, output_size=2, target="class")
    with Trainer(model, SignTask(n=20), TrainConfig(epochs=1, batch_size=10)) as trainer:
        trainer.fit()
    assert trainer.net is model
    assert set(trainer.evaluate("val")) >= {"accuracy"}
    with pytest.raises(RuntimeError, match="fit: this trainer was closed"):
        trainer.fit()
