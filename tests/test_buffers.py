"""The driver's large buffers on transparent huge pages (backends/cpp/buffers.h): advised, and numbers unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnlab import Recurrent
from rnnlab.backends.cpp.generic_loader import load_generic

needs_kernels = pytest.mark.skipif(load_generic() is None, reason="the C++ driver extension did not build")

HUGE_PAGE = 2 << 20
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _vm_flags(address: int) -> list[str] | None:
    """The VmFlags of the mapping of this process that holds ``address`` (None: no smaps or no such mapping)."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split(" ", 1)[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return None


def _driver_forward(T: int, B: int, H: int):
    """One GRU layer through the extension directly: (out, states, saved) as the driver allocated them."""
    ext = load_generic()
    torch.manual_seed(0)
    xp = torch.randn(T, B, 3 * H)
    w = torch.randn(3 * H, H) * H ** -0.5
    e = torch.randn(1, H)  # b_hn, the GRU rule's element-wise vector (its option bit BHN = 1: cells/gru.h)
    empty = torch.empty(0)
    out, states, saved, _fresh = ext.gru_forward(xp, torch.zeros(B, H), w, e, empty, 0, 1, empty, empty)
    return out, states, saved


@needs_kernels
def test_switch_round_trips() -> None:
    ext = load_generic()
    assert ext.huge_pages() is True  # on by default
    try:
        ext.set_huge_pages(False)
        assert ext.huge_pages() is False
    finally:
        ext.set_huge_pages(True)
    assert ext.huge_pages() is True


@needs_kernels
@pytest.mark.skipif(not THP_MODE.exists() or "[never]" in THP_MODE.read_text(),
                    reason="transparent huge pages are off (or absent) on this kernel: the advice is a no-op")
def test_large_buffers_are_advised() -> None:
    """Every buffer of >= 16 MiB the forward returns lies, past its first 2 MiB boundary, in a mapping the kernel
    marks 'hg' (MADV_HUGEPAGE).  (With the switch off they do not: checked by hand, not here, since freed
    advised memory may come back from the heap.)"""
    out, states, saved = _driver_forward(T=128, B=128, H=256)  # out 16 MiB, states 16.1 MiB, saved 64 MiB
    for name, t in (("out", out), ("states", states), ("saved", saved)):
        assert t.nbytes >= 16 << 20, name
        first_aligned = (t.data_ptr() + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
        flags = _vm_flags(first_aligned)
        if flags is None:
            pytest.skip("/proc/self/smaps has no VmFlags here")
        assert "hg" in flags, (name, flags)


@needs_kernels
def test_numbers_do_not_depend_on_the_advice() -> None:
    """Huge pages change where memory comes from, never what is computed: training results bit for bit, with
    lengths (padded rows: zeroed outputs and saved blocks) and a large enough call to be advised."""
    ext = load_generic()
    mod = Recurrent("gru", 256, 256)
    x = torch.randn(64, 128, 256)  # saved (64, 128, 4*256): 32 MiB, dxp 24 MiB
    lengths = torch.tensor([64, 17, 1, 40] * 32)

    def run() -> list[torch.Tensor]:
        mod.zero_grad()
        xs = x.clone().requires_grad_()
        out, h = mod(xs, lengths=lengths)
        (out.square().sum() + h.sum()).backward()
        return [out, h, xs.grad, *(p.grad for p in mod.parameters())]

    try:
        ext.set_huge_pages(False)
        off = run()
        ext.set_huge_pages(True)
        on = run()
    finally:
        ext.set_huge_pages(True)
    for a, b in zip(on, off):
        assert torch.equal(a, b)
