"""Shared pytest fixtures: deterministic seeding and random states that are valid for every cell."""

from __future__ import annotations

import pytest
import torch

from rnnlab.cells.base import RecurrentCell


def pytest_configure(config: pytest.Config) -> None:
    # The tests run tiny tensors: with 2 intra-op threads every small matmul pays a thread hand-off that
    # costs milliseconds on a busy 2-core machine (measured 11.7 ms vs 7.7 µs per addmm). One thread is
    # faster for these sizes and makes timings independent of the load.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    # every test starts from the same random stream, independent of test order
    torch.manual_seed(0)


def random_state_like(cell: RecurrentCell, *lead: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """A random state for ``cell`` with leading dims ``lead`` (e.g. (B,) or (L*D, B)).

    Step counters (the component named ``n``, e.g. the Clockwork RNN's clock) get small integers; every other
    component gets N(0, 0.5²) values of both signs.
    """
    parts = []
    for name, size in zip(cell.state_names, cell.state_sizes()):
        if name == "n":
            parts.append(torch.randint(0, 9, (*lead, size)).to(dtype))
        else:
            parts.append(0.5 * torch.randn(*lead, size, dtype=dtype))
    return tuple(parts)


@pytest.fixture
def random_state():
    """The :func:`random_state_like` helper, as a fixture."""
    return random_state_like


@pytest.fixture
def single_thread():
    """Run a test on one intra-op thread (restored afterwards).

    The tests here use tensors of a few dozen elements; some CPU kernels (``F.layer_norm``) still split even
    two rows across OpenMP threads, which costs milliseconds per call when the 2-core machine is busy.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
