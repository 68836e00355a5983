"""The driver's buffers (backends/cpp/buffers.h): huge-page advice, unchanged numbers, every element written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnlab import Recurrent, cell_names
from rnnlab.backends.cpp.generic_loader import load_generic
from test_generic_driver import _run

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


#: every registered cell, plus the options that give the driver other buffers (the output projection's dp_all,
#: FGR's part product, peepholes beside a projection)
WRITE_CASES = [(name, {}) for name in cell_names()] + [
    ("lstm", {"proj_size": 2}), ("lstm", {"proj_size": 3, "peepholes": True, "bias": False}),
    ("lstm", {"full_gate_recurrence": True, "coupled": True})]


@pytest.fixture
def nan_filled_empty():
    """torch's deterministic mode fills every at::empty with NaN (the driver's C++ allocations included)."""
    import torch.utils.deterministic as deterministic

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        deterministic.fill_uninitialized_memory = before[2]


@pytest.fixture
def driver_calls(monkeypatch) -> list[tuple[str, list[torch.Tensor]]]:
    """Every call of an extension entry ``<rule>_forward`` / ``<rule>_infer`` from the backend (autograd's path
    and the direct one), as (entry, what it returned)."""
    from rnnlab.backends.cpp import generic_ops, generic_registry

    calls: list[tuple[str, list[torch.Tensor]]] = []
    real_ext = generic_ops._ext

    class Watched:  # the extension, noting each forward / inference call
        def __getattr__(self, attr: str):
            fn = getattr(real_ext(), attr)
            if not attr.endswith(("_forward", "_infer")):
                return fn

            def call(*args):
                result = fn(*args)
                calls.append((attr, list(result)))
                return result
            return call

    monkeypatch.setattr(generic_ops, "_ext", Watched)
    monkeypatch.setattr(generic_registry, "load_generic", Watched)
    return calls


@needs_kernels
@pytest.mark.usefixtures("nan_filled_empty", "single_thread")
@pytest.mark.parametrize("name,kw", WRITE_CASES, ids=[f"{n}-{'-'.join(k) or 'plain'}" for n, k in WRITE_CASES])
def test_every_buffer_element_is_written(name: str, kw: dict, random_state, driver_calls) -> None:
    """The driver allocates its outputs, saved blocks and gradient buffers without a zero fill: each row is
    written, a padded one with zeros.  With every allocation NaN-filled first, two bidirectional layers with
    lengths still give the reference's outputs, states and every gradient (float64), padded outputs are 0, and
    no saved block the driver returns (an output of the registered op) holds a NaN."""
    torch.manual_seed(0)
    mod = Recurrent(name, 3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)
    assert torch.empty(8).isnan().all()  # the fixture took effect
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    hx = random_state(mod.cell, 4, 3)
    if "n" in mod.cell.state_names and name == "slstm":  # sLSTM's normaliser divides: keep it positive
        k = mod.cell.state_names.index("n")
        hx = tuple(h.abs() + 0.5 if i == k else h for i, h in enumerate(hx))
    got, got_grads = _run(mod, "cpp", x, lengths, hx)
    want, want_grads = _run(mod, "reference", x, lengths, hx)
    for a, b in zip(got + got_grads, want + want_grads):
        if a is None or b is None:  # a parameter no path reaches (depth-gated's first-layer lower weights)
            assert a is None and b is None
            continue
        assert not a.isnan().any()
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert bool((got[0][2:, 1] == 0).all()), "padded steps give 0"
    assert driver_calls, "the driver ran"
    for _, returned in driver_calls:
        for t in returned:
            assert not t.isnan().any()


@needs_kernels
@pytest.mark.usefixtures("nan_filled_empty", "single_thread")
@pytest.mark.parametrize("zoneout", [0.0, 0.3], ids=["plain", "zoneout"])
@pytest.mark.parametrize("name,kw", WRITE_CASES, ids=[f"{n}-{'-'.join(k) or 'plain'}" for n, k in WRITE_CASES])
def test_inference_keeps_two_state_rows_and_matches(name: str, kw: dict, zoneout: float, driver_calls) -> None:
    """Without autograd the driver runs its inference entry (``<rule>_infer``: two state rows and one step's
    saved and fresh rows, reused): the reference's outputs and final states, NaN-filled allocations included,
    with lengths, two bidirectional layers and eval-mode zoneout (which blends every step)."""
    mod = Recurrent(name, 3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, zoneout=zoneout, **kw).eval()
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    with torch.no_grad():
        mod.backend = "cpp"
        got_out, got_h = mod(x, lengths=lengths)
        mod.backend = "reference"
        want_out, want_h = mod(x, lengths=lengths)
    called = [entry for entry, _ in driver_calls]
    assert called and all(c.endswith("_infer") for c in called) or name == "depth_gated", called
    got_h = got_h if isinstance(got_h, tuple) else (got_h,)
    want_h = want_h if isinstance(want_h, tuple) else (want_h,)
    for a, b in zip((got_out, *got_h), (want_out, *want_h)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
