"""The per-call thread rule (rnnlab.backends.threads): where it caps, its bounds, its switch, unchanged results."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
import torch

import rnnlab
from rnnlab.backends import threads
from rnnlab.backends.spare_cpus import SpareCpus, read_ticks
from rnnlab.backends.threads import MIN_PARALLEL_WORK, MIN_SPARE_WORK, CallThreads, call_threads, step_work


@pytest.fixture
def two_threads() -> Iterator[None]:
    # conftest runs the suite on one thread; the cap is only visible with more
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every count the rule passes to torch.set_num_threads, in order."""
    calls: list[int] = []
    real = torch.set_num_threads

    def record(n: int) -> None:
        calls.append(n)
        real(n)
    monkeypatch.setattr(torch, "set_num_threads", record)
    return calls


def test_cap_below_threshold_not_above(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "spare_cpus", lambda: None)  # the load unknown: the size rule alone
    assert call_threads(MIN_PARALLEL_WORK - 1, 2) == 1
    assert call_threads(0, 4) == 1
    assert call_threads(MIN_PARALLEL_WORK, 2) == 2
    assert call_threads(10 * MIN_PARALLEL_WORK, 4) == 4


def test_never_above_available(monkeypatch: pytest.MonkeyPatch, two_threads: None) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    for work in (0, MIN_PARALLEL_WORK - 1, MIN_PARALLEL_WORK, 100 * MIN_PARALLEL_WORK):
        for n in (1, 2, 3):
            assert call_threads(work, n) <= n
        assert call_threads(work) <= torch.get_num_threads()
    torch.set_num_threads(1)  # a user's explicit single thread: a large call stays on it
    with CallThreads(100 * MIN_PARALLEL_WORK) as g:
        assert torch.get_num_threads() == 1 and g.cap == 1
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false"])
def test_env_switch_off(monkeypatch: pytest.MonkeyPatch, two_threads: None, value: str) -> None:
    monkeypatch.setenv(threads.ENV, value)
    assert call_threads(1, 2) == 2
    with CallThreads(1):
        assert torch.get_num_threads() == 2


def test_guard_restores(monkeypatch: pytest.MonkeyPatch, two_threads: None) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    with CallThreads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError):
        with CallThreads(1):
            raise KeyError("kernel failed")
    assert torch.get_num_threads() == 2


def test_step_work() -> None:
    lstm = rnnlab.Recurrent("lstm", 8, 32)
    assert step_work(lstm.layer_params(0, 0), 5) == 5 * 4 * 32 * (8 + 32)  # input projection + recurrent product
    # a diagonal recurrence: the input projection is most of the work, so a large call keeps its threads
    indrnn = rnnlab.Recurrent("indrnn", 256, 256)
    assert step_work(indrnn.layer_params(0, 0), 64) == 64 * (256 * 256 + 256) >= MIN_PARALLEL_WORK


def _small_lstm() -> rnnlab.Recurrent:
    return rnnlab.Recurrent("lstm", 8, 16, num_layers=2, bidirectional=True)


def test_backend_caps_forward_and_backward(monkeypatch: pytest.MonkeyPatch, two_threads: None,
                                           spy: list[int]) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    mod = _small_lstm()
    x = torch.randn(6, 3, 8, requires_grad=True)
    out = mod(x)[0]
    assert 1 in spy and torch.get_num_threads() == 2  # forward capped, then restored
    spy.clear()
    out.sum().backward()
    assert spy[0] == 1 and spy[-1] == 2  # backward lowered once, restored when the pass ended
    assert torch.get_num_threads() == 2 and not threads._stale_restore


def test_backend_leaves_large_calls(monkeypatch: pytest.MonkeyPatch, two_threads: None, spy: list[int]) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "spare_cpus", lambda: 2.0)  # an idle machine
    mod = rnnlab.Recurrent("rnn", 4, 512)  # B * H * (I + H) > 4M multiply-adds per step at B = 16
    assert step_work(mod.layer_params(0, 0), 16) >= MIN_PARALLEL_WORK
    mod(torch.randn(2, 16, 4))[0].sum().backward()
    assert spy == []


def test_failed_backward_restored_by_next_call(monkeypatch: pytest.MonkeyPatch, two_threads: None) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    mod = _small_lstm()
    x = torch.randn(4, 2, 8, requires_grad=True)
    out = mod(x)[0]

    def boom(grad: torch.Tensor) -> torch.Tensor:
        raise ValueError("hook failed")
    x.register_hook(boom)  # x's gradient comes after the kernels' backward: the count is lowered by then
    with pytest.raises(ValueError):
        out.sum().backward()
    assert torch.get_num_threads() == 1 and threads._stale_restore == [2]
    with torch.no_grad():
        mod(torch.randn(4, 2, 8))
    assert torch.get_num_threads() == 2 and not threads._stale_restore


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "peephole"])
def test_results_identical_with_and_without_rule(monkeypatch: pytest.MonkeyPatch, two_threads: None,
                                                 cell: str) -> None:
    mod = rnnlab.Recurrent(cell, 8, 16, num_layers=2)
    x = torch.randn(7, 3, 8)
    results = []
    for value in ("on", "off"):
        monkeypatch.setenv(threads.ENV, value)
        xi = x.clone().requires_grad_(True)
        mod.zero_grad()
        out, state = mod(xi)
        (out.sum() + state[0].sum()).backward()
        results.append([out.detach(), xi.grad, *(p.grad for p in mod.parameters())])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spare, n, expected", [(2.0, 2, 2), (1.5, 2, 2), (1.4, 2, 1), (1.0, 2, 1), (0.0, 2, 1),
                                                (None, 2, 1), (None, 4, 1), (2.6, 4, 3), (8.0, 4, 4)])
def test_mid_sized_calls_follow_spare_cpus(monkeypatch: pytest.MonkeyPatch, spare: float | None, n: int,
                                           expected: int) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "spare_cpus", lambda: spare)
    assert call_threads(MIN_SPARE_WORK, n) == expected
    assert call_threads(MIN_PARALLEL_WORK - 1, n) == expected
    assert call_threads(MIN_SPARE_WORK - 1, n) == 1  # small calls: one thread however idle the machine
    # large calls: the same count, or all threads while the load is unknown
    assert call_threads(MIN_PARALLEL_WORK, n) == (n if spare is None else expected)


def test_spare_cpus_meter_windows() -> None:
    now = [0.0]
    ticks: list[tuple[int, int, int] | None] = [(1000, 50, 2)]
    meter = SpareCpus(reader=lambda: ticks[0], clock=lambda: now[0], window_s=0.5)  # first sample: at creation
    hz = meter.hz
    now[0] = 0.05
    assert meter() is None  # not even the first (short) window has passed
    now[0] = 1.0  # one second: the CPUs were busy 1.5 CPU-seconds, 0.5 of them this process
    ticks[0] = (1000 + int(1.5 * hz), 50 + hz // 2, 2)
    assert meter() == pytest.approx(1.0)
    now[0] = 1.3
    ticks[0] = (1000 + 10 * hz, 50 + hz // 2, 2)  # not read: inside the window, the last estimate stands
    assert meter() == pytest.approx(1.0)
    now[0] = 2.0  # this process alone kept both CPUs busy since the last sample: nothing taken by others
    ticks[0] = (1000 + int(3.5 * hz), 50 + hz // 2 + 2 * hz, 2)
    assert meter() == pytest.approx(2.0)
    now[0] = 3.0  # the reader fails (no /proc): unknown from then on, never read again
    ticks[0] = None
    assert meter() is None
    ticks[0] = (0, 0, 2)
    now[0] = 9.0
    assert meter() is None
    assert SpareCpus(reader=lambda: None)() is None  # no /proc from the start


@pytest.mark.skipif(read_ticks() is None, reason="no /proc/stat: not Linux")
def test_spare_cpus_sees_a_busy_process() -> None:
    import subprocess
    import sys
    import time
    busy, own, n_cpus = read_ticks()  # type: ignore[misc]
    assert n_cpus == len(os.sched_getaffinity(0)) and busy >= 0 and own >= 0
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        meter = SpareCpus(window_s=0.5)
        time.sleep(1.3)
        spare = meter()
        # the busy loop takes most of a CPU (more when the machine is loaded, as spare then counts the rest too)
        assert spare is not None and 0.0 <= spare <= n_cpus - 0.5
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.parametrize("spare, lowered", [(2.0, False), (1.0, True), (None, True)])
def test_backend_reads_spare_cpus_for_mid_sized_calls(monkeypatch: pytest.MonkeyPatch, two_threads: None,
                                                      spy: list[int], spare: float | None, lowered: bool) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "spare_cpus", lambda: spare)
    mod = rnnlab.Recurrent("lstm", 128, 128)
    assert MIN_SPARE_WORK <= step_work(mod.layer_params(0, 0), 16) < MIN_PARALLEL_WORK  # (200, 16, 128)
    mod(torch.randn(2, 16, 128))[0].sum().backward()
    assert (1 in spy) == lowered and torch.get_num_threads() == 2


@pytest.mark.skipif(not hasattr(os, "fork") or read_ticks() is None, reason="needs fork and /proc")
def test_spare_cpus_meter_restarts_in_a_forked_child() -> None:
    from rnnlab.backends.spare_cpus import spare_cpus
    spare_cpus.last = (0.0, 0, 0)  # as if the parent had sampled
    pid = os.fork()
    if pid == 0:  # the child: the fork hook cleared the parent's samples, so its first call starts a window
        ok = spare_cpus.last is None and spare_cpus.spare is None and spare_cpus() is None
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert spare_cpus.last == (0.0, 0, 0)  # the parent's meter is untouched
    spare_cpus.restart()
