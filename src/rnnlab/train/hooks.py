"""Trainer hooks: the callback protocol plus early stopping and checkpointing (progress/logging live apart)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rnnlab.train.trainer import Trainer


class Hook:
    """Callbacks the :class:`~rnnlab.train.trainer.Trainer` calls; override the ones you need.

    Order within one optimiser step: update -> [evaluate -> ``on_eval_end``] -> ``on_step_end``; at the
    end of an epoch: [evaluate -> ``on_eval_end``] -> ``on_epoch_end``; checkpoint written ->
    ``on_checkpoint``.
    ``state_dict`` / ``load_state_dict`` (JSON-serialisable) make a hook's state part of checkpoints,
    so a resumed run behaves exactly like an uninterrupted one.

    Example:
        >>> class CountSteps(Hook):
        ...     key = "count"
        ...     def __init__(self): self.n = 0
        ...     def on_step_end(self, trainer, logs): self.n += 1
        ...     def state_dict(self): return {"n": self.n}
        ...     def load_state_dict(self, state): self.n = state["n"]
    """

    #: name under which the hook's state is saved in checkpoints (``None``: stateless)
    key: str | None = None

    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None: ...
    def on_eval_end(self, trainer: "Trainer", split: str, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None: ...
    def on_checkpoint(self, trainer: "Trainer", path: str) -> None: ...
    def on_fit_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EarlyStopping(Hook):
    """Stop when the task's metric has not improved for ``patience`` evaluations in a row."""

    key = "early_stopping"

    def __init__(self, patience: int) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience: expected an integer >= 1, got {patience!r}")
        self.patience = patience
        self.wait = 0

    def on_eval_end(self, trainer: "Trainer", split: str, metrics: dict[str, float]) -> None:
        if split != "val":
            return
        self.wait = 0 if trainer.state.last_eval_improved else self.wait + 1
        if self.wait >= self.patience:
            trainer.request_stop(f"early stopping: {trainer.task.metric} did not improve for {self.wait} "
                                 f"evaluations (best {trainer.state.best_metric:.4g} at step "
                                 f"{trainer.state.best_step})")

    def state_dict(self) -> dict[str, Any]:
        return {"wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait = int(state.get("wait", 0))


class Checkpointing(Hook):
    """Save a resumable checkpoint after every evaluation, every ``every`` steps and at the end.

    Only the main rank writes.  The best checkpoint (by the task's metric) is kept besides the last
    ``keep`` ones; the run directory's manifest names both.
    """

    def __init__(self, every: int = 0) -> None:
        self.every = every
        self._last_saved = -1

    def _save(self, trainer: "Trainer") -> None:
        if trainer.state.step == self._last_saved:
            return
        self._last_saved = trainer.state.step
        path = trainer.save_checkpoint()
        if path is not None:
            for hook in trainer.hooks:
                hook.on_checkpoint(trainer, str(path))

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._last_saved = trainer.state.step  # a resumed run starts from a saved step

    def on_step_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        evaluated = trainer.state.last_eval_step == trainer.state.step
        if evaluated or (self.every and trainer.state.step % self.every == 0):
            self._save(trainer)

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        self._save(trainer)

    def on_fit_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        if logs.get("status") == "finished":  # never save over the last good checkpoint after a failure
            self._save(trainer)
