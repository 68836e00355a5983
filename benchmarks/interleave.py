"""What the benchmark scripts share: interleaved timing of a call's variants, and an atomic JSON report."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

#: a timed block lasts about this long (seconds): small calls are repeated, large ones run once
BLOCK_S = 0.05


def alternate(variants: dict[str, tuple[Callable[[], None], Callable[[], None]]], repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each variant ``name -> (prepare, call)``: ``prepare`` (a switch, untimed)
    runs before each of its timed blocks, every variant runs once per repeat, in an order that rotates from
    repeat to repeat, and each sample is the mean of a block of calls lasting about BLOCK_S."""
    names = list(variants)
    for prepare, call in variants.values():  # warm-up, every way
        prepare()
        call()
    prepare, call = variants[names[0]]
    prepare()
    t0 = time.perf_counter()
    call()
    n = max(1, int(BLOCK_S / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            prepare, call = variants[name]
            prepare()
            t0 = time.perf_counter()
            for _ in range(n):
                call()
            times[name].append((time.perf_counter() - t0) / n * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def write_report(path: Path, report: dict) -> None:
    """``report`` as indented JSON at ``path``, written to a temporary file first (a killed run leaves the old one)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)
