"""Fused C++ CPU recurrences: the generic driver (driver.h), built on first use, registered as torch.ops.rnnlab.*."""

from rnnlab.backends.cpp.backend import CppBackend, kernel_for
from rnnlab.backends.cpp.generic_loader import load_generic

__all__ = ["CppBackend", "kernel_for", "load_generic"]
