"""Where and in what precision training runs: ``--device auto|cpu|cuda`` and ``--precision fp32|bf16|fp16``.

- ``auto`` picks CUDA when a GPU is visible, else the CPU; ``cuda`` on a machine without one is a clear error.
- ``bf16`` / ``fp16`` run the forward pass under ``torch.autocast`` (weights stay fp32; rnnlab's kernels
  accumulate states in fp32); ``fp16`` also scales the loss (``torch.amp.GradScaler``) so small gradients do
  not underflow, and skips a step whose gradients overflowed, as the scaler does.
- Data-parallel runs use NCCL between GPUs and gloo on the CPU.

Example:
    >>> policy = Precision("bf16", torch.device("cpu"))
    >>> with policy.autocast():
    ...     y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    >>> y.dtype
    torch.bfloat16
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceUnavailable(ValueError):
    """The requested device or precision cannot run on this machine (the message says why)."""


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; ``"cuda"`` -> this process's GPU (``local_rank`` under torchrun)."""
    if name not in DEVICES:
        raise DeviceUnavailable(f"device: expected one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable("device: 'cuda' was asked for but no CUDA GPU is visible to torch "
                                f"(torch {torch.__version__}); use --device cpu or auto")
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def dist_backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


class Precision:
    """The autocast context and loss scaler of one precision on one device."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in PRECISIONS:
            raise DeviceUnavailable(f"precision: expected one of {', '.join(PRECISIONS)}, got {name!r}")
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeviceUnavailable("precision: this GPU has no bf16 support; use fp16 or fp32")
        self.name = name
        self.device = device
        self.dtype = _DTYPES.get(name)
        # fp16's narrow exponent range needs loss scaling; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def backward(self, loss: Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before clipping: gradients back in their true scale."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the step; False when fp16 gradients overflowed and the scaler skipped it."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict[str, float]:
        """The loss scaler's numbers (scale, growth tracker, factors); empty without a scaler."""
        return {} if self.scaler is None else {k: float(v) for k, v in self.scaler.state_dict().items()}

    def load_state_dict(self, state: dict[str, float]) -> None:
        if self.scaler is not None and state:
            ints = ("growth_interval", "_growth_tracker")
            self.scaler.load_state_dict({k: int(v) if k in ints else float(v) for k, v in state.items()})
