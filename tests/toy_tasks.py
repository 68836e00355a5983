"""Tiny in-memory tasks for the trainer tests: a sequence-class task and a token stream for truncated BPTT."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.tasks.base import Batch, Task


class SignTask(Task):
    """Is the first step's value positive?  (class target; a memory of ``T`` steps; chance 0.5)."""

    name = "toy-sign"
    target = "class"
    metric = "accuracy"
    higher_is_better = True
    input_size = 1
    output_size = 2

    def __init__(self, T: int = 6, n: int = 96, seed: int = 0, nan_after: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.options = {"T": T, "n": n, "seed": seed}
        self.data = {}
        for split, size in (("train", n), ("val", n // 2), ("test", n // 2)):
            x = torch.randn(size, T, 1, generator=g)
            self.data[split] = (x, (x[:, 0, 0] > 0).long())
        self.nan_after = nan_after
        self.loss_calls = 0

    def batches(self, split, batch_size, *, shuffle=False, generator=None) -> Iterator[Batch]:
        x, y = self.data[split]
        order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
        for s in range(0, len(x), batch_size):
            idx = order[s:s + batch_size]
            yield Batch(x[idx], y[idx])

    def num_examples(self, split) -> int:
        return len(self.data[split][0])

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        loss = F.cross_entropy(output, batch.y)
        if output.requires_grad:
            self.loss_calls += 1
            if self.nan_after is not None and self.loss_calls > self.nan_after:
                return loss * float("nan")  # injected divergence
        return loss

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        return {"accuracy": float((output.argmax(-1) == batch.y).sum()), "count": float(len(batch))}

    def baseline(self, split="test") -> dict[str, float]:
        y = self.data[split][1]
        return {"accuracy": float(max(y.float().mean(), 1 - y.float().mean()))}


class StreamTask(Task):
    """A token stream where token t+1 = (token t + token t-1) mod V: needs two steps of memory."""

    name = "toy-stream"
    target = "seq_class"
    metric = "bpc"
    higher_is_better = False
    input_size = 1

    def __init__(self, V: int = 5, length: int = 2400, seed: int = 0) -> None:
        self.vocab_size = self.output_size = V
        g = torch.Generator().manual_seed(seed)
        s = [int(v) for v in torch.randint(0, V, (2,), generator=g)]
        for _ in range(length - 2):
            s.append((s[-1] + s[-2]) % V if torch.rand(1, generator=g).item() > 0.1
                     else int(torch.randint(0, V, (1,), generator=g)))
        data = torch.tensor(s)
        n = len(data)
        self.splits = {"train": data[:int(0.8 * n)], "val": data[int(0.8 * n):int(0.9 * n)],
                       "test": data[int(0.9 * n):]}
        self.options = {"V": V, "length": length, "seed": seed}

    def stream_batches(self, split, batch_size, bptt) -> Iterator[tuple[Batch, bool]]:
        data = self.splits[split]
        per_row = (len(data) - 1) // batch_size
        x = data[:per_row * batch_size].view(batch_size, per_row)  # (B, L): consecutive text per row
        y = data[1:per_row * batch_size + 1].view(batch_size, per_row)
        for k, s in enumerate(range(0, per_row, bptt)):
            yield Batch(x[:, s:s + bptt], y[:, s:s + bptt]), k == 0

    def batches(self, split, batch_size, *, shuffle=False, generator=None) -> Iterator[Batch]:
        for b, _ in self.stream_batches(split, batch_size, 20):
            yield b

    def num_examples(self, split) -> int:
        return (len(self.splits[split]) - 1) // 20

    def loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), batch.y.reshape(-1))

    def metrics(self, output: Tensor, batch: Batch) -> dict[str, float]:
        nats = F.cross_entropy(output.reshape(-1, output.shape[-1]), batch.y.reshape(-1), reduction="sum")
        return {"bpc": float(nats) / 0.6931471805599453, "count": float(batch.y.numel())}
