"""--device / --precision: autocast bf16 and fp16 (with loss scaling) training, device choice, DDP backend."""

from __future__ import annotations

import pytest
import torch

from rnnlab.cli import main
from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.tasks import make_task
from rnnlab.train.config import TrainConfig
from rnnlab.train.device import DeviceUnavailable, Precision, dist_backend, resolve_device
from rnnlab.train.trainer import Trainer

CUE = {"lag": 3, "n_countries": 4, "n_train": 1024, "n_val": 128, "n_test": 128}


def _trainer(precision: str, **train) -> Trainer:
    task = make_task("cue", **CUE)
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(cell="gru", hidden_size=16, embedding_dim=8), input_size=task.input_size,
                          output_size=task.output_size, target=task.target, vocab_size=task.vocab_size)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=2e-2, precision=precision, device="cpu", **train)
    return Trainer(model, task, cfg)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                              ("fp32", torch.float32)])
def test_forward_runs_in_the_autocast_dtype_and_weights_stay_fp32(precision, dtype):
    trainer = _trainer(precision)
    seen = []
    trainer.model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    batch = next(iter(trainer.task.batches("train", 32)))
    trainer._train_step(batch, reset=False)
    assert seen == [dtype]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.evaluate("val")["loss"] > 0


def test_bf16_training_learns_like_fp32():
    accuracy = {}
    for precision in ("fp32", "bf16"):
        trainer = _trainer(precision)
        trainer.fit()
        accuracy[precision] = trainer.evaluate("test")["accuracy"]
    assert accuracy["bf16"] > 0.5 and abs(accuracy["bf16"] - accuracy["fp32"]) < 0.25


def test_fp16_loss_scale_survives_a_checkpoint_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["train", "cue", "--lag", "3", "--n-train", "256", "--hidden-size", "8", "--epochs", "1",
            "--precision", "fp16", "--quiet", "--out", str(out)]
    assert main(args) == 0
    from rnnlab.train.checkpoint import load_checkpoint

    ck = load_checkpoint(out, "latest")
    scale = float(ck.trainer_tensors["amp.scale"])
    assert scale > 1 and ck.config["train"]["precision"] == "fp16"
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    assert main(["eval", str(out)]) == 0


def test_fp16_overflow_skips_the_step_instead_of_diverging():
    p = Precision("fp16", torch.device("cpu"))
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    before = model.weight.detach().clone()
    with p.autocast():
        loss = model(torch.full((1, 2), 6e4)).float().sum() * 1e4  # the scaled fp16 gradient overflows
    p.backward(loss)
    p.unscale(opt)
    assert not p.step(opt) and torch.equal(model.weight, before)
    assert p.state_dict()["scale"] < 65536.0
    fresh = Precision("fp16", torch.device("cpu"))
    fresh.load_state_dict(p.state_dict())
    assert fresh.scaler.get_scale() == p.scaler.get_scale()


def test_device_choice_and_ddp_backend():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert dist_backend(torch.device("cpu")) == "gloo" and dist_backend(torch.device("cuda", 0)) == "nccl"
    with pytest.raises(DeviceUnavailable, match="device: expected one of"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8").validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert main(["train", "cue", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device" in err[0] and "no CUDA GPU" in err[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_the_gpu_and_evaluating_on_either_device(tmp_path, precision):
    out = tmp_path / "run"
    assert main(["train", "cue", "--lag", "3", "--n-train", "512", "--hidden-size", "16", "--epochs", "2",
                 "--device", "cuda", "--precision", precision, "--quiet", "--out", str(out)]) == 0
    from rnnlab.train.checkpoint import load_model

    model, _ = load_model(out)
    assert next(model.parameters()).device.type == "cpu"  # checkpoints load on the CPU
    assert main(["eval", str(out)]) == 0
