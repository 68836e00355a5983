"""How many of this process's CPUs other processes left idle over the last half second (Linux ``/proc``).

The thread rule (``threads.py``) gives a call of 512 K multiply-adds per step or more only as many intra-op
threads as there are CPUs free for them: on a quiet 2-core machine 2 threads train (200, 16, 128) 1.2-1.8x
faster than 1, and beside a busy process they run 1.1-6x slower (a descheduled pool thread stalls every
per-step barrier).

The estimate is ``len(sched_getaffinity) - (busy ticks of those CPUs - this process's ticks) / elapsed``: the
busy time of the CPUs this process may run on (``/proc/stat``: user, nice, system, irq, softirq, steal),
less what this process itself used (``/proc/self/stat``: utime + stime of all its threads), over the wall
time between two samples.  The first sample is taken when the meter is made (the process-wide one: when this
module is imported), so the first call that asks, usually much later, already gets an estimate; after that a
sample is taken at most every :data:`WINDOW_S` seconds, from a call that asks, and between samples the last
estimate is returned, so the cost per call is one clock read (two small file reads per window).  ``None``
means unknown: no ``/proc`` (not Linux), or less than :data:`FIRST_WINDOW_S` since the meter was made; the
caller then keeps its conservative choice.

Example:
    >>> from rnnlab.backends.spare_cpus import spare_cpus
    >>> spare = spare_cpus()  # CPUs left idle by other processes, or None
    >>> spare is None or spare >= 0.0
    True
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

#: seconds between two samples (long enough for /proc's 10 ms ticks to resolve a quarter of a CPU)
WINDOW_S = 0.5
#: the first window (from the meter's creation, at import) gives an estimate after this long already
FIRST_WINDOW_S = 0.1

_STAT = "/proc/stat"
_SELF_STAT = "/proc/self/stat"
# /proc/stat cpuN columns: user nice system idle iowait irq softirq steal guest guest_nice; guest time is
# already counted in user, idle and iowait are not busy
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


def _ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100


def read_ticks() -> Optional[tuple[int, int, int]]:
    """(busy ticks of this process's CPUs, this process's ticks, number of those CPUs), or None without /proc."""
    try:
        cpus = os.sched_getaffinity(0)
        busy = 0
        with open(_STAT) as fh:
            for line in fh:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *cols = line.split()
                if int(name[3:]) in cpus:
                    busy += sum(int(cols[i]) for i in _BUSY_COLUMNS if i < len(cols))
        with open(_SELF_STAT) as fh:
            # fields after the parenthesised command name (which may hold spaces): utime, stime are 14th, 15th
            fields = fh.read().rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    return busy, own, len(cpus)


class SpareCpus:
    """Callable meter: ``meter()`` returns the CPUs other processes left idle in the last measured window, or
    None (see the module docstring).  ``reader`` and ``clock`` are injectable for tests."""

    def __init__(self, reader: Callable[[], Optional[tuple[int, int, int]]] = read_ticks,
                 clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S) -> None:
        self.reader = reader
        self.clock = clock
        self.window_s = window_s
        self.hz = _ticks_per_second()
        self.last: Optional[tuple[float, int, int]] = None  # (time, busy ticks, own ticks) at the last sample
        self.spare: Optional[float] = None
        self.dead = False  # the reader failed once: no /proc, never retried
        self._sample(self.clock())

    def restart(self) -> None:
        """Forget every sample: the next call starts a first window (a forked child, whose own ticks restart)."""
        self.last = self.spare = None

    def __call__(self) -> Optional[float]:
        if self.dead:
            return None
        now = self.clock()
        if self.last is not None and now - self.last[0] < (self.window_s if self.spare is not None
                                                           else min(self.window_s, FIRST_WINDOW_S)):
            return self.spare
        return self._sample(now)

    def _sample(self, now: float) -> Optional[float]:
        ticks = self.reader()
        if ticks is None:
            self.dead = True
            self.spare = None
            return None
        busy, own, n_cpus = ticks
        if self.last is not None:
            elapsed = now - self.last[0]
            others = max(0.0, ((busy - self.last[1]) - (own - self.last[2])) / self.hz / elapsed)
            self.spare = max(0.0, n_cpus - others)
        self.last = (now, busy, own)
        return self.spare


#: the process-wide meter the thread rule reads
spare_cpus = SpareCpus()
if hasattr(os, "register_at_fork"):  # a forked child's /proc/self ticks restart: its first window starts there
    os.register_at_fork(after_in_child=spare_cpus.restart)
