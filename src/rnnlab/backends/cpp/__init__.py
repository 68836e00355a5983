"""Fused C++ CPU kernels with hand-written BPTT (LSTM family, GRU, Elman, MUT1-3, LN cells), built on first use."""

from rnnlab.backends.cpp.backend import CppBackend, kernel_for
from rnnlab.backends.cpp.loader import load_kernels

__all__ = ["CppBackend", "kernel_for", "load_kernels"]
