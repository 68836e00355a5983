"""Per-call intra-op thread count for the CPU kernels: one thread for small calls, and no more than the idle CPUs.

Measured on the shared 2-core dev machine (torch 2.13 CPU wheel, OpenMP), ``benchmarks/threads_under_load.py``,
time with 2 intra-op threads / time with 1 (rule off), interleaved medians of 3 blocks of calls, ranges over
rnnlab's lstm, gru, rnn, peephole and torch.nn.LSTM / GRU (they behave alike).  "Quiet": nothing else running;
"busy": other engineers' builds and tests (load average 1-3.4 on 2 cores); "hog": a busy-loop process pinned to
CPU 0 on top (load average 2.7-6.5).  Per-step work = B * G * H * H multiply-adds (LSTM G = 4):

    (T, B, H)      LSTM work  quiet train / infer   busy train / infer       hog train / infer
    (50, 1, 32)    4 K        1.04-1.40 / 0.99-1.39  -- / 3.0-5.3           1.4-78 / 1.9-85
    (100, 8, 64)   131 K      0.91-1.07 / 0.89-1.12  1.5-25 / 2.1-11        1.7-11 / 0.8-11
    (200, 16, 128) 1 M        0.58-0.85 / 0.56-0.81  2.0-9.9 / 4.3-304      6.3-54 / 1.2-21
    (100, 64, 256) 17 M       --                     1.9-14 / 0.52-0.60     3.1-17 / 8.2-24
    (50, 128, 512) 134 M      --                     0.40-0.72 / 0.49-0.61  not measured (> 10 s per call)

So on a quiet machine a second thread gains nothing up to (100, 8, 64) and 1.2-1.8x at (200, 16, 128); as soon as
other work runs, it costs 2-300x up to (200, 16, 128); from (100, 64, 256) up it gains 1.4-2.5x whenever the second
core is at least partly free (training: at (50, 128, 512); noisy at (100, 64, 256)).

So whether a second thread pays depends as much on the rest of the machine as on the call, and calls from
(200, 16, 128) up look at the machine (:mod:`.spare_cpus`: CPU time other processes took over the last half
second).  Measured 2026-11-25, ``benchmarks/threads_under_load.py --load idle half loaded`` (raw output:
``docs/bench/threads_under_load.json``), 2 threads / 1 thread with the rule off, rnnlab lstm, gru, rnn and
torch.nn.LSTM / GRU, beside a competing process pinned to CPU 0 that is busy half of every 20 ms ("half") or all
the time ("full"):

    (T, B, H)        idle train / infer       half train / infer       full train / infer
    (100, 8, 64)     0.87-1.09 / 0.88-1.13    1.18-1.47 / 1.17-1.51    2.28-6.60 / 2.02-5.80
    (200, 16, 128)   0.58-0.84 / 0.56-0.83    0.78-1.14 / 0.81-1.28    1.17-3.76 / 1.15-3.40
    (100, 64, 256)   0.54-0.67 / 0.53-0.76    0.70-0.96 / 0.70-1.33    1.30-2.68 / 1.05-4.19
    (50, 128, 512)   0.55-0.64 / 0.50-0.55    0.74-0.82 / 0.69-0.84    1.37-1.64 / 1.34-2.37

A CPU that another process keeps fully busy makes a second thread lose at every size; one it keeps half busy
leaves the second thread about even (better from (100, 64, 256) up); an idle one makes it win from
(200, 16, 128) up.

Rule: let ``work`` be the call's multiply-adds per step (``B * (weight_ih.numel() + weight_hh.numel())``: the
input projection, one GEMM over all steps inside the call, counted per step, plus the recurrent product,
B * G * H * (I + H) for G gate blocks).
- Below :data:`MIN_SPARE_WORK` (512 K; an LSTM at (100, 8, 64) is 262 K): one intra-op thread, for the forward
  and the backward pass it starts.
- From there up: as many threads as CPUs that other processes leave at least half idle, ``int(spare + 0.5)``,
  at least 1.  Rule on against 1 thread, same runs: idle 0.57-0.82 at (200, 16, 128) and 0.52-0.68 from
  (100, 64, 256) up (within 0.97-1.11 of 2 threads; in one idle block, inference at (100, 64, 256), the rule
  ran 1 thread: something else took a CPU then, and a rerun gave 0.56-0.67); full 0.97-1.14 at every size
  from (200, 16, 128) up (2 threads: 1.05-4.19); half, within 0.93-1.15 of 2 threads.  At (100, 8, 64) the
  rule runs one thread, yet half/full training took 1.27-2.37x the 1-thread time: the rest of each training
  step (the loss, the autograd engine) still ran with 2 threads.
- While the load is unknown (the first 0.1 s after import, or no ``/proc``): one thread below
  :data:`MIN_PARALLEL_WORK` (4 M; an LSTM at (200, 16, 128) is 2 M, at (100, 64, 256) 34 M), all from there up.
The input projection counts because it is often most of the call: with the recurrent product alone, IndRNN (a
diagonal W_hh) and SRU (none) ran every call on one thread and trained 1.6-1.8x slower than with the rule off at
(100, 64, 256) and (50, 128, 512) on a quiet machine.  The count is only ever lowered, never raised above what
``torch.get_num_threads()`` says, so a user's ``torch.set_num_threads(n)`` stays the upper bound.
``RNNLAB_THREAD_RULE=off`` in the environment (read on every call) switches the rule off.

Mechanism: ``torch.set_num_threads`` around the kernel call (measured 0.2 µs for a set-and-restore pair).  In
the OpenMP build of PyTorch (the CPU wheels) it sets the calling thread's OpenMP and MKL thread counts, so
other Python threads are not affected.  For training, a pre-hook on the autograd nodes of the call's outputs
lowers the count again when the backward pass reaches them and a callback queued on the autograd engine
restores it when that backward pass ends, so the rest of that backward pass after the small layer also runs
on one thread.  Should a backward pass end in an exception (no callback), the next guarded call restores the
count first.

Example:
    >>> from rnnlab.backends.threads import call_threads
    >>> call_threads(1) <= torch.get_num_threads()
    True
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import torch
from torch import Tensor

from .spare_cpus import spare_cpus

ENV = "RNNLAB_THREAD_RULE"
#: per-step multiply-adds from which a call keeps every thread while the machine's load is unknown
MIN_PARALLEL_WORK = 1 << 22
#: per-step multiply-adds below which a call runs on one thread even on an idle machine
MIN_SPARE_WORK = 1 << 19
#: a CPU counts as free while other processes use at most half of it
SPARE_SLACK = 0.5
#: a backward pass that raised left the count lowered: the count to put back at the next guarded call
_stale_restore: list[int] = []


def rule_enabled() -> bool:
    """False when ``RNNLAB_THREAD_RULE`` is ``off`` / ``0`` / ``false`` / ``no``."""
    return os.environ.get(ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def step_work(params: Mapping[str, Tensor], batch: int) -> int:
    """Multiply-adds per step of the call's products: ``batch * (weight_ih.numel() + weight_hh.numel())`` (the
    input projection of one step and the recurrent product; a weight the cell does not have counts 0)."""
    return batch * sum(params[k].numel() for k in ("weight_ih", "weight_hh") if k in params)


def call_threads(work: int, available: int | None = None) -> int:
    """Intra-op threads for a call with ``work`` per-step multiply-adds, at most ``available`` (default
    ``torch.get_num_threads()``): 1 below :data:`MIN_SPARE_WORK`; above, as many as CPUs other processes leave at
    least half idle (:mod:`.spare_cpus`), at least 1; while that is unknown, 1 below :data:`MIN_PARALLEL_WORK`
    and ``available`` from there up."""
    n = torch.get_num_threads() if available is None else available
    if n <= 1 or not rule_enabled():
        return n
    if work < MIN_SPARE_WORK:
        return 1
    spare = spare_cpus()
    if spare is None:
        return n if work >= MIN_PARALLEL_WORK else 1
    return max(1, min(n, int(spare + SPARE_SLACK)))


def _restore_stale() -> None:
    while _stale_restore:
        torch.set_num_threads(_stale_restore.pop())


class CallThreads:
    """``with CallThreads(work) as g: result = kernel(); g.cover_backward(tensors)``: the kernel runs with
    :func:`call_threads` threads, the previous count is restored on exit; :meth:`cover_backward` extends the
    same cap to the backward pass that reaches ``tensors``."""

    __slots__ = ("work", "prev", "cap")

    def __init__(self, work: int) -> None:
        self.work = work
        self.prev = 0
        self.cap = 0

    def __enter__(self) -> CallThreads:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():  # a traced graph has no thread state
            return self
        if _stale_restore:
            _restore_stale()
        self.prev = torch.get_num_threads()
        self.cap = call_threads(self.work, self.prev)
        if self.cap < self.prev:
            torch.set_num_threads(self.cap)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cap < self.prev:
            torch.set_num_threads(self.prev)

    def cover_backward(self, tensors: Iterable[Tensor]) -> None:
        """Lower the count for the backward pass through ``tensors``' autograd nodes (no-op without a cap or
        without a graph)."""
        if self.cap >= self.prev:
            return
        nodes = {id(t.grad_fn): t.grad_fn for t in tensors if t.grad_fn is not None}
        if not nodes:
            return
        cap = self.cap
        active: list[int] = []  # this backward pass already lowered the count (restore queued)

        def restore() -> None:
            if active:
                prev = active.pop()
                if _stale_restore and _stale_restore[-1] == prev:
                    _stale_restore.pop()
                torch.set_num_threads(prev)

        def lower(grad_outputs: object) -> None:
            if active:
                return
            prev = torch.get_num_threads()
            if cap >= prev:
                return
            active.append(prev)
            _stale_restore.append(prev)  # popped by restore(); left for the next call if the pass raises
            torch.set_num_threads(cap)
            torch.autograd.Variable._execution_engine.queue_callback(restore)

        for node in nodes.values():
            node.register_prehook(lower)
