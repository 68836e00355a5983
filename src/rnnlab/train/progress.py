"""Progress display hook: a tqdm bar (or a plain one-line bar) with loss, metric and throughput."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from rnnlab.train.hooks import Hook


class Progress(Hook):
    """Shows step, loss, last validation metric and examples/s while training.

    The bar is drawn only when ``stream`` is a terminal (and ``enabled``); otherwise one summary line per
    evaluation is printed (unless ``quiet``), so logs of non-interactive runs stay readable.
    """

    def __init__(self, *, enabled: bool = True, quiet: bool = False, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = enabled and not quiet and bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._plain_len = 0
        self._metric = ""
        self._t0 = time.perf_counter()

    def on_fit_start(self, trainer) -> None:
        self._t0 = time.perf_counter()
        if not self.interactive:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # the plain bar below
            return
        self._bar = tqdm(total=trainer.total_steps, initial=trainer.state.step, file=self.stream,
                         dynamic_ncols=True, leave=True, desc="train")

    def _postfix(self, logs: dict[str, Any]) -> str:
        parts = [f"loss {logs['loss']:.4f}", f"|g| {logs['grad_norm']:.3g}", f"{logs['examples_per_s']:.0f} ex/s"]
        if self._metric:
            parts.append(self._metric)
        return ", ".join(parts)

    def on_step_end(self, trainer, logs: dict[str, Any]) -> None:
        if not self.interactive:
            return
        if self._bar is not None:
            self._bar.update(trainer.state.step - self._bar.n)
            if trainer.state.step % trainer.config.log_every == 0 or trainer.state.step == 1:
                self._bar.set_postfix_str(self._postfix(logs), refresh=False)
            return
        total = trainer.total_steps
        done = int(30 * trainer.state.step / max(1, total))
        line = f"\r[{'#' * done}{'.' * (30 - done)}] {trainer.state.step}/{total} {self._postfix(logs)}"
        self.stream.write(line.ljust(self._plain_len))
        self._plain_len = len(line)
        self.stream.flush()

    def on_eval_end(self, trainer, split: str, metrics: dict[str, float]) -> None:
        metric = trainer.task.metric
        value = metrics.get(metric)
        self._metric = f"{split} {metric} {value:.4f}" if value is not None else ""
        if self.quiet or self.interactive:
            return
        elapsed = time.perf_counter() - self._t0
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "count")
        print(f"step {trainer.state.step}/{trainer.total_steps} epoch {trainer.state.epoch} "
              f"[{elapsed:.0f}s] {split}: {shown}", file=self.stream, flush=True)

    def on_fit_end(self, trainer, logs: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.interactive and self._plain_len:
            self.stream.write("\n")
        if trainer.stop_reason and not self.quiet:
            print(trainer.stop_reason, file=self.stream, flush=True)
