"""Fused C++ CPU kernels with hand-written BPTT, built on first use and registered as torch.ops.rnnlab.* (ops.py)."""

from rnnlab.backends.cpp.backend import CppBackend, kernel_for
from rnnlab.backends.cpp.loader import load_kernels

__all__ = ["CppBackend", "kernel_for", "load_kernels"]
