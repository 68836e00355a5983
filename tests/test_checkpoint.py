"""Checkpoints: safetensors + JSON round trip, atomic replacement, corruption detection, load_model paths."""

from __future__ import annotations

import json

import pytest
import torch

from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.train import CheckpointError, TrainConfig, Trainer, load_checkpoint, load_model, save_checkpoint
from rnnlab.train.checkpoint import (atomic_write_text, optimizer_state_from_flat, optimizer_state_to_flat,
                                     read_manifest, resolve_checkpoint)
from rnnlab.train.hooks import Checkpointing
from toy_tasks import SignTask

torch.set_num_threads(1)


def _model(seed=0):
    torch.manual_seed(seed)
    return SequenceModel(ModelConfig(cell="lstm", hidden_size=8), input_size=1, output_size=2, target="class")


@pytest.fixture
def run_dir(tmp_path):
    trainer = Trainer(_model(), SignTask(n=32), TrainConfig(epochs=3, batch_size=16, keep_checkpoints=1),
                      hooks=[Checkpointing()], run_dir=tmp_path / "run", task_spec={"name": "toy", "options": {"T": 6}})
    trainer.fit()
    return tmp_path / "run", trainer


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_optimizer_state_roundtrip(name):
    model = _model()
    opt = Trainer(model, SignTask(n=32), TrainConfig(epochs=1, batch_size=16, optimizer=name))
    opt.fit()
    tensors, meta = optimizer_state_to_flat(opt.optimizer)
    json.dumps(meta)  # the non-tensor part is plain JSON
    fresh = Trainer(_model(1), SignTask(n=32), TrainConfig(epochs=1, batch_size=16, optimizer=name)).optimizer
    fresh.load_state_dict(optimizer_state_from_flat(tensors, json.loads(json.dumps(meta))))
    a, b = opt.optimizer.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][idx][k]))


def test_run_dir_layout_and_load_model(run_dir):
    path, trainer = run_dir
    manifest = read_manifest(path)
    assert manifest["latest"] == "step-00000006"
    # keep_checkpoints=1: only the latest and the best survive
    assert set(manifest["checkpoints"]) == {manifest["latest"], manifest["best"]}
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == sorted(["MANIFEST.json",
                                                                               *manifest["checkpoints"]])
    model, config = load_model(path)
    assert {"model", "task", "train", "step", "metrics"} <= set(config)
    assert config["task"] == {"name": "toy", "options": {"T": 6}}
    assert config["step"] == trainer.state.best_step
    assert TrainConfig.from_dict(config["train"]).batch_size == 16
    assert not model.training
    # the checkpoint directory and a file inside it resolve to the same checkpoint
    ck = path / "checkpoints" / manifest["latest"]
    m2, c2 = load_model(ck / "config.json")
    assert c2["step"] == 6
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v)
    x = torch.randn(3, 6, 1)
    torch.testing.assert_close(m2(x)[0], trainer.model.eval()(x)[0])


def test_no_pickle_files(run_dir):
    path, _ = run_dir
    suffixes = {p.suffix for p in path.rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".jsonl", ".csv"}


def test_corrupt_and_missing(run_dir, tmp_path):
    path, _ = run_dir
    ck = resolve_checkpoint(path, "latest")
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (ck / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(ck)
    (ck / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint config"):
        load_checkpoint(ck)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path / "weights.bin")


def test_weights_not_matching_config(tmp_path):
    p = save_checkpoint(tmp_path / "ck", _model(), {"model": ModelConfig(cell="gru", hidden_size=8).to_dict(),
                                                   "model_io": {"input_size": 1, "output_size": 2,
                                                                "target": "class", "vocab_size": None}})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(p)


def test_atomic_replace_keeps_old_copy_on_failure(tmp_path, monkeypatch):
    model = _model()
    p = save_checkpoint(tmp_path / "ck", model, {"step": 1})
    import rnnlab.train.checkpoint as ckmod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckmod, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", _model(5), {"step": 2})
    assert load_checkpoint(p).config["step"] == 1  # the old checkpoint is untouched
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ck"]  # no temporary left behind
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"
