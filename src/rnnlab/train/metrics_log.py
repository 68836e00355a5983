"""Metric logging hooks: JSON Lines and CSV in the run directory, TensorBoard when it is installed."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from rnnlab.train.hooks import Hook

CSV_FIELDS = ("step", "epoch", "split", "name", "value")


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricsLog(Hook):
    """Append every logged training step and every evaluation to ``metrics.jsonl`` and ``metrics.csv``.

    JSONL: one object per record, ``{"step", "epoch", "split": "train"|"val"|"test", ...values}``.
    CSV: long format ``step,epoch,split,name,value`` so new metrics never change the header.
    A resumed run first drops records past its checkpoint's step, so the log matches an uninterrupted run.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"

    def on_fit_start(self, trainer) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        step = trainer.state.step
        if self.jsonl.exists():
            kept = [ln for ln in self.jsonl.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= step]
            self.jsonl.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        if self.csv.exists():
            with open(self.csv, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        else:
            rows = []
        with open(self.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, step: int, epoch: int, split: str, values: dict[str, Any]) -> None:
        record = {"step": step, "epoch": epoch, "split": split, **{k: _clean(v) for k, v in values.items()}}
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.csv, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            for k, v in values.items():
                w.writerow((step, epoch, split, k, v))

    def on_step_end(self, trainer, logs: dict[str, Any]) -> None:
        if trainer.state.step % trainer.config.log_every == 0:
            self.write(trainer.state.step, trainer.state.epoch, "train",
                       {k: logs[k] for k in ("loss", "grad_norm", "lr", "examples_per_s")})

    def on_eval_end(self, trainer, split: str, metrics: dict[str, float]) -> None:
        self.write(trainer.state.step, trainer.state.epoch, split, metrics)


class TensorBoard(Hook):
    """Scalars to a TensorBoard event file under ``RUN_DIR/tb`` (only built when tensorboard imports)."""

    def __init__(self, run_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError when tensorboard is absent

        self.writer = SummaryWriter(str(Path(run_dir) / "tb"))

    @classmethod
    def maybe(cls, run_dir: str | Path) -> "TensorBoard | None":
        try:
            return cls(run_dir)
        except ImportError:
            return None

    def on_step_end(self, trainer, logs: dict[str, Any]) -> None:
        if trainer.state.step % trainer.config.log_every == 0:
            for k in ("loss", "grad_norm", "lr"):
                self.writer.add_scalar(f"train/{k}", logs[k], trainer.state.step)

    def on_eval_end(self, trainer, split: str, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if k != "count":
                self.writer.add_scalar(f"{split}/{k}", v, trainer.state.step)

    def on_fit_end(self, trainer, logs: dict[str, Any]) -> None:
        self.writer.close()
