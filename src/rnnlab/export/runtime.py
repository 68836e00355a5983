"""Running an exported rnnlab model in ONNX Runtime: a session plus an nn.Module face for eval and generate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: written beside every export as FILE + ".json"
META_FORMAT = "rnnlab-export"


class ExportError(ValueError):
    """An exported file that cannot be used (missing, unreadable, not an rnnlab export)."""


def read_metadata(path: str | Path) -> dict[str, Any]:
    meta_path = Path(str(path) + ".json")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{meta_path}: missing metadata file (written by `rnnlab export` beside the model)") \
            from None
    except (OSError, ValueError) as e:
        raise ExportError(f"{meta_path}: unreadable metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ExportError(f"{meta_path}: not rnnlab export metadata (format != {META_FORMAT!r})")
    return meta


def session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session for ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for missing or corrupt files
        raise ExportError(f"{path}: cannot load the ONNX model ({str(e).strip().splitlines()[0]})") from None


class OnnxSequenceModel(nn.Module):
    """An exported :class:`rnnlab.models.SequenceModel` behind the same ``forward(x, lengths, state)``.

    So ``Trainer.evaluate`` and ``rnnlab.tasks.charlm.generate`` run it unchanged; computation happens in
    ONNX Runtime on the CPU.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any] | None = None, threads: int = 1) -> None:
        super().__init__()
        self.meta = meta if meta is not None else read_metadata(path)
        self.session = session(path, threads)
        io = self.meta["model_io"]
        self.target, self.vocab_size = io["target"], io.get("vocab_size")
        self.state_names: list[str] = list(self.meta["state_names"])
        self.state_shapes: list[list[int]] = [list(s) for s in self.meta["state_shapes"]]  # (L*D, S) each
        # Trainer builds an optimizer and generate() asks for the device: one empty parameter answers both
        self._device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x: Tensor, lengths: Tensor | None = None, state=None):
        B, T = x.shape[0], x.shape[1]
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.int64)
        if state is None:
            parts = [np.zeros((LD, B, S), np.float32) for LD, S in self.state_shapes]
        else:
            parts = [s.detach().cpu().float().numpy() for s in ((state,) if isinstance(state, Tensor) else state)]
        feeds = {"x": x.cpu().numpy() if self.vocab_size else x.cpu().float().numpy(),
                 "lengths": torch.as_tensor(lengths).to(torch.int64).cpu().numpy()}
        feeds.update({f"{n}_0": p for n, p in zip(self.state_names, parts)})
        out, *finals = self.session.run(None, feeds)
        new = tuple(torch.from_numpy(f) for f in finals)
        return torch.from_numpy(out), (new[0] if len(new) == 1 else new)


def task_from_metadata(meta: dict[str, Any], data: str | Path | None = None):
    """Rebuild the export's task the way a checkpoint's is (a data file is named again, never read from meta)."""
    from rnnlab.train import runner

    rebuild = getattr(runner, "task_from_checkpoint", None)
    if rebuild is not None:
        return rebuild(meta, data)
    return runner.make_task(meta["task"]["name"], meta["task"]["options"])


def evaluate_onnx(path: str | Path, split: str = "test", data: str | Path | None = None,
                  ) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """``(metrics, baseline, metadata)``: the task's metrics on ``split`` computed through ONNX Runtime."""
    from rnnlab.tasks.base import Batch
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.trainer import reduce_metrics

    meta = read_metadata(path)
    model = OnnxSequenceModel(path, meta)
    task = task_from_metadata(meta, data)
    config = TrainConfig.from_dict(meta["train"])
    # the loop of Trainer.evaluate (which takes only a torch SequenceModel): streams carry the state
    # between chunks of a stream task trained with truncated BPTT, batches start from zeros
    if config.bptt is not None and hasattr(task, "stream_batches"):
        items = (_stream_item(item, Batch) for item in task.stream_batches(split, config.batch_size, config.bptt))
    else:
        items = ((b, False) for b in task.batches(split, config.batch_size))
    sums: dict[str, float] = {}
    carry = None
    with torch.no_grad():
        for batch, reset in items:
            carry = None if reset else carry
            out, state = model(batch.x, batch.lengths, carry)
            carry = state if config.bptt is not None else None
            m = dict(task.metrics(out, batch))
            if "loss" not in m:
                m["loss"] = float(task.loss(out, batch)) * float(m.get("count", len(batch)))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    if not sums:
        raise ExportError(f"split: the task's {split!r} split is empty")
    return reduce_metrics(task, sums), task.baseline(split), meta  # type: ignore[arg-type]


def _stream_item(item, batch_type) -> tuple:
    """A stream task's item -> (Batch, reset), the forms Trainer accepts: Batch, (Batch, reset), (x, y, reset)."""
    if isinstance(item, batch_type):
        return item, False
    if len(item) == 2:
        return item[0], bool(item[1])
    return batch_type(item[0], item[1]), bool(item[2])
