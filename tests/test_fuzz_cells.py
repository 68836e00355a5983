"""Hypothesis fuzzing: the default backend ("auto") against the reference over cells, options, shapes and values."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

import rnnlab

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e .[test])")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CELLS = rnnlab.cell_names()
# bounded in `make test`; `-m slow` explores ten times more
FAST = settings(max_examples=int(os.environ.get("RNNLAB_FUZZ_EXAMPLES", "40")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow], database=None)
SLOW = settings(FAST, max_examples=400, derandomize=False)


@dataclass(frozen=True)
class Case:
    """One drawn configuration; printed by hypothesis when a comparison fails."""

    cell: str
    T: int
    B: int
    I: int
    H: int
    num_layers: int
    bidirectional: bool
    batch_first: bool
    dtype: torch.dtype
    lengths: tuple[int, ...] | None
    with_hx: bool
    recurrent_dropout: float
    zoneout: float
    magnitude: str  # "normal", "x600" or "inf" (some entries +inf / -inf)
    seed: int


@st.composite
def cases(draw, magnitudes: tuple[str, ...]) -> Case:
    T, B = draw(st.integers(1, 6)), draw(st.integers(0, 4))
    lengths = None
    if B > 0 and draw(st.booleans()):
        lengths = tuple(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    return Case(cell=draw(st.sampled_from(CELLS)), T=T, B=B, I=draw(st.integers(1, 6)), H=draw(st.integers(1, 6)),
                num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
                batch_first=draw(st.booleans()), dtype=draw(st.sampled_from([torch.float32, torch.float64])),
                lengths=lengths, with_hx=draw(st.booleans()),
                # zoneout in a quarter of the draws (fused on the generic driver, the reference elsewhere)
                recurrent_dropout=draw(st.sampled_from([0.0, 0.3])),
                zoneout=draw(st.sampled_from([0.0, 0.0, 0.0, 0.25])),
                magnitude=draw(st.sampled_from(magnitudes)), seed=draw(st.integers(0, 2**16)))


def _inputs(case: Case, module: rnnlab.Recurrent) -> tuple[torch.Tensor, object]:
    g = torch.Generator().manual_seed(case.seed)
    shape = (case.B, case.T, case.I) if case.batch_first else (case.T, case.B, case.I)
    x = torch.randn(shape, generator=g, dtype=case.dtype)
    if case.magnitude == "x600":
        x = x * 600
    elif case.magnitude == "inf":
        pick = torch.rand(shape, generator=g) < 0.2
        x = torch.where(pick, torch.sign(x) * float("inf"), x)
    hx = None
    if case.with_hx:
        parts = tuple(torch.randn(s, generator=g, dtype=case.dtype) for s in module.state_shapes(case.B))
        hx = parts[0] if len(parts) == 1 else parts
    return x, hx


def _flat(out) -> list[torch.Tensor]:
    o, st_ = out
    return [o, *(st_ if isinstance(st_, tuple) else (st_,))]


def compare(case: Case, *, gradients: bool) -> None:
    """Same outputs and final states (NaN where the reference has NaN) and, if asked, the same gradients."""
    torch.manual_seed(case.seed)
    kw = dict(num_layers=case.num_layers, bidirectional=case.bidirectional, batch_first=case.batch_first,
              recurrent_dropout=case.recurrent_dropout, zoneout=case.zoneout, dtype=case.dtype)
    ref = rnnlab.Recurrent(case.cell, case.I, case.H, backend="reference", **kw).eval()
    auto = rnnlab.Recurrent(case.cell, case.I, case.H, backend="auto", **kw).eval()
    auto.load_state_dict(ref.state_dict())
    x, hx = _inputs(case, ref)
    tol = dict(rtol=1e-4, atol=1e-5) if case.dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)

    def run(m):
        xi = x.clone().requires_grad_(gradients)
        hi = None if hx is None else (hx.clone().requires_grad_(gradients) if isinstance(hx, torch.Tensor)
                                      else tuple(h.clone().requires_grad_(gradients) for h in hx))
        out = _flat(m(xi, hi, lengths=None if case.lengths is None else list(case.lengths)))
        return out, xi, hi

    out_ref, x_ref, h_ref = run(ref)
    out_auto, x_auto, h_auto = run(auto)
    for a, b in zip(out_auto, out_ref):
        torch.testing.assert_close(a, b, equal_nan=True, **tol)
    if not gradients:
        return
    g = torch.Generator().manual_seed(case.seed + 1)
    # state parts that depend on nothing differentiable (a clock's step counter; an empty batch's state) carry
    # no graph in the reference; the fused kernel may attach one (its gradient is zero): compare the rest
    keep = [k for k, t in enumerate(out_ref) if t.requires_grad]
    out_ref, out_auto = [out_ref[k] for k in keep], [out_auto[k] for k in keep]
    if not out_ref:
        return
    weights = [torch.randn(t.shape, generator=g, dtype=case.dtype) for t in out_ref]
    leaves_ref = [x_ref, *(() if h_ref is None else (h_ref,) if isinstance(h_ref, torch.Tensor) else h_ref),
                  *ref.parameters()]
    leaves_auto = [x_auto, *(() if h_auto is None else (h_auto,) if isinstance(h_auto, torch.Tensor) else h_auto),
                   *auto.parameters()]
    grads_ref = torch.autograd.grad([(t * w).sum() for t, w in zip(out_ref, weights)], leaves_ref,
                                    allow_unused=True)
    grads_auto = torch.autograd.grad([(t * w).sum() for t, w in zip(out_auto, weights)], leaves_auto,
                                     allow_unused=True)
    for a, b in zip(grads_auto, grads_ref):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, equal_nan=True, **tol)


@FAST
@given(case=cases(("normal",)))
def test_auto_backend_matches_reference(case):
    compare(case, gradients=True)


@FAST
@given(case=cases(("x600", "inf")))
def test_auto_backend_matches_reference_at_extreme_inputs(case):
    # x600 saturates every gate; +-inf makes NaN: the fused kernels must give the reference's values and NaNs
    compare(case, gradients=case.magnitude == "x600")


@pytest.mark.slow
@SLOW
@given(case=cases(("normal", "x600", "inf")))
def test_auto_backend_matches_reference_many(case):
    compare(case, gradients=case.magnitude != "inf")
