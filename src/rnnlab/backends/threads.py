"""Per-call intra-op thread count for the CPU kernels: one thread for calls too small to pay for a second.

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
core is at least partly free (training: at (50, 128, 512); noisy at (100, 64, 256)). The threshold, 4 M multiply-
adds per step, keeps one thread up to (200, 16, 128) (there the busy-machine loss outweighs the quiet-machine gain;
with the rule on and the hog running, (200, 16, 128) training took 0.72-1.32x the 1-thread time against 6.3-13.5x
with 2 threads) and leaves the count alone from (100, 64, 256) up (Elman there is exactly 4 M and keeps 2 threads:
0.60x inference). On a dedicated machine ``RNNLAB_THREAD_RULE=off`` gets the quiet-machine gain at (200, 16, 128)
back; under heavy load 2 threads lose at every size measured, and only the user's ``torch.set_num_threads(1)`` helps
(the rule keeps it).

Rule: a call whose products have fewer than :data:`MIN_PARALLEL_WORK` multiply-adds per step
(``B * (weight_ih.numel() + weight_hh.numel())``: the input projection, one GEMM over all steps inside the call,
counted per step, plus the recurrent product, B * G * H * (I + H) for G gate blocks) runs its forward, and the
backward pass it starts, with one intra-op thread; larger calls keep ``torch.get_num_threads()``.  The input
projection counts because it is often most of the call: with the recurrent product alone, IndRNN (a diagonal
W_hh) and SRU (none) ran every call on one thread and trained 1.6-1.8x slower than with the rule off at
(100, 64, 256) and (50, 128, 512) on a quiet machine (their reference loop, whose input GEMM kept 2 threads,
was faster than the fused kernel there).  The LSTM rows of the table keep their side of the threshold
(I = H: 2 M at (200, 16, 128), 34 M at (100, 64, 256)).  The count is only ever lowered, never raised above what
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

ENV = "RNNLAB_THREAD_RULE"
#: per-step multiply-adds below which a call runs on one thread (derived in the module docstring)
MIN_PARALLEL_WORK = 1 << 22
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
    """Intra-op threads for a call with ``work`` per-step multiply-adds: 1 below :data:`MIN_PARALLEL_WORK`,
    else ``available`` (default ``torch.get_num_threads()``); never more than ``available``."""
    n = torch.get_num_threads() if available is None else available
    if work < MIN_PARALLEL_WORK and rule_enabled():
        return min(n, 1)
    return n


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
