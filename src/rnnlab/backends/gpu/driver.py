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

A rule may also declare (each optional, defaults in brackets): ``recurrence`` [:class:`Matrix`], the shape of
the per-step product (:class:`Diagonal` u ⊙ h, :class:`Heads` block-diagonal, :class:`Identity` when the
rule's kernel reads the masked state itself, ``None`` for none); ``operand`` [0], the state part the product
(and the dropout mask) reads; ``own_projection`` [False], the input projection is the cell's own
``project_input``, run before the loop and differentiated by autograd; ``second_rows`` [0], the last rows of
``weight_hh`` multiply ``u`` (B, H), an operand the rule's ``forward_first`` kernel forms from the first
product's gates (the paper GRU's ``r ⊙ h``), so a step is two products with a kernel between them;
``mapped_rows`` [0] with ``operand_map(h)`` / ``operand_map_grad(h, d)``, the first rows of a full ``weight_hh``
read ``φ(h) ⊙ m`` instead of ``h ⊙ m`` (MUT3's ``tanh(h)``): the product's operand changes per block of rows;
``out_proj`` [None], the name of a (P, H) weight: the rule's kernel leaves ``m`` (B, H) unblended in place of
the new state part 0 and the driver forms ``h = m W_outᵀ`` (B, P) and blends it (lengths, zoneout), the LSTMP;
``part_product`` [None], a :class:`PartProduct`: a second per-step product from another state part, added to
some of the gate blocks of ``hh`` (Greff's FGR: the previous gates ``a`` through ``W_gg``); ``lower_part``
[None], the index of the state part of the layer below that the rule's kernels read at each step (they take
``lower`` (B, S) and write its gradient to ``d_lower``; the depth-gated LSTM's ``c^{l-1}_t``).

The backend reads three more, outside this loop: ``transform_params(p)``, run under autograd before the loop
(the clockwork's masked W_hh); ``project_input(x, p)``, the projection of a rule with ``own_projection`` when
it is not the cell's own; ``upper``, the rule for calls with a layer below (the depth-gated LSTM above its
first layer).

With ``want_states`` the loop also returns every step's state (each part (T, B, S_k)) and takes their
gradients: the layer above reads them as its ``lower``.

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


@dataclass(frozen=True)
class PartProduct:
    """``pr = s_{t-1}[part] W_{weight}ᵀ`` (B, R·H) each step; its block r is added to the gate block
    ``blocks[r]`` of ``hh`` (``None``: the block is computed and dropped, as the cell's step does for an absent
    gate).  Backwards ``d pr`` is gathered from ``d_hh``, ``d s[part] += d pr W`` and ``dW = Σ_t d prᵀ s`` is
    one GEMM over all T·B rows."""

    part: int
    weight: str
    blocks: tuple[int | None, ...]


class Matrix:
    """``hh = hd W_hhᵀ``: a full recurrent matrix (rows, H)."""

    @staticmethod
    def width(w: Tensor, H: int) -> int:
        return w.shape[0]

    @staticmethod
    def forward(hd: Tensor, w: Tensor, b: Tensor | None, out: Tensor) -> None:
        if b is None:
            torch.mm(hd, w.t(), out=out)
        else:
            torch.addmm(b, hd, w.t(), out=out)

    @staticmethod
    def back(d_hh: Tensor, w: Tensor) -> Tensor:
        return torch.mm(d_hh.to(w.dtype), w)

    @staticmethod
    def weight_grad(d_hh: Tensor, hd: Tensor, w: Tensor) -> Tensor:
        """``d_hh`` (N, rows), ``hd`` (N, H) over all T·B rows: one GEMM."""
        return d_hh.t().mm(hd)


class Diagonal:
    """``hh = u ⊙ hd``: one recurrent weight per unit (``weight_hh`` (H,))."""

    @staticmethod
    def width(w: Tensor, H: int) -> int:
        return H

    @staticmethod
    def forward(hd: Tensor, w: Tensor, b: Tensor | None, out: Tensor) -> None:
        torch.mul(hd, w, out=out)

    @staticmethod
    def back(d_hh: Tensor, w: Tensor) -> Tensor:
        return d_hh * w

    @staticmethod
    def weight_grad(d_hh: Tensor, hd: Tensor, w: Tensor) -> Tensor:
        return (d_hh * hd).sum(0)


class Heads:
    """Block-diagonal ``W_hh`` (G*H, d) over ``H / d`` heads: row ``g·H + k·d + j`` reads the d units of head k
    (the sLSTM layout); one batched product per step."""

    def __init__(self, n_gates: int) -> None:
        self.n_gates = n_gates

    @staticmethod
    def width(w: Tensor, H: int) -> int:
        return w.shape[0]

    def _w4(self, w: Tensor) -> Tensor:
        H, d = w.shape[0] // self.n_gates, w.shape[1]
        return w.view(self.n_gates, H // d, d, d)  # (gate, head, unit, unit of the same head)

    def forward(self, hd: Tensor, w: Tensor, b: Tensor | None, out: Tensor) -> None:
        w4 = self._w4(w)
        out.copy_(torch.einsum("gkjl,bkl->bgkj", w4, hd.view(hd.shape[0], w4.shape[1], -1)).reshape(out.shape))

    def back(self, d_hh: Tensor, w: Tensor) -> Tensor:
        w4 = self._w4(w)
        N, (g, k, d, _) = d_hh.shape[0], w4.shape
        return torch.einsum("bgkj,gkjl->bkl", d_hh.to(w.dtype).view(N, g, k, d), w4).reshape(N, k * d)

    def weight_grad(self, d_hh: Tensor, hd: Tensor, w: Tensor) -> Tensor:
        N, H = hd.shape
        k, d = H // w.shape[1], w.shape[1]
        return torch.einsum("bgkj,bkl->gkjl", d_hh.view(N, self.n_gates, k, d), hd.view(N, k, d)).reshape(w.shape)


class Identity:
    """No weight: ``hh`` is the masked operand itself, for rules whose kernels read the state element-wise
    (and return its gradient in ``d_hh``)."""

    @staticmethod
    def width(w: Tensor | None, H: int) -> int:
        return H

    @staticmethod
    def forward(hd: Tensor, w: Tensor | None, b: Tensor | None, out: Tensor) -> None:
        out.copy_(hd)

    @staticmethod
    def back(d_hh: Tensor, w: Tensor | None) -> Tensor:
        return d_hh

    @staticmethod
    def weight_grad(d_hh: Tensor, hd: Tensor, w: Tensor | None) -> None:
        return None


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
    n_lower: int = 0             # state parts of the layer below passed in (0: first layer)
    want_states: bool = False    # also return (and differentiate) every step's state


class RecurrentLoop(torch.autograd.Function):
    """``(x (T, B, I), valid (T, B) bool, rec_mask (B, H) | None, keeps (T, B, S_k)... | None, lower..., state0...,
    params...)`` -> ``(output (T, B, H), records (T, B, A*H), final state..., [every step's state...])``;
    ``lower``: ``spec.n_lower`` state parts of the layer below (T, B, S_k), in processing order."""

    @staticmethod
    def forward(ctx, spec: LoopSpec, x: Tensor, valid: Tensor, rec_mask: Tensor | None,
                keeps: tuple[Tensor, ...] | None, *tensors: Tensor):
        with torch.autocast(x.device.type, enabled=False):  # the storage dtype is chosen by the caller
            return RecurrentLoop._forward(ctx, spec, x, valid, rec_mask, keeps, tensors)

    @staticmethod
    def _forward(ctx, spec: LoopSpec, x: Tensor, valid: Tensor, rec_mask: Tensor | None,
                 keeps: tuple[Tensor, ...] | None, tensors: tuple[Tensor, ...]):
        L, S = spec.n_lower, spec.n_states
        lower, state0, params = tensors[:L], tensors[L:L + S], tensors[L + S:]
        p = dict(zip(spec.names, params))
        rule, form = spec.rule, _Form(spec.rule)
        T, B = x.shape[0], x.shape[1]
        H = spec.cell.hidden_size
        acc = accumulation_dtype(x.dtype)
        prep = rule.prepare(p, H)
        w_hh = p.get("weight_hh")
        w_hh = None if w_hh is None else w_hh.contiguous()
        if form.own_projection:  # x is already the cell's own projection (run before the loop, under autograd)
            xp = x.contiguous()
        else:
            xp = torch.nn.functional.linear(x, p["weight_ih"], prep.b_x).contiguous()  # (T, B, G*H), one GEMM
        # the state sequence and the saved activations in the accumulation dtype (fp32 for bf16/fp16 storage)
        seq = [x.new_empty((T + 1,) + s.shape, dtype=acc) for s in state0]  # (T+1, B, S_k)
        for k, s in enumerate(state0):
            seq[k][0] = s
        saved = x.new_empty(T, B, rule.n_saved * H, dtype=acc)
        W, W1 = form.widths(w_hh, H)
        hh = x.new_empty(B, W, dtype=acc if form.rec is Identity else x.dtype)
        us = x.new_empty(T if form.second_rows else 0, B, H, dtype=acc)  # the second product's operand
        ms = x.new_empty(T if form.out_proj else 0, B, H, dtype=acc)  # the output projection's operand
        w_out = p[form.out_proj] if form.out_proj else None
        w1, b1, w2, b2 = form.split(w_hh, prep.b_hh, W1)
        w_part = None if form.part is None else p[form.part.weight].contiguous()
        low = form.lower_input(lower)
        mask = None if rec_mask is None else rec_mask.to(acc)
        for t in range(T):
            olds, news = [s[t] for s in seq], [s[t + 1] for s in seq]
            keep_t = None if keeps is None else [k_[t] for k_ in keeps]
            extra = {} if low is None else {"lower": low[t]}
            if form.rec is not None:
                h_op = seq[form.operand][t]
                hd = h_op if mask is None else h_op * mask
                hd_s = hd if form.rec is Identity else hd.to(x.dtype)
                hm = form.mapped_operand(rule, h_op, mask)
                hm_s = None if hm is None else hm.to(x.dtype)
                if form.second_rows:
                    hh[:, :W1] = form.first_product(hd_s, hm_s, w1, b1)  # (a slice: no out= into a strided view)
                    rule.forward_first(xp[t], hh, hd, us[t], olds, saved[t], prep.consts, valid[t], keep_t, B, H)
                    hh[:, W1:] = _product(Matrix, us[t].to(x.dtype), w2, b2)
                elif hm_s is not None:
                    hh.copy_(form.first_product(hd_s, hm_s, w1, b1))
                else:
                    form.rec.forward(hd_s, w1, b1, out=hh)
            if w_part is not None:  # the other state part's product, into its gate blocks
                form.add_part(hh, torch.mm(olds[form.part.part].to(x.dtype), w_part.t()), H)
            if form.out_proj:  # the kernel leaves m in ms[t]; h = m W_outᵀ, then blended like any state
                rule.forward(xp[t], hh, olds, [ms[t], *news[1:]], saved[t], prep.consts, valid[t], keep_t, B, H)
                raw = torch.mm(ms[t].to(x.dtype), w_out.t()).to(acc)
                _blend_rows(raw, olds[0], news[0], valid[t], None if keep_t is None else keep_t[0])
            else:
                rule.forward(xp[t], hh, olds, news, saved[t], prep.consts, valid[t], keep_t, B, H, **extra)
        output = (seq[0][1:] * valid.unsqueeze(-1)).to(x.dtype)  # (T, B, H): zero at padded steps
        finals = tuple(s[T].to(s0.dtype) for s, s0 in zip(seq, state0))
        states = tuple(s[1:].to(s0.dtype) for s, s0 in zip(seq, state0)) if spec.want_states else ()
        ctx.spec = spec
        ctx.has_mask, ctx.has_keeps = rec_mask is not None, keeps is not None
        ctx.save_for_backward(x, valid, xp, saved, us, ms, *seq, *state0, *params, *lower,
                              *((rec_mask,) if rec_mask is not None else ()), *(keeps or ()))
        records = saved * valid.unsqueeze(-1)
        ctx.mark_non_differentiable(records)
        return (output, records) + finals + states

    @staticmethod
    def backward(ctx, d_output: Tensor | None, _d_records, *d_rest: Tensor | None):
        spec: LoopSpec = ctx.spec
        L, S = spec.n_lower, spec.n_states
        d_finals, d_states = d_rest[:S], d_rest[S:]
        x, valid, xp, saved, us, ms, *rest = ctx.saved_tensors
        seq, rest = rest[:S], rest[S:]
        state0, rest = rest[:S], rest[S:]
        params, rest = rest[:len(spec.names)], rest[len(spec.names):]
        lower, rest = tuple(rest[:L]), rest[L:]
        rec_mask = rest[0] if ctx.has_mask else None
        keeps = tuple(rest[1 if ctx.has_mask else 0:]) if ctx.has_keeps else None
        if torch.is_grad_enabled():  # create_graph=True: gradients must themselves be differentiable
            return _differentiable_backward(spec, x, valid, rec_mask, keeps, lower, state0, params, d_output,
                                            d_finals, d_states)
        with torch.autocast(x.device.type, enabled=False):
            return RecurrentLoop._backward(spec, x, valid, xp, saved, us, ms, seq, state0, params, lower, rec_mask,
                                           keeps, d_output, d_finals, d_states)

    @staticmethod
    def _backward(spec: LoopSpec, x, valid, xp, saved, us, ms, seq, state0, params, lower, rec_mask, keeps,
                  d_output, d_finals, d_states):
        p = dict(zip(spec.names, params))
        rule, form = spec.rule, _Form(spec.rule)
        T, B = x.shape[0], x.shape[1]
        H = spec.cell.hidden_size
        acc = saved.dtype
        prep = rule.prepare(p, H)
        w_hh = p.get("weight_hh")
        w_hh = None if w_hh is None else w_hh.contiguous()
        W, W1 = form.widths(w_hh, H)
        w1, _, w2, _ = form.split(w_hh, prep.b_hh, W1)
        d_state = [x.new_zeros(s.shape, dtype=acc) if d is None else d.to(acc) for d, s in zip(d_finals, state0)]
        d_xp = torch.empty_like(xp, dtype=acc)
        d_hh = d_xp if rule.hh_is_xp else x.new_empty(T, B, W, dtype=acc)
        mask = None if rec_mask is None else rec_mask.to(acc)
        C = prep.consts.shape[0]
        d_consts = x.new_zeros(T, B, C * H, dtype=acc) if C else x.new_empty(0, dtype=acc)
        op = form.operand
        w_out = p[form.out_proj] if form.out_proj else None
        d_raw = x.new_empty(T if form.out_proj else 0, B, w_out.shape[0] if form.out_proj else 0, dtype=acc)
        w_part = None if form.part is None else p[form.part.weight].contiguous()
        d_part = x.new_zeros(T, B, w_part.shape[0], dtype=acc) if w_part is not None else None
        low = form.lower_input(lower)
        d_low = None if low is None else torch.empty_like(low, dtype=acc)
        for t in range(T - 1, -1, -1):
            if d_output is not None:
                d_state[0] = d_state[0] + d_output[t].to(acc) * valid[t].unsqueeze(-1)
            for k, d in enumerate(d_states):  # the layer above read this step's state
                if d is not None:
                    d_state[k] = d_state[k] + d[t].to(acc)
            d_olds = [torch.empty_like(s) for s in d_state]
            olds = [s[t] for s in seq]
            keep_t = None if keeps is None else [k[t] for k in keeps]
            d_news = [d.contiguous() for d in d_state]
            extra = {} if low is None else {"lower": low[t], "d_lower": d_low[t]}
            if form.out_proj:  # back through the blend (h_{t-1}'s share) and the projection, to m
                _blend_rows_grad(d_news[0], valid[t], None if keep_t is None else keep_t[0], d_raw[t], d_olds[0])
                d_news[0] = Matrix.back(d_raw[t], w_out).to(acc).contiguous()
            rule.backward(d_news, saved[t], olds, prep.consts, valid[t], keep_t, d_xp[t], d_hh[t], d_olds,
                          d_consts[t] if C else d_consts, B, H, **extra)
            if w_part is not None:
                form.gather_part(d_part[t], d_hh[t], H)
                d_olds[form.part.part] += Matrix.back(d_part[t], w_part).to(acc)
            if form.rec is not None:
                if form.second_rows:  # through the second product into its operand u, then into the first stage
                    d_u = Matrix.back(d_hh[t][:, W1:], w2).to(acc).contiguous()
                    d_hd = torch.empty_like(d_u)
                    hd = olds[op] if mask is None else olds[op] * mask
                    rule.backward_first(d_u, saved[t], hd, olds, prep.consts, d_xp[t], d_hh[t], d_hd, B, H)
                    back = form.first_back(rule, d_hh[t][:, :W1], w1, olds[op]) + d_hd
                else:
                    back = form.first_back(rule, d_hh[t], w1, olds[op])  # (B, H): through the recurrent product
                d_olds[op] += back if mask is None else back * mask
            d_state = d_olds
        grads = {}
        if form.rec is not None:
            h_op = seq[op][:-1] if mask is None else seq[op][:-1] * mask  # (T, B, H)
            flat, hd_all = d_hh.reshape(T * B, -1), h_op.reshape(T * B, -1)  # (T*B, W), (T*B, H)
            hm = form.mapped_operand(rule, seq[op][:-1], mask)
            hm_all = None if hm is None else hm.reshape(T * B, -1)
            if form.second_rows:
                grads["weight_hh"] = torch.cat([form.first_weight_grad(flat[:, :W1], hd_all, hm_all, w1),
                                                Matrix.weight_grad(flat[:, W1:], us.reshape(T * B, -1), w2)])
            else:
                grads["weight_hh"] = form.first_weight_grad(flat, hd_all, hm_all, w1)
        if w_part is not None:  # (R*H, S) over all T·B rows: one GEMM
            a_all = seq[form.part.part][:-1].reshape(T * B, -1)
            grads[form.part.weight] = Matrix.weight_grad(d_part.reshape(T * B, -1), a_all, w_part)
        if form.out_proj:
            grads[form.out_proj] = d_raw.reshape(T * B, -1).t().mm(ms.reshape(T * B, -1))  # one GEMM, (P, H)
        if form.own_projection:
            d_x = d_xp.to(x.dtype)  # autograd carries it on through the cell's project_input
        else:
            grads["weight_ih"] = d_xp.reshape(T * B, -1).t().mm(x.reshape(T * B, -1).to(acc))
            d_x = torch.nn.functional.linear(d_xp.to(x.dtype), p["weight_ih"].t())  # (T, B, I)
        d_b_x = d_xp.sum((0, 1)) if prep.b_x is not None else None
        d_b_hh = d_hh.sum((0, 1)) if prep.b_hh is not None else None
        grads.update(rule.param_grads(p, d_b_x, d_b_hh, d_consts.sum((0, 1)).view(C, H) if C else None))
        d_params = tuple(None if grads.get(n) is None else grads[n].to(v.dtype) for n, v in zip(spec.names, params))
        d_state0 = tuple(d.to(s.dtype) for d, s in zip(d_state, state0))
        d_lower = tuple(d_low.to(s.dtype) if k == form.lower_part else None for k, s in enumerate(lower))
        return (None, d_x, None, None, None) + d_lower + d_state0 + d_params


class _Form:
    """A rule's optional declarations (see the module docstring), with their defaults."""

    def __init__(self, rule: CellRule) -> None:
        self.rec = getattr(rule, "recurrence", Matrix)
        self.operand: int = getattr(rule, "operand", 0)
        self.own_projection: bool = getattr(rule, "own_projection", False)
        self.second_rows: int = getattr(rule, "second_rows", 0)
        self.mapped_rows: int = getattr(rule, "mapped_rows", 0)
        self.out_proj: str | None = getattr(rule, "out_proj", None)
        self.part: PartProduct | None = getattr(rule, "part_product", None)
        self.lower_part: int | None = getattr(rule, "lower_part", None)
        if self.mapped_rows and self.rec is not Matrix:
            raise TypeError("mapped_rows: rows of a full recurrent matrix only (recurrence = Matrix)")

    def lower_input(self, lower: tuple[Tensor, ...]) -> Tensor | None:
        """The layer below's state part the rule reads (T, B, S), or None (first layer, or a rule without one)."""
        if not lower:
            return None
        if self.lower_part is None:
            raise TypeError("a layer below was passed to a rule without lower_part")
        return lower[self.lower_part].contiguous()

    def add_part(self, hh: Tensor, pr: Tensor, H: int) -> None:
        """``hh``'s gate blocks += the part product's blocks (``self.part.blocks``)."""
        for r, k in enumerate(self.part.blocks):
            if k is not None:
                hh[:, k * H:(k + 1) * H] += pr[:, r * H:(r + 1) * H]

    def gather_part(self, d_pr: Tensor, d_hh: Tensor, H: int) -> None:
        """The part product's gradient (B, R*H) from ``d_hh``'s gate blocks (zero where a block is dropped)."""
        for r, k in enumerate(self.part.blocks):
            if k is not None:
                d_pr[:, r * H:(r + 1) * H] = d_hh[:, k * H:(k + 1) * H]

    def widths(self, w_hh: Tensor | None, H: int) -> tuple[int, int]:
        """(all product rows W, rows of the first product W1)."""
        W = 0 if self.rec is None else self.rec.width(w_hh, H)
        return W, W - self.second_rows

    def split(self, w_hh, b_hh, W1: int):
        """Weights and biases of the first and the second product."""
        if not self.second_rows:
            return w_hh, b_hh, None, None
        return w_hh[:W1], None if b_hh is None else b_hh[:W1], w_hh[W1:], None if b_hh is None else b_hh[W1:]

    def mapped_operand(self, rule: CellRule, h_op: Tensor, mask: Tensor | None) -> Tensor | None:
        """The operand of the mapped rows, ``φ(h) ⊙ m`` (the mask after the map, as a cell's ``drop(φ(h))``),
        or None."""
        if not self.mapped_rows:
            return None
        hm = rule.operand_map(h_op)
        return hm if mask is None else hm * mask

    def first_product(self, hd: Tensor, hm: Tensor | None, w1: Tensor, b1: Tensor | None) -> Tensor:
        """The first product's rows: the mapped ones on ``hm``, the rest on ``hd``."""
        if hm is None:
            return _product(self.rec, hd, w1, b1)
        R = self.mapped_rows
        return torch.cat([_product(Matrix, hm, w1[:R], None if b1 is None else b1[:R]),
                          _product(Matrix, hd, w1[R:], None if b1 is None else b1[R:])], dim=1)

    def first_back(self, rule: CellRule, d1: Tensor, w1: Tensor, h_op: Tensor) -> Tensor:
        """``d_hh`` of the first product back to the operand state (before the dropout mask), accumulation dtype."""
        acc = h_op.dtype
        if not self.mapped_rows:
            return self.rec.back(d1, w1).to(acc)
        R = self.mapped_rows
        d_hm = Matrix.back(d1[:, :R], w1[:R]).to(acc)
        return Matrix.back(d1[:, R:], w1[R:]).to(acc) + rule.operand_map_grad(h_op, d_hm)

    def first_weight_grad(self, flat: Tensor, hd_all: Tensor, hm_all: Tensor | None, w1: Tensor) -> Tensor | None:
        """The first product's weight gradient over all T·B rows, mapped rows against their own operand."""
        if hm_all is None:
            return self.rec.weight_grad(flat, hd_all, w1)
        R = self.mapped_rows
        return torch.cat([Matrix.weight_grad(flat[:, :R], hm_all, w1[:R]),
                          Matrix.weight_grad(flat[:, R:], hd_all, w1[R:])])


def _blend_rows(new: Tensor, old: Tensor, out: Tensor, valid: Tensor, keep: Tensor | None) -> None:
    """``out = blend(new, old)`` over (B, W) rows: lengths and zoneout for a state the driver forms itself."""
    from rnnlab.backends.gpu.common import blend_rows

    B, W = new.shape
    blend_rows[grid(B, W)](new, old, out, valid, new if keep is None else keep, B * W, W, HAS_KEEP=keep is not None,
                           COMPUTE=compute_type(out), BLOCK=BLOCK)


def _blend_rows_grad(d: Tensor, valid: Tensor, keep: Tensor | None, d_new: Tensor, d_old: Tensor) -> None:
    from rnnlab.backends.gpu.common import blend_rows_grad

    B, W = d.shape
    blend_rows_grad[grid(B, W)](d, valid, d if keep is None else keep, d_new, d_old, B * W, W,
                                HAS_KEEP=keep is not None, COMPUTE=compute_type(d), BLOCK=BLOCK)


def _product(rec, hd: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    out = hd.new_empty(hd.shape[0], rec.width(w, hd.shape[1]))
    rec.forward(hd, w, b, out=out)
    return out


class _Projected:
    """A cell whose input arrives already projected (rules with ``own_projection``): its step on ``xp``."""

    def __init__(self, cell: RecurrentCell) -> None:
        self.cell = cell

    def __getattr__(self, name: str):
        # everything but the projection is the cell's own (state_names, hidden_size, ...): the step loop reads it
        return getattr(self.cell, name)

    def project_input(self, xp: Tensor, p) -> Tensor:
        return xp

    def step(self, *args):
        return self.cell.step(*args)


def _differentiable_backward(spec: LoopSpec, x, valid, rec_mask, keeps, lower, state0, params, d_output, d_finals,
                             d_states):
    """The gradient through the cell's PyTorch step (same masks), so that it can be differentiated again."""
    inputs = (x,) + tuple(lower) + tuple(state0) + tuple(params)
    with torch.enable_grad():
        cell = _Projected(spec.cell) if _Form(spec.rule).own_projection else spec.cell
        output, finals, states = differentiable_loop(cell, dict(zip(spec.names, params)), x, valid, rec_mask, keeps,
                                                     tuple(state0), lower=tuple(lower) or None,
                                                     want_states=spec.want_states)
        outs, grads = [], []
        for o, g in zip((output,) + finals + (states or ()), (d_output,) + tuple(d_finals) + tuple(d_states)):
            if g is not None and o.requires_grad:  # (a step counter never depends on an input)
                outs.append(o)
                grads.append(g)
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(outs, wanted, grads, create_graph=True, allow_unused=True))
        got = [next(found) if t.requires_grad else None for t in inputs]
    return (None, got[0], None, None, None) + tuple(got[1:])  # lower, state0, params
