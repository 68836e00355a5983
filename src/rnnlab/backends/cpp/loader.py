"""Build-on-first-use of the C++ kernels into a per-(source, torch install, compiler, flags, CPU) cache, with fallback.

The extension is compiled with ``torch.utils.cpp_extension.load`` the first time a kernel is needed (about
35 s) into ``$RNNLAB_CACHE/kernels-<hash>`` (default ``~/.cache/rnnlab``) and loaded from there afterwards.
The hash covers the torch install path (two virtual environments with the same torch version get separate
builds instead of rebuilding each other's) and the C++ compiler torch uses (``$CXX`` or ``c++``: its path and
``--version``).  Builds hold an exclusive ``fcntl`` lock on ``kernels-<hash>.lock`` in the cache root, so
processes starting at once build one after the other (the later ones find the finished build).
If compiling fails (no compiler, no headers, ...) one warning goes to the ``rnnlab.backends`` logger and
:func:`load_kernels` returns ``None`` from then on, so callers fall back to the reference backend.

Example:
    >>> from rnnlab.backends.cpp.loader import load_kernels
    >>> ext = load_kernels()  # doctest: +SKIP
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

SOURCE = Path(__file__).with_name("kernels.cpp")
# No -ffast-math: it assumes no inf/NaN, and saturated gates (pre-activations beyond about ±88 in float32, or
# ±inf inputs) then gave NaN where torch.nn gives exact 0/1 gates.  IEEE semantics are kept throughout;
# -fno-math-errno (exp/tanh need not set errno: same results) lets GCC use libmvec's vector exp/tanh, which
# handle inf/NaN exactly (declared in kernels.cpp).
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


def build_key() -> str:
    """Hash of everything the binary depends on: source, torch version and install path, Python ABI, compiler,
    flags and CPU."""
    import torch

    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), os.path.realpath(torch.__file__).encode(),
                 sys.version.encode(), compiler_id().encode(), " ".join(CFLAGS).encode(),
                 platform.machine().encode(), _cpu_model().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("RNNLAB_CACHE") or os.path.join(Path.home(), ".cache", "rnnlab"))


def cache_dir() -> Path:
    return cache_root() / f"kernels-{build_key()}"


@contextlib.contextmanager
def _build_lock(key: str):
    """Exclusive lock for building ``key`` across processes (released when the holder exits, even on a crash)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"kernels-{key}.lock", "a+") as f:
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


def _compile() -> ModuleType:
    from torch.utils.cpp_extension import load

    key = build_key()
    build = cache_root() / f"kernels-{key}"
    with _build_lock(key):
        build.mkdir(parents=True, exist_ok=True)
        return load(name=f"rnnlab_kernels_{key}", sources=[str(SOURCE)], extra_cflags=CFLAGS,
                    build_directory=str(build), verbose=False)


def build_once(state: dict[str, object], lock: threading.Lock, compile_fn: Callable[[], ModuleType],
               what: str) -> ModuleType | None:
    """The extension ``compile_fn`` builds, built on the first call in this process and kept in ``state``
    (``{"module", "failed"}``); after a failed build ``None`` from then on and one warning naming ``what``."""
    if state["module"] is not None or state["failed"]:
        return state["module"]  # type: ignore[return-value]
    import torch

    if torch.compiler.is_compiling():
        # a build cannot be traced: a graph compiled before any eager call built the kernels uses the reference
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


def load_kernels() -> ModuleType | None:
    """The compiled extension, building it on first call; ``None`` if it cannot be built (warned once)."""
    return build_once(_state, _lock, lambda: _compile(), "the fused C++ kernels")


def kernels_failed() -> bool:
    """True once a build was attempted and failed in this process."""
    return bool(_state["failed"])


def reset() -> None:
    """Forget the build outcome (tests use it to simulate a failed build, then restore)."""
    _state["module"] = None
    _state["failed"] = False
