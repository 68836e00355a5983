"""The one GPU time loop: recurrent GEMM + a cell's fused element-wise Triton kernel per step, and its BPTT.

Each cell contributes a :class:`CellRule` (its own small file: gate layout, which activations it saves, a
forward and a backward element-wise kernel).  This driver owns everything else, for every cell alike:

- the input projection of all steps as one GEMM (``xp = x W_ihᵀ + b``) and its gradients (``dx``, ``dW_ih``);
- the per-step recurrent product ``hh_t = (h_{t-1} ⊙ m) W_hhᵀ`` (``m``: the variational recurrent dropout
  mask, one per sequence) and ``dh_{t-1} += (dhh_t W_hh) ⊙ m`` backwards;
- lengths (a padded row keeps its state and outputs zero), zoneout (``keep`` masks, fused into the cell's
  kernel through :func:`~rnnlab.backends.gpu.common.blend`), recording (the saved activations);
- the weight gradient ``dW_hh = Σ_t dhh_tᵀ (h_{t-1} ⊙ m)`` as ONE GEMM over all T·B rows;
- second derivatives: when the backward itself is differentiated (``create_graph=True``) the gradient is
  recomputed through the cell's differentiable PyTorch step with the very same masks, never silently wrong.

Reversal is the caller's (the backend reverses within lengths), so valid steps of every row are a prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from rnnlab.backends.step_loop import differentiable_loop
from rnnlab.cells.base import RecurrentCell

#: element-wise work per Triton program (a power of two)
BLOCK = 256


@dataclass
class Prepared:
    """What a rule derives from the cell's parameters for the driver: biases and per-unit constants."""

    b_x: Tensor | None        # bias added to the input projection (G*H,)
    b_hh: Tensor | None       # bias added to the recurrent product (G*H,), when it cannot be folded into b_x
    consts: Tensor            # (C, H) per-unit constants (peephole weights, ...), C may be 0


class CellRule(Protocol):
    """A cell's element-wise step for the driver.  ``saved`` holds ``n_saved`` blocks of H per step."""

    n_gates: int
    n_saved: int
    record_names: tuple[str, ...]   # the saved blocks exposed by ``recording()``, in block order
    hh_is_xp: bool                  # d(recurrent product) == d(input projection) (gates add them plainly)

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared: ...

    def param_grads(self, p: dict[str, Tensor], d_b_x: Tensor | None, d_b_hh: Tensor | None,
                    d_consts: Tensor | None) -> dict[str, Tensor]: ...

    def forward(self, xp: Tensor, hh: Tensor, olds: list[Tensor], news: list[Tensor], saved: Tensor,
                consts: Tensor, valid: Tensor, keeps: list[Tensor] | None, B: int, H: int) -> None: ...

    def backward(self, d_news: list[Tensor], saved: Tensor, olds: list[Tensor], consts: Tensor, valid: Tensor,
                 keeps: list[Tensor] | None, d_xp: Tensor, d_hh: Tensor, d_olds: list[Tensor],
                 d_consts: Tensor, B: int, H: int) -> None: ...


def accumulation_dtype(storage: torch.dtype) -> torch.dtype:
    """States, saved activations and gradients: float64 stays float64, every narrower type accumulates in fp32."""
    return torch.float64 if storage == torch.float64 else torch.float32


def compute_type(t: Tensor):
    """The Triton compute type of the element-wise kernels for a tensor in the accumulation dtype."""
    import triton.language as tl

    return tl.float64 if t.dtype == torch.float64 else tl.float32


def grid(B: int, H: int) -> tuple[int]:
    return ((B * H + BLOCK - 1) // BLOCK,)


@dataclass
class LoopSpec:
    """The non-tensor part of one layer call."""

    cell: RecurrentCell
    rule: CellRule
    names: tuple[str, ...]       # parameter names, in the order they are passed to :class:`RecurrentLoop`
    n_states: int


class RecurrentLoop(torch.autograd.Function):
    """``(x (T, B, I), valid (T, B) bool, rec_mask (B, H) | None, keeps (T, B, S_k)... | None, state0..., params...)``
    -> ``(output (T, B, H), records (T, B, A*H), final state...)``."""

    @staticmethod
    def forward(ctx, spec: LoopSpec, x: Tensor, valid: Tensor, rec_mask: Tensor | None,
                keeps: tuple[Tensor, ...] | None, *tensors: Tensor):
        with torch.autocast(x.device.type, enabled=False):  # the storage dtype is chosen by the caller
            return RecurrentLoop._forward(ctx, spec, x, valid, rec_mask, keeps, tensors)

    @staticmethod
    def _forward(ctx, spec: LoopSpec, x: Tensor, valid: Tensor, rec_mask: Tensor | None,
                 keeps: tuple[Tensor, ...] | None, tensors: tuple[Tensor, ...]):
        S = spec.n_states
        state0, params = tensors[:S], tensors[S:]
        p = dict(zip(spec.names, params))
        rule = spec.rule
        T, B = x.shape[0], x.shape[1]
        H = spec.cell.hidden_size
        acc = accumulation_dtype(x.dtype)
        prep = rule.prepare(p, H)
        w_ih, w_hh = p["weight_ih"], p["weight_hh"].contiguous()
        xp = torch.nn.functional.linear(x, w_ih, prep.b_x).contiguous()  # (T, B, G*H), one GEMM
        # the state sequence and the saved activations in the accumulation dtype (fp32 for bf16/fp16 storage)
        seq = [x.new_empty((T + 1,) + s.shape, dtype=acc) for s in state0]  # (T+1, B, S_k)
        for k, s in enumerate(state0):
            seq[k][0] = s
        saved = x.new_empty(T, B, rule.n_saved * H, dtype=acc)
        hh = x.new_empty(B, rule.n_gates * H)
        mask = None if rec_mask is None else rec_mask.to(acc)
        for t in range(T):
            h_prev = seq[0][t]
            hd = (h_prev if mask is None else h_prev * mask).to(x.dtype)
            if prep.b_hh is None:
                torch.mm(hd, w_hh.t(), out=hh)
            else:
                torch.addmm(prep.b_hh, hd, w_hh.t(), out=hh)
            rule.forward(xp[t], hh, [s[t] for s in seq], [s[t + 1] for s in seq], saved[t], prep.consts,
                         valid[t], None if keeps is None else [k_[t] for k_ in keeps], B, H)
        output = (seq[0][1:] * valid.unsqueeze(-1)).to(x.dtype)  # (T, B, H): zero at padded steps
        finals = tuple(s[T].to(s0.dtype) for s, s0 in zip(seq, state0))
        ctx.spec = spec
        ctx.has_mask, ctx.has_keeps = rec_mask is not None, keeps is not None
        ctx.save_for_backward(x, valid, xp, saved, *[s for s in seq], *state0, *params,
                              *((rec_mask,) if rec_mask is not None else ()), *(keeps or ()))
        records = saved * valid.unsqueeze(-1)
        ctx.mark_non_differentiable(records)
        return (output, records) + finals

    @staticmethod
    def backward(ctx, d_output: Tensor | None, _d_records, *d_finals: Tensor | None):
        spec: LoopSpec = ctx.spec
        S = spec.n_states
        x, valid, xp, saved, *rest = ctx.saved_tensors
        seq, rest = rest[:S], rest[S:]
        state0, rest = rest[:S], rest[S:]
        params, rest = rest[:len(spec.names)], rest[len(spec.names):]
        rec_mask = rest[0] if ctx.has_mask else None
        keeps = tuple(rest[1 if ctx.has_mask else 0:]) if ctx.has_keeps else None
        if torch.is_grad_enabled():  # create_graph=True: gradients must themselves be differentiable
            return _differentiable_backward(spec, x, valid, rec_mask, keeps, state0, params, d_output, d_finals)
        with torch.autocast(x.device.type, enabled=False):
            return RecurrentLoop._backward(spec, x, valid, xp, saved, seq, state0, params, rec_mask, keeps,
                                           d_output, d_finals)

    @staticmethod
    def _backward(spec: LoopSpec, x, valid, xp, saved, seq, state0, params, rec_mask, keeps, d_output, d_finals):
        p = dict(zip(spec.names, params))
        rule = spec.rule
        T, B = x.shape[0], x.shape[1]
        H = spec.cell.hidden_size
        acc = saved.dtype
        prep = rule.prepare(p, H)
        w_hh = p["weight_hh"].contiguous()
        d_state = [x.new_zeros(s.shape, dtype=acc) if d is None else d.to(acc) for d, s in zip(d_finals, state0)]
        d_xp = torch.empty_like(xp, dtype=acc)
        d_hh = d_xp if rule.hh_is_xp else torch.empty_like(d_xp)
        mask = None if rec_mask is None else rec_mask.to(acc)
        C = prep.consts.shape[0]
        d_consts = x.new_zeros(T, B, C * H, dtype=acc) if C else x.new_empty(0, dtype=acc)
        for t in range(T - 1, -1, -1):
            if d_output is not None:
                d_state[0] = d_state[0] + d_output[t].to(acc) * valid[t].unsqueeze(-1)
            d_olds = [torch.empty_like(s) for s in d_state]
            rule.backward([d.contiguous() for d in d_state], saved[t], [s[t] for s in seq], prep.consts,
                          valid[t], None if keeps is None else [k[t] for k in keeps], d_xp[t], d_hh[t], d_olds,
                          d_consts[t] if C else d_consts, B, H)
            back = torch.mm(d_hh[t].to(w_hh.dtype), w_hh).to(acc)  # (B, H): through the recurrent product
            d_olds[0] += back if mask is None else back * mask
            d_state = d_olds
        h_prev = seq[0][:-1] if mask is None else seq[0][:-1] * mask  # (T, B, H)
        flat = d_hh.reshape(T * B, -1)  # (T*B, G*H)
        grads = {"weight_hh": flat.t().mm(h_prev.reshape(T * B, -1)),
                 "weight_ih": d_xp.reshape(T * B, -1).t().mm(x.reshape(T * B, -1).to(acc))}
        d_x = torch.nn.functional.linear(d_xp.to(x.dtype), p["weight_ih"].t())  # (T, B, I)
        d_b_x = d_xp.sum((0, 1)) if prep.b_x is not None else None
        d_b_hh = d_hh.sum((0, 1)) if prep.b_hh is not None else None
        grads.update(rule.param_grads(p, d_b_x, d_b_hh, d_consts.sum((0, 1)).view(C, H) if C else None))
        d_params = tuple(None if grads.get(n) is None else grads[n].to(v.dtype) for n, v in zip(spec.names, params))
        d_state0 = tuple(d.to(s.dtype) for d, s in zip(d_state, state0))
        return (None, d_x, None, None, None) + d_state0 + d_params


def _differentiable_backward(spec: LoopSpec, x, valid, rec_mask, keeps, state0, params, d_output, d_finals):
    """The gradient through the cell's PyTorch step (same masks), so that it can be differentiated again."""
    inputs = (x,) + tuple(state0) + tuple(params)
    with torch.enable_grad():
        output, finals = differentiable_loop(spec.cell, dict(zip(spec.names, params)), x, valid, rec_mask, keeps,
                                             tuple(state0))
        outs, grads = [], []
        for o, g in zip((output,) + finals, (d_output,) + tuple(d_finals)):
            if g is not None:
                outs.append(o)
                grads.append(g)
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(outs, wanted, grads, create_graph=True, allow_unused=True))
        got = [next(found) if t.requires_grad else None for t in inputs]
    S = spec.n_states
    return (None, got[0], None, None, None) + tuple(got[1:1 + S]) + tuple(got[1 + S:])
