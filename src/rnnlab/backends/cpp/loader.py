"""Build-on-first-use of the C++ kernels into a per-(source, torch, flags, CPU) cache directory, with fallback.

The extension is compiled with ``torch.utils.cpp_extension.load`` the first time a kernel is needed (about
35 s) into ``$RNNLAB_CACHE/kernels-<hash>`` (default ``~/.cache/rnnlab``) and loaded from there afterwards.
If compiling fails (no compiler, no headers, ...) one warning goes to the ``rnnlab.backends`` logger and
:func:`load_kernels` returns ``None`` from then on, so callers fall back to the reference backend.

Example:
    >>> from rnnlab.backends.cpp.loader import load_kernels
    >>> ext = load_kernels()  # doctest: +SKIP
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


def build_key() -> str:
    """Hash of everything the binary depends on: source, torch version, Python ABI, flags and CPU."""
    import torch

    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), sys.version.encode(), " ".join(CFLAGS).encode(),
                 platform.machine().encode(), _cpu_model().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("RNNLAB_CACHE") or os.path.join(Path.home(), ".cache", "rnnlab")
    return Path(root) / f"kernels-{build_key()}"


def _compile() -> ModuleType:
    from torch.utils.cpp_extension import load

    key = build_key()
    build = cache_dir()
    build.mkdir(parents=True, exist_ok=True)
    return load(name=f"rnnlab_kernels_{key}", sources=[str(SOURCE)], extra_cflags=CFLAGS,
                build_directory=str(build), verbose=False)


def load_kernels() -> ModuleType | None:
    """The compiled extension, building it on first call; ``None`` if it cannot be built (warned once)."""
    if _state["module"] is not None or _state["failed"]:
        return _state["module"]  # type: ignore[return-value]
    with _lock:
        if _state["module"] is None and not _state["failed"]:
            try:
                _state["module"] = _compile()
            except Exception as e:  # any build problem: compiler missing, headers, linker, ...
                _state["failed"] = True
                first = str(e).strip().splitlines()
                log.warning("rnnlab: could not build the fused C++ kernels (%s: %s); using the reference "
                            "backend instead", type(e).__name__, first[-1] if first else "")
    return _state["module"]  # type: ignore[return-value]


def kernels_failed() -> bool:
    """True once a build was attempted and failed in this process."""
    return bool(_state["failed"])


def reset() -> None:
    """Forget the build outcome (tests use it to simulate a failed build, then restore)."""
    _state["module"] = None
    _state["failed"] = False
