"""DDP: two gloo processes on the loopback, each with its shard of the global batch, match one process."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.train import Checkpointing, TrainConfig, Trainer
from rnnlab.train.distributed import DistInfo, shard_bounds

sys.path.insert(0, os.path.dirname(__file__))
from toy_tasks import SignTask, StreamTask  # noqa: E402

CFG = {"sequences": dict(epochs=2, batch_size=20, lr=1e-2, clip_norm=0.5),
       "stream": dict(epochs=1, batch_size=8, bptt=16, lr=1e-2, max_steps=6)}


def _setup(kind):
    torch.manual_seed(0)
    if kind == "sequences":
        task = SignTask(n=70)  # 70 = 3 full global batches of 20 + one of 10
        model = SequenceModel(ModelConfig(cell="gru", hidden_size=8), input_size=1, output_size=2, target="class")
    else:
        task = StreamTask(length=1200)
        model = SequenceModel(ModelConfig(cell="lstm", hidden_size=8, embedding_dim=4), input_size=1,
                              output_size=5, target="seq_class", vocab_size=5)
    return task, model


def _worker(rank, world, port, kind, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        task, model = _setup(kind)
        if rank == 1:  # DDP must broadcast rank 0's initial weights
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        with Trainer(model, task, TrainConfig(**CFG[kind]), hooks=[Checkpointing()],
                     run_dir=os.path.join(out_dir, "run"), dist_info=DistInfo(rank, world)) as trainer:
            trainer.fit()
        val = trainer.evaluate("val")  # after close(): evaluation still works
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        state["val_metric"] = torch.tensor(val[task.metric], dtype=torch.float64)
        save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_bounds_cover_the_batch():
    for n in (1, 7, 20):
        for w in (1, 2, 3):
            spans = [shard_bounds(n, r, w) for r in range(w)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.timeout(180)  # a worker that hangs (e.g. at exit) fails the test instead of blocking the suite
@pytest.mark.parametrize("kind", ["sequences", "stream"])
def test_two_processes_match_one(tmp_path, kind):
    torch.set_num_threads(1)
    mp.start_processes(_worker, args=(2, _free_port(), kind, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    task, model = _setup(kind)
    single = Trainer(model, task, TrainConfig(**CFG[kind]))
    single.fit()
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0)  # replicas stay identical
        torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-5)  # and equal to one process on the global batch
    assert float(r0["val_metric"]) == pytest.approx(single.evaluate("val")[task.metric], abs=1e-4)
    # only rank 0 wrote, and exactly one run directory exists
    assert (tmp_path / "run" / "checkpoints" / "MANIFEST.json").exists()
