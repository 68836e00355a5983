"""Build-on-first-use of the C++ driver extension (generic.cpp, its headers, cells/*.h), with fallback.

The extension is compiled with ``torch.utils.cpp_extension.load`` the first time a fused cell runs (about a
minute) into ``$RNNLAB_CACHE/generic-<hash>`` (default ``~/.cache/rnnlab``) and loaded from there afterwards.
The hash covers every source and header, the torch install path (two virtual environments with the same torch
version get separate builds instead of rebuilding each other's), Python, the C++ compiler torch uses (``$CXX``
or ``c++``: its path and ``--version``), the flags and the CPU.  Builds hold an exclusive ``fcntl`` lock on
``generic-<hash>.lock`` in the cache root, so processes starting at once build one after the other (the later
ones find the finished build).  A failed build (no compiler, no headers, ...) warns once on the
``rnnlab.backends`` logger and :func:`load_generic` returns ``None`` from then on (the backend then falls back
to the reference).

Example:
    >>> from rnnlab.backends.cpp.generic_loader import load_generic
    >>> ext = load_generic()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable

log = logging.getLogger("rnnlab.backends")

HERE = Path(__file__).parent
SOURCE = HERE / "generic.cpp"
# No -ffast-math: it assumes no inf/NaN, and saturated gates (pre-activations beyond about ±88 in float32, or
# ±inf inputs) then gave NaN where torch.nn gives exact 0/1 gates.  IEEE semantics are kept throughout;
# -fno-math-errno (exp/tanh need not set errno: same results) lets GCC use libmvec's vector exp/tanh, which
# handle inf/NaN exactly (declared in gemm.h).
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd"]

_lock = threading.Lock()
_state: dict[str, object] = {"module": None, "failed": False}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") or line.startswith("flags"):
                return line  # first of them; "-march=native" code is only valid on the same CPU family
    except OSError:
        pass
    return platform.processor()


@functools.lru_cache(maxsize=8)
def _compiler_id(compiler: str) -> str:
    """Resolved path and ``--version`` output of a compiler command (once per command per process)."""
    path = shutil.which(compiler) or compiler
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:  # no compiler: the build itself will fail and warn
        version = f"unavailable: {type(e).__name__}"
    return f"{os.path.realpath(path) if os.path.exists(path) else path}\n{version}"


def compiler_id() -> str:
    """The C++ compiler ``torch.utils.cpp_extension`` will run (``$CXX``, else ``c++``): path and version."""
    return _compiler_id(os.environ.get("CXX", "c++"))


def cache_root() -> Path:
    return Path(os.environ.get("RNNLAB_CACHE") or os.path.join(Path.home(), ".cache", "rnnlab"))


@contextlib.contextmanager
def _build_lock(key: str):
    """Exclusive lock for building ``key`` across processes (released when the holder exits, even on a crash)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "a+") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: torch's own build baton is all there is
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def build_once(state: dict[str, object], lock: threading.Lock, compile_fn: Callable[[], ModuleType],
               what: str) -> ModuleType | None:
    """The extension ``compile_fn`` builds, built on the first call in this process and kept in ``state``
    (``{"module", "failed"}``); after a failed build ``None`` from then on and one warning naming ``what``."""
    if state["module"] is not None or state["failed"]:
        return state["module"]  # type: ignore[return-value]
    import torch

    if torch.compiler.is_compiling():
        # a build cannot be traced: a graph compiled before any eager call built the driver uses the reference
        return None
    with lock:
        if state["module"] is None and not state["failed"]:
            try:
                state["module"] = compile_fn()
            except Exception as e:  # any build problem: compiler missing, headers, linker, ...
                state["failed"] = True
                first = str(e).strip().splitlines()
                log.warning("rnnlab: could not build %s (%s: %s); using the reference backend instead", what,
                            type(e).__name__, first[-1] if first else "")
    return state["module"]  # type: ignore[return-value]


def sources() -> list[Path]:
    """Every file the build depends on: generic.cpp, its headers (driver.h, gemm.h, buffers.h) and each cell header
    (sorted: stable)."""
    return [SOURCE, *sorted(HERE.glob("*.h")), *sorted((HERE / "cells").glob("*.h"))]


def build_key() -> str:
    """Hash of everything the binary depends on: sources, torch version and install path, Python ABI, compiler,
    flags and CPU."""
    import torch

    h = hashlib.sha256()
    for path in sources():
        h.update(path.name.encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    for part in (torch.__version__, os.path.realpath(torch.__file__), sys.version, compiler_id(),
                 " ".join(CFLAGS), platform.machine(), _cpu_model()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return cache_root() / f"generic-{build_key()}"


def _compile() -> ModuleType:
    from torch.utils.cpp_extension import load

    key = build_key()
    build = cache_root() / f"generic-{key}"
    with _build_lock(f"generic-{key}"):
        build.mkdir(parents=True, exist_ok=True)
        # torch's own build baton: a build killed mid-way leaves it, and torch then waits for it forever.  Under
        # our lock no other rnnlab process is building here, so one that exists is stale.
        (build / "lock").unlink(missing_ok=True)
        return load(name=f"rnnlab_generic_{key}", sources=[str(SOURCE)], extra_cflags=CFLAGS,
                    extra_include_paths=[str(HERE)], build_directory=str(build), verbose=False)


def load_generic() -> ModuleType | None:
    """The compiled driver extension, built on first call; ``None`` if it cannot be built (warned once)."""
    return build_once(_state, _lock, lambda: _compile(), "the generic C++ driver")


def generic_failed() -> bool:
    """True once a build was attempted and failed in this process."""
    return bool(_state["failed"])


def reset() -> None:
    """Forget the build outcome (tests use it to simulate a failed build, then restore)."""
    _state["module"] = None
    _state["failed"] = False
