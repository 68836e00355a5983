"""minGRU and minLSTM (Feng et al. 2024): gates from x_t only, so the whole sequence is one parallel scan."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext


def g(x: Tensor) -> Tensor:
    """The paper's positive candidate map: x + 0.5 for x >= 0, σ(x) otherwise (continuous at 0)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """log g(x), computed without forming g(x) for negative x (log σ(x) = -softplus(-x))."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def log_linear_scan(log_a: Tensor, log_b: Tensor, h0: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    r"""All steps of :math:`h_t = a_t ⊙ h_{t-1} + b_t` with a, b > 0 given in log space, any-sign h_0.

    ``log_a``, ``log_b`` are (T, B, H), ``h0`` (B, H), ``mask`` (T, B, 1) bool or ``None``.  Padded steps get
    a = 1, b = 0 so they keep the state.  By linearity :math:`h_t = A_t h_0 + A_t \sum_{s \le t} b_s / A_s`
    with :math:`A_t = \prod_{s \le t} a_s`; the sum is a ``logcumsumexp`` (Feng et al. 2024, appendix; Heinsen
    2023) and the h_0 term is added outside the log so h_0 may be negative or zero.
    Returns the outputs (T, B, H) with padded steps zeroed and the final state (B, H).
    """
    if mask is not None:
        log_a = log_a.masked_fill(~mask, 0.0)
        log_b = log_b.masked_fill(~mask, float("-inf"))
    log_A = torch.cumsum(log_a, dim=0)  # (T, B, H)
    h = torch.exp(log_A) * h0 + torch.exp(log_A + torch.logcumsumexp(log_b - log_A, dim=0))
    final = h[-1]  # padded steps carried the state to the end
    if mask is not None:
        h = h.masked_fill(~mask, 0.0)
    return h, final


class _SequentialScan(torch.autograd.Function):
    """h_t = a_t ⊙ h_{t-1} + b_t as one autograd node: a T-step elementwise loop forwards and backwards.

    One node instead of T keeps autograd from materialising a (T, B, H) gradient per step; the backward is
    the adjoint recurrence dh_t = g_t + a_{t+1} ⊙ dh_{t+1}, da_t = dh_t ⊙ h_{t-1}, db_t = dh_t.  That
    recurrence is the same scan run backwards in time, so when the gradient itself must be differentiable
    (``create_graph=True``) the backward is written with this Function and differentiable ops.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        out = torch.empty_like(b)  # (T, B, H)
        h = h0
        for t in range(a.shape[0]):
            h = torch.addcmul(b[t], a[t], h, out=out[t])
        ctx.save_for_backward(a, out, h0)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, out, h0 = ctx.saved_tensors
        T = a.shape[0]
        if torch.is_grad_enabled():  # create_graph: the adjoint scan, reversed in time, recorded by autograd
            a_next = torch.cat([a[1:], torch.zeros_like(a[:1])])  # a_{t+1}, 0 after the last step
            dh = _SequentialScan.apply(a_next.flip(0), grad.flip(0), torch.zeros_like(h0)).flip(0)
        else:
            dh = torch.empty_like(grad)  # dh[t] = dL/dh_t through every path, = dL/db_t
            dh[T - 1] = grad[T - 1]
            for t in range(T - 2, -1, -1):
                torch.addcmul(grad[t], a[t + 1], dh[t + 1], out=dh[t])
        prev = torch.cat([h0.unsqueeze(0), out[:-1]])  # h_{t-1}
        return dh * prev, dh, a[0] * dh[0]


def sequential_linear_scan(a: Tensor, b: Tensor, h0: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The same recurrence as :func:`log_linear_scan` with a, b given directly, evaluated step by step.

    Exact for any a, b, h_0 and the fastest form on a CPU (O(T·B·H) multiply-adds, no exp/log); twice
    differentiable (the backward is the same scan reversed).  Returns the outputs (T, B, H) with padded steps zeroed and the final state (B, H).
    """
    if mask is not None:
        a = a.masked_fill(~mask, 1.0)
        b = b.masked_fill(~mask, 0.0)
    h = _SequentialScan.apply(a.contiguous(), b.contiguous(), h0.contiguous())
    final = h[-1]
    if mask is not None:
        h = h.masked_fill(~mask, 0.0)
    return h, final


_SCANS = ("auto", "log", "sequential")


def _check_scan(scan: object) -> str:
    if scan not in _SCANS:
        raise ValueError(f"scan: expected one of {_SCANS}, got {scan!r}")
    return scan  # type: ignore[return-value]


def _use_log_scan(scan: str, x: Tensor) -> bool:
    # the log-space scan is parallel over T (GPU); on a CPU the elementwise loop does less work and is exact
    return scan == "log" or (scan == "auto" and x.device.type != "cpu")


class _MinimalCell(RecurrentCell):
    """Shared definition of minGRU / minLSTM: ``num_blocks`` input projections, no recurrent weights."""

    num_blocks: ClassVar[int]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, scan: str = "auto",
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.scan = _check_scan(scan)
        self._register_params()

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.scan == "auto" else f", scan={self.scan!r}")

    def driver_supported(self) -> bool:
        """The driver's rule is the element-wise loop; the log-space scan rounds differently."""
        return self.scan != "log"

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs: the projection xp (T, B, blocks*H) as is (the rule forms the gates), nothing
        recurrent, no element-wise vectors, no heads or options."""
        return self.project_input(x, p), x.new_empty(0), None, 0, 0

    def param_specs(self) -> list[ParamSpec]:
        return self.linear_specs(self.num_blocks * self.hidden_size)


class MinGRUCell(_MinimalCell):
    r"""minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?").

    .. math::
        z_t &= σ(W_{iz} x_t + b_{iz}) \\
        \tilde h_t &= g(W_{ih} x_t + b_{ih}), \quad g(v) = v + 0.5\ (v \ge 0),\ σ(v)\ (v < 0) \\
        h_t &= (1 - z_t) ⊙ h_{t-1} + z_t ⊙ \tilde h_t

    Parameters: ``weight_ih`` (2H, I) and ``bias_ih`` (2H,) with blocks z, h; there are no recurrent weights,
    so ``recurrent_dropout`` has nothing to act on and is ignored.  :meth:`sequence` computes the whole
    sequence after one input GEMM: ``scan="log"`` is the paper's log-space parallel scan
    (:func:`log_linear_scan`), ``scan="sequential"`` a single-autograd-node elementwise loop
    (:func:`sequential_linear_scan`, exact, not twice differentiable), ``scan="auto"`` (default) the log scan
    on GPUs and the loop on CPUs, where it is several times faster than ``logcumsumexp``.  :meth:`step` is
    the same recurrence one step at a time (used with zoneout, or when states are recorded per step).

    Deviations: the paper's log-space version (with g keeping :math:`\tilde h_t > 0`) is used in both paths;
    an arbitrary initial state (any sign) is allowed: the scan adds its decayed contribution
    :math:`\prod_s (1 - z_s) ⊙ h_0` outside the log instead of requiring :math:`h_0 > 0`.

    Example:
        >>> cell = MinGRUCell(3, 4)
        >>> h = cell(torch.randn(2, 3), torch.zeros(2, 4))
        >>> bool((h > 0).all())  # h_0 = 0 and h̃ > 0
        True
    """

    kind = "mingru"
    num_blocks = 2
    #: the generic C++ driver's rule (backends/cpp/cells/minimal.h)
    driver_kernel: ClassVar[str] = "mingru"

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits, recomputed from xp (the rule saves nothing): z and h_tilde."""
        k_z, k_h = xp.chunk(2, dim=-1)
        return {"z": torch.sigmoid(k_z), "h_tilde": g(k_h)}

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        k_z, k_h = xp_t.chunk(2, dim=-1)
        z = torch.sigmoid(k_z)
        h_tilde = g(k_h)
        if ctx.record is not None:
            ctx.emit("z", z)
            ctx.emit("h_tilde", h_tilde)
        return ((1.0 - z) * state[0] + z * h_tilde,)

    def sequence(self, xp: Tensor, state: State, p: Params, mask: Tensor | None,
                 record: dict[str, list[Tensor]] | None = None) -> tuple[Tensor, State]:
        k_z, k_h = xp.chunk(2, dim=-1)  # each (T, B, H)
        if _use_log_scan(self.scan, xp):
            log_a = -F.softplus(k_z)  # log(1 - z)
            log_b = -F.softplus(-k_z) + log_g(k_h)  # log(z ⊙ h̃)
            out, final = log_linear_scan(log_a, log_b, state[0], mask)
        else:
            z = torch.sigmoid(k_z)
            out, final = sequential_linear_scan(1.0 - z, z * g(k_h), state[0], mask)
        if record is not None:
            record["z"] = torch.sigmoid(k_z)  # type: ignore[assignment]  # whole (T, B, H) tensors
            record["h_tilde"] = g(k_h)  # type: ignore[assignment]
        return out, (final,)


class MinLSTMCell(_MinimalCell):
    r"""minLSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs All We Needed?").

    .. math::
        f_t &= σ(W_{if} x_t + b_{if}), \quad i_t = σ(W_{ii} x_t + b_{ii}) \\
        f'_t &= f_t / (f_t + i_t), \quad i'_t = i_t / (f_t + i_t) \\
        \tilde h_t &= g(W_{ih} x_t + b_{ih}) \\
        h_t &= f'_t ⊙ h_{t-1} + i'_t ⊙ \tilde h_t

    (the paper's length-independent normalisation of f and i; g as in :class:`MinGRUCell`).  Parameters:
    ``weight_ih`` (3H, I) and ``bias_ih`` (3H,) with blocks f, i, h; no recurrent weights (so no recurrent
    dropout).  :meth:`sequence`: the log-space scan uses
    :math:`\log f' = -\mathrm{softplus}(\mathrm{softplus}(-k_f) - \mathrm{softplus}(-k_i))`; ``scan``,
    deviations and the handling of an arbitrary h_0 as in :class:`MinGRUCell`.

    Example:
        >>> h = MinLSTMCell(3, 4)(torch.randn(2, 3))
        >>> tuple(h.shape)
        (2, 4)
    """

    kind = "minlstm"
    num_blocks = 3
    #: the generic C++ driver's rule (backends/cpp/cells/minimal.h)
    driver_kernel: ClassVar[str] = "minlstm"

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits, recomputed from xp (the rule saves nothing): f, i normalised, h_tilde."""
        k_f, k_i, k_h = xp.chunk(3, dim=-1)
        f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
        return {"f": f / (f + i), "i": i / (f + i), "h_tilde": g(k_h)}

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        k_f, k_i, k_h = xp_t.chunk(3, dim=-1)
        f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
        f_n, i_n = f / (f + i), i / (f + i)
        h_tilde = g(k_h)
        if ctx.record is not None:
            ctx.emit("f", f_n)
            ctx.emit("i", i_n)
            ctx.emit("h_tilde", h_tilde)
        return (f_n * state[0] + i_n * h_tilde,)

    def sequence(self, xp: Tensor, state: State, p: Params, mask: Tensor | None,
                 record: dict[str, list[Tensor]] | None = None) -> tuple[Tensor, State]:
        k_f, k_i, k_h = xp.chunk(3, dim=-1)  # each (T, B, H)
        diff = F.softplus(-k_f) - F.softplus(-k_i)  # log(i / f)
        log_f = -F.softplus(diff)  # log f'
        log_i = -F.softplus(-diff)  # log i'
        if _use_log_scan(self.scan, xp):
            out, final = log_linear_scan(log_f, log_i + log_g(k_h), state[0], mask)
        else:
            out, final = sequential_linear_scan(torch.exp(log_f), torch.exp(log_i) * g(k_h), state[0], mask)
        if record is not None:
            record["f"] = torch.exp(log_f)  # type: ignore[assignment]  # whole (T, B, H) tensors
            record["i"] = torch.exp(log_i)  # type: ignore[assignment]
            record["h_tilde"] = g(k_h)  # type: ignore[assignment]
        return out, (final,)
