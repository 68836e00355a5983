"""Build-on-first-use of the generic driver extension (generic.cpp, driver.h, cells/*.h), cached like kernels.cpp.

A second extension next to :mod:`rnnlab.backends.cpp.loader`'s, built with the same flags, cache root and
cross-process lock, under ``$RNNLAB_CACHE/generic-<hash>``; the hash covers every source and header of the
driver and the cells besides what the kernels' key covers (torch install, Python, compiler, flags, CPU).
A failed build warns once and :func:`load_generic` returns ``None`` (the backend then falls back).

Example:
    >>> from rnnlab.backends.cpp.generic_loader import load_generic
    >>> ext = load_generic()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

from rnnlab.backends.cpp import loader

log = logging.getLogger("rnnlab.backends")

HERE = Path(__file__).parent
SOURCE = HERE / "generic.cpp"

_lock = threading.Lock()
_state: dict[str, object] = {"module": None, "failed": False}


def sources() -> list[Path]:
    """Every file the build depends on: generic.cpp, driver.h, gemm.h and each cell header (sorted: stable)."""
    return [SOURCE, HERE / "driver.h", HERE / "gemm.h", *sorted((HERE / "cells").glob("*.h"))]


def build_key() -> str:
    import torch

    h = hashlib.sha256()
    for path in sources():
        h.update(path.name.encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    for part in (torch.__version__, os.path.realpath(torch.__file__), sys.version, loader.compiler_id(),
                 " ".join(loader.CFLAGS), platform.machine(), loader._cpu_model()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _compile() -> ModuleType:
    from torch.utils.cpp_extension import load

    key = build_key()
    build = loader.cache_root() / f"generic-{key}"
    with loader._build_lock(f"generic-{key}"):
        build.mkdir(parents=True, exist_ok=True)
        return load(name=f"rnnlab_generic_{key}", sources=[str(SOURCE)], extra_cflags=loader.CFLAGS,
                    extra_include_paths=[str(HERE)], build_directory=str(build), verbose=False)


def load_generic() -> ModuleType | None:
    """The compiled driver extension, built on first call; ``None`` if it cannot be built (warned once)."""
    return loader.build_once(_state, _lock, lambda: _compile(), "the generic C++ driver")


def generic_failed() -> bool:
    return bool(_state["failed"])
