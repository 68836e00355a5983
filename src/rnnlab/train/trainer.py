"""The generic trainer: any Task x SequenceModel, whole-sequence or truncated BPTT, DDP, resumable, with hooks."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from rnnlab.models import SequenceModel
from rnnlab.tasks.base import Batch, Split, Task
from rnnlab.train import checkpoint as ckpt
from rnnlab.train import distributed as dd
from rnnlab.train.config import TrainConfig
from rnnlab.train.datafiles import with_data_hashes
from rnnlab.train.device import Precision, resolve_device
from rnnlab.train.hooks import Hook
from rnnlab.train.optim import build_optimizer, lr_at
from rnnlab.validation import check_finite


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/inf; training stopped before the bad step was applied or saved."""


@dataclass
class TrainState:
    """Counters that make a run resumable; saved in every checkpoint's JSON."""

    step: int = 0
    #: current epoch (0-based) and how many of its batches were already consumed
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    last_eval_step: int = -1
    last_eval_improved: bool = False
    finished: bool = False


def reduce_metrics(task: Task, sums: dict[str, float]) -> dict[str, float]:
    """Summed batch metrics -> means (each sum / ``count``; ``rmse`` from ``mse``), or the task's own
    ``reduce_metrics(sums)`` when it defines one."""
    custom = getattr(task, "reduce_metrics", None)
    if callable(custom):
        return dict(custom(dict(sums)))
    count = sums.get("count", 0.0)
    if count <= 0:
        raise ValueError(f"task {task.name!r}: metrics() returned count={count}; expected a positive count")
    out = {k: v / count for k, v in sums.items() if k != "count"}
    if "mse" in out and "rmse" not in out:
        out["rmse"] = math.sqrt(out["mse"])
    out["count"] = count
    return out


def _detach(state: Any) -> Any:
    """Cut the graph between BPTT chunks but keep the values (the carried state)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return tuple(s.detach() for s in state)


def _state_tensors(state: Any) -> list[Tensor]:
    if state is None:
        return []
    return [state] if isinstance(state, Tensor) else list(state)


class Trainer:
    """Trains ``model`` on ``task`` with ``config``; progress, logs, early stopping and checkpoints are hooks.

    * whole-sequence BPTT over ``task.batches("train", ...)`` shuffled by a per-epoch seeded generator, or
      truncated BPTT (``config.bptt``) over ``task.stream_batches("train", batch_size, bptt)`` with the
      state carried across chunks and the gradient cut (``detach``) between them;
    * gradient clipping by global norm (the pre-clip norm is logged), lr warm-up + schedule;
    * data-parallel under ``torchrun``: each rank takes its shard of every global batch, gradients are
      averaged by DDP (gloo), only rank 0 writes;
    * NaN/inf loss or gradient -> :class:`TrainingDiverged` before the optimiser step, so no checkpoint of
      the diverged model is ever written.

    Example:
        >>> from rnnlab.models import ModelConfig, SequenceModel
        >>> task = ...  # any rnnlab.tasks.base.Task, e.g. rnnlab.tasks.make_task("adding", lag=20)
        >>> model = SequenceModel(ModelConfig(cell="gru", hidden_size=32), input_size=task.input_size,
        ...                       output_size=task.output_size, target=task.target)  # doctest: +SKIP
        >>> Trainer(model, task, TrainConfig(epochs=2)).fit()  # doctest: +SKIP
    """

    def __init__(self, model: SequenceModel, task: Task, config: TrainConfig, *, hooks: Iterable[Hook] = (),
                 run_dir: str | Path | None = None, task_spec: dict[str, Any] | None = None,
                 dist_info: dd.DistInfo | None = None) -> None:
        if not isinstance(model, SequenceModel):
            raise TypeError(f"model: expected a rnnlab.models.SequenceModel, got {type(model).__name__}")
        if not isinstance(task, Task):
            raise TypeError(f"task: expected a rnnlab.tasks.base.Task, got {type(task).__name__}")
        self.model = model
        self.task = task
        self.config = config.validate()
        self.hooks: list[Hook] = list(hooks)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.task_spec = task_spec or with_data_hashes({"name": task.name,
                                                        "options": dict(getattr(task, "options", {}) or {})})
        self.dist = dist_info or dd.DistInfo()
        if config.bptt is not None and not hasattr(task, "stream_batches"):
            raise ValueError(f"bptt: task {task.name!r} has no stream_batches(); truncated BPTT needs a stream "
                             "task such as the character LM (leave bptt unset)")
        self.stream = config.bptt is not None
        self.state = TrainState()
        self.stop_reason = ""
        self._stop = False
        self._closed = False
        self.carry: Any = None  # recurrent state carried between truncated-BPTT chunks
        self.last_eval: dict[str, dict[str, float]] = {}
        # the device first: the optimiser's state is created where the parameters live
        self.device = resolve_device(self.config.device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
        model.to(self.device)
        self.precision = Precision(self.config.precision, self.device)
        self.optimizer = build_optimizer(model.parameters(), self.config)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.net: nn.Module = DistributedDataParallel(model, device_ids=ids) if self.dist.enabled else model
        self.total_steps = self._count_total_steps()
        if self.run_dir is not None:
            # a NaN/inf setting (e.g. a cell option of 1e400) could never be saved: refuse it before training
            ckpt.strict_json(self.checkpoint_config())

    # --- sizes ------------------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        if self.stream:
            return sum(1 for _ in self._stream_items("train"))
        return math.ceil(self.task.num_examples("train") / self.config.batch_size)

    def _count_total_steps(self) -> int:
        total = self.config.epochs * max(1, self.steps_per_epoch())
        return min(total, self.config.max_steps) if self.config.max_steps else total

    # --- data ---------------------------------------------------------------------------------------------------
    def _epoch_generator(self, epoch: int) -> torch.Generator:
        # a fresh generator per epoch, seeded from (seed, epoch): resuming mid-epoch replays the same order
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)

    def _stream_items(self, split: Split) -> Iterator[tuple[Batch, bool]]:
        """(chunk, reset) pairs; ``reset`` true when the chunk starts a new stream (drop the carried state)."""
        for item in self.task.stream_batches(split, self.config.batch_size, self.config.bptt):  # type: ignore
            if isinstance(item, Batch):
                yield item, False
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Batch):
                yield item[0], bool(item[1])
            elif isinstance(item, tuple) and len(item) == 3:
                yield Batch(item[0], item[1]), bool(item[2])
            else:
                raise TypeError(f"task {self.task.name!r}: stream_batches() must yield Batch, (Batch, reset) or "
                                f"(x, y, reset), got {type(item).__name__}")

    def _train_items(self, epoch: int) -> Iterator[tuple[Batch, bool]]:
        if self.stream:
            yield from self._stream_items("train")
            return
        for b in self.task.batches("train", self.config.batch_size, shuffle=True,
                                   generator=self._epoch_generator(epoch)):
            yield b, False

    # --- control ------------------------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the trainer to stop after the current step's hooks (used by early stopping)."""
        self._stop = True
        self.stop_reason = reason

    def _call(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    # --- one step -------------------------------------------------------------------------------------------------
    def _train_step(self, batch: Batch, reset: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        cfg = self.config
        self.model.train()
        if reset:
            self.carry = None
        local = dd.shard_batch(batch, self.dist).to(self.device)
        check_finite("batch x", local.x)
        with self.precision.autocast():
            out, state = self.net(local.x, local.lengths, self.carry)
            loss = self.task.loss(out, local)
        bad = not bool(torch.isfinite(loss.detach()))
        if dd.any_flag(bad, self.dist):
            self._diverged(f"loss is {loss.item()}" if bad else "loss is not finite on another rank")
        if self.stream:
            self.carry = _detach(state)
        lr = lr_at(self.state.step, cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(dd.scale_for_shard(loss, len(local), len(batch), self.dist))
        self.precision.unscale(self.optimizer)  # clip the true gradients, not the fp16 loss-scaled ones
        max_norm = cfg.clip_norm if cfg.clip_norm > 0 else math.inf
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(grad_norm) and self.precision.scaler is None:
            self._diverged(f"gradient norm is {grad_norm}")
        # fp16: an overflowed step is skipped by the loss scaler (which lowers the scale), not a divergence
        self.precision.step(self.optimizer)
        loss_value = float(loss.detach())
        if self.dist.enabled:
            loss_value = dd.all_reduce_sums({"l": loss_value * len(local)}, self.dist)["l"] / len(batch)
        dt = max(time.perf_counter() - t0, 1e-9)
        return {"loss": loss_value, "grad_norm": grad_norm, "lr": lr, "examples_per_s": len(batch) / dt}

    def _diverged(self, what: str) -> None:
        raise TrainingDiverged(f"training diverged at step {self.state.step + 1} (epoch {self.state.epoch}): "
                               f"{what}; stopped before applying it, the last good checkpoint is kept "
                               f"(try a lower --lr or --clip-norm)")

    # --- evaluation ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: Split = "val") -> dict[str, float]:
        """Metric means over ``split`` (sharded across ranks, sums all-reduced), including the mean ``loss``."""
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, float] = {}
        try:
            if self.stream:
                carry = None
                items: Iterator[tuple[Batch, bool]] = self._stream_items(split)
            else:
                items = ((b, False) for b in self.task.batches(split, self.config.batch_size))
            for batch, reset in items:
                local = dd.shard_batch(batch, self.dist).to(self.device)
                if len(local) == 0:
                    continue
                with self.precision.autocast():
                    if self.stream:
                        carry = None if reset else carry
                        out, carry = self.model(local.x, local.lengths, carry)
                    else:
                        out, _ = self.model(local.x, local.lengths)
                if isinstance(out, Tensor) and out.is_floating_point():
                    out = out.float()  # metrics in fp32 whatever the autocast dtype
                m = dict(self.task.metrics(out, local))
                if "loss" not in m:  # tasks may report their own loss sum; else the mean loss x count
                    m["loss"] = float(self.task.loss(out, local)) * float(m.get("count", len(local)))
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        finally:
            self.model.train(was_training)
        sums = dd.all_reduce_sums(sums, self.dist)
        if not sums:
            raise ValueError(f"split: the task's {split!r} split is empty")
        metrics = reduce_metrics(self.task, sums)
        return metrics

    def _evaluate_val(self) -> dict[str, float]:
        metrics = self.evaluate("val")
        metric = self.task.metric
        if metric not in metrics:
            raise KeyError(f"task {self.task.name!r}: metric {metric!r} missing from metrics() {sorted(metrics)}")
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            # like a NaN loss: stop before any hook logs or checkpoints the broken model
            name = metric if metric in bad else sorted(bad)[0]
            st = self.state
            kept = f"step {st.best_step}" if st.best_step is not None else "none written yet"
            raise TrainingDiverged(f"training diverged at step {st.step} (epoch {st.epoch}): validation {name} "
                                   f"is {bad[name]}; stopped, the last good checkpoint is kept (best: {kept}; "
                                   f"try a lower --lr or --clip-norm)")
        value = metrics[metric]
        st = self.state
        better = st.best_metric is None or (value > st.best_metric if self.task.higher_is_better
                                            else value < st.best_metric)
        st.last_eval_improved = bool(better and math.isfinite(value))
        if st.last_eval_improved:
            st.best_metric, st.best_step = float(value), st.step
        st.last_eval_step = st.step
        self.last_eval["val"] = metrics
        self._call("on_eval_end", "val", metrics)
        return metrics

    # --- the loop ----------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the DistributedDataParallel wrapper, whose reducer holds the process group: call it (or use
        the trainer in a ``with`` block) before ``torch.distributed.destroy_process_group()``.  A reducer that
        outlives its group can block the process at exit (seen with gloo: a worker hung at exit in about 1 run
        in 4 when the trainer was still alive at destroy_process_group).  Evaluation still works afterwards;
        training does not (it would no longer synchronise the replicas)."""
        self.net = self.model
        self._closed = True

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs``/``max_steps``/early stop; returns a summary (best metric, last val metrics)."""
        if self._closed:
            raise RuntimeError("fit: this trainer was closed (its DistributedDataParallel wrapper released); "
                               "make a new Trainer to train again")
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.run_dir is not None and self.dist.is_main:
            ckpt.clean_stale_files(self.run_dir)  # leftovers of a killed write (this process is the run's writer)
        self._call("on_fit_start")
        status = "finished"
        try:
            while not self.state.finished:
                self._run_epoch()
        except BaseException:
            status = "failed"
            raise
        finally:
            logs = {"status": status, "step": self.state.step, "best_metric": self.state.best_metric,
                    "best_step": self.state.best_step, "val": self.last_eval.get("val", {})}
            self._call("on_fit_end", logs)
        return logs

    def _run_epoch(self) -> None:
        cfg, st = self.config, self.state
        if st.epoch >= cfg.epochs or (cfg.max_steps and st.step >= cfg.max_steps):
            self._finish()
            return
        skip = st.batch_in_epoch
        if skip == 0:
            self.carry = None
        for i, (batch, reset) in enumerate(self._train_items(st.epoch)):
            if i < skip:
                continue  # resuming mid-epoch: the same order, already-seen batches are skipped
            if len(batch) < self.dist.world_size:
                continue  # a global batch too small to give every rank a row (same decision on all ranks)
            logs = self._train_step(batch, reset)
            st.step += 1
            st.batch_in_epoch = i + 1
            logs["epoch"] = st.epoch
            if cfg.eval_every and st.step % cfg.eval_every == 0:
                self._evaluate_val()
            self._call("on_step_end", logs)
            if self._stop or (cfg.max_steps and st.step >= cfg.max_steps):
                break
        else:
            st.epoch += 1
            st.batch_in_epoch = 0
            if not cfg.eval_every:
                self._evaluate_val()
            self._call("on_epoch_end", {"epoch": st.epoch, "step": st.step})
            if st.epoch < cfg.epochs and not self._stop:
                return
        self._finish()

    def _finish(self) -> None:
        if self.state.last_eval_step != self.state.step:
            self._evaluate_val()
        self.state.finished = True

    # --- checkpoints ----------------------------------------------------------------------------------------------------
    def checkpoint_config(self) -> dict[str, Any]:
        m = self.model
        return {
            "model": m.config.to_dict(),
            "model_io": {"input_size": m.input_size, "output_size": m.output_size, "target": m.target,
                         "vocab_size": m.vocab_size},
            "task": self.task_spec,
            "train": self.config.to_dict(),
            "step": self.state.step,
            "epoch": self.state.epoch,
            "metrics": {"val": self.last_eval.get("val", {}), "metric": self.task.metric,
                        "higher_is_better": self.task.higher_is_better, "best": self.state.best_metric,
                        "best_step": self.state.best_step},
            "trainer_state": asdict(self.state),
            "hooks": {h.key: h.state_dict() for h in self.hooks if h.key},
            "world_size": self.dist.world_size,
            "seeds": {"seed": self.config.seed, "shuffle": "seed * 1000003 + epoch"},
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``RUN_DIR/checkpoints/step-NNNNNNNN`` and update the manifest (main rank only)."""
        carry = self._global_carry()  # collective under DDP: every rank takes part
        if self.run_dir is None or not self.dist.is_main:
            return None
        name = f"step-{self.state.step:08d}"
        tensors = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        for k, v in self.precision.state_dict().items():  # fp16's loss scaler
            tensors[f"amp.{k}"] = torch.tensor(v, dtype=torch.float64)
        for k, s in enumerate(carry):
            tensors[f"carry.{k}"] = s
        path = ckpt.save_checkpoint(self.run_dir / "checkpoints" / name, self.model, self.checkpoint_config(),
                                    optimizer=self.optimizer, tensors=tensors)
        manifest = ckpt.read_manifest(self.run_dir)
        names = [n for n in manifest.get("checkpoints", []) if n != name] + [name]
        best = manifest.get("best")
        if self.state.last_eval_step == self.state.step and self.state.best_step == self.state.step:
            best = name
        keep = set(names[-self.config.keep_checkpoints:]) | ({best} if best else set())
        manifest = {"latest": name, "best": best, "checkpoints": [n for n in names if n in keep]}
        ckpt.write_manifest(self.run_dir, manifest)
        for old in names:
            if old not in keep:
                ckpt.remove_checkpoint(self.run_dir, old)  # only plain children of checkpoints/, links unlinked
        return path

    def _global_carry(self) -> list[Tensor]:
        """The carried BPTT state of the whole global batch (ranks' row shards gathered in order)."""
        parts = _state_tensors(self.carry)
        if not self.dist.enabled or not parts:
            return parts
        import torch.distributed as tdist

        B, W = self.config.batch_size, self.dist.world_size
        width = -(-B // W)  # the largest shard; smaller ones are padded for all_gather
        out = []
        for s in parts:  # (L*D, B_local, S)
            padded = torch.zeros(s.shape[0], width, s.shape[2], dtype=s.dtype)
            padded[:, :s.shape[1]] = s
            gathered = [torch.empty_like(padded) for _ in range(W)]
            tdist.all_gather(gathered, padded)
            rows = [g[:, :hi - lo] for r, g in enumerate(gathered) for lo, hi in [dd.shard_bounds(B, r, W)]]
            out.append(torch.cat(rows, dim=1))
        return out

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from the latest checkpoint of ``path`` (default: this run's directory)."""
        source = path if path is not None else self.run_dir
        if source is None:
            raise ValueError("resume: no run directory given")
        ck = ckpt.load_checkpoint(source, "latest")
        try:
            self.model.load_state_dict(ck.model_state)
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"{ck.path}: weights do not fit this model "
                                       f"({str(e).strip().splitlines()[0]})") from None
        opt_meta = ck.config.get("optimizer_state")
        if opt_meta is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state_from_flat(ck.trainer_tensors, opt_meta))
        if "rng.torch" in ck.trainer_tensors:
            torch.set_rng_state(ck.trainer_tensors["rng.torch"])
        if "rng.cuda" in ck.trainer_tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck.trainer_tensors["rng.cuda"], self.device)
        self.precision.load_state_dict({k[4:]: float(v) for k, v in ck.trainer_tensors.items()
                                        if k.startswith("amp.")})
        self.state = TrainState(**ck.config["trainer_state"])
        self.state.finished = False  # a finished run resumed with more epochs/steps goes on
        self.last_eval["val"] = ck.config.get("metrics", {}).get("val", {})
        carry = [ck.trainer_tensors[f"carry.{k}"].to(self.device) for k in range(len(ck.trainer_tensors))
                 if f"carry.{k}" in ck.trainer_tensors]
        self.carry = None if not carry else (carry[0] if len(carry) == 1 else tuple(carry))
        if self.carry is not None and self.dist.enabled:
            lo, hi = dd.shard_bounds(self.config.batch_size, self.dist.rank, self.dist.world_size)
            self.carry = tuple(c[:, lo:hi] for c in _state_tensors(self.carry))
            self.carry = self.carry[0] if len(self.carry) == 1 else self.carry
        states = ck.config.get("hooks", {})
        for h in self.hooks:
            if h.key and h.key in states:
                h.load_state_dict(states[h.key])
