"""Backend registry: each (cell, device, dtype, options) goes to the first backend that supports it."""

from __future__ import annotations

import logging

from rnnlab.backends.base import Backend, LayerCall, LayerResult
from rnnlab.backends.reference import ReferenceBackend

__all__ = ["Backend", "LayerCall", "LayerResult", "register_backend", "available_backends", "get_backend",
           "select_backend", "run_layer"]

log = logging.getLogger("rnnlab.backends")

# Highest priority first; the reference backend is last and supports everything (it is the definition).
_BACKENDS: list[Backend] = [ReferenceBackend()]


def register_backend(backend: Backend, *, first: bool = True) -> None:
    """Add a backend (before the reference one). Re-registering a name replaces it."""
    names = [b.name for b in _BACKENDS]
    if backend.name in names:
        _BACKENDS[names.index(backend.name)] = backend
        return
    _BACKENDS.insert(0 if first else len(_BACKENDS) - 1, backend)


def available_backends() -> list[str]:
    return [b.name for b in _BACKENDS]


def get_backend(name: str) -> Backend:
    for b in _BACKENDS:
        if b.name == name:
            return b
    raise ValueError(f"backend: expected one of {available_backends()} or 'auto', got {name!r}")


def select_backend(call: LayerCall, name: str = "auto") -> Backend:
    """``name='auto'``: the first registered backend whose ``supports(call)`` is true."""
    if call.probe is not None:  # per-step graph nodes exist only in the reference's step loop
        name = "reference"
    if name != "auto":
        backend = get_backend(name)
        if not backend.supports(call):
            raise ValueError(f"backend: {name!r} does not support cell {call.cell.kind!r} on "
                             f"{call.x.device.type}/{call.x.dtype} with these options; use backend='auto'")
        return backend
    for backend in _BACKENDS:
        if backend.supports(call):
            return backend
    raise AssertionError("the reference backend supports every call")  # pragma: no cover


def run_layer(call: LayerCall, backend: str = "auto") -> LayerResult:
    return select_backend(call, backend).run(call)


def _register_builtin() -> None:
    # The fused C++ kernels: importing is cheap, they compile on first use and refuse calls if that fails.
    from rnnlab.backends.cpp import CppBackend

    register_backend(CppBackend())
    # The GPU driver (Triton), just before the reference: on CPU tensors the C++ kernels come first; it takes
    # CUDA tensors (and CPU tensors under TRITON_INTERPRET=1, for tests without a GPU).
    from rnnlab.backends.gpu import TritonBackend, triton_available

    if triton_available():
        register_backend(TritonBackend(), first=False)


_register_builtin()
