"""Layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016): LN on the input and recurrent pre-activations."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps: expected a positive float, got {eps!r}")
    return float(eps)


class _LayerNormCell(RecurrentCell):
    """Shared layout: ``weight_ih``/``weight_hh`` without biases (LN would cancel them), LN gains
    ``weight_ln_ih``/``weight_ln_hh`` (init 1) and shifts ``bias_ln_ih``/``bias_ln_hh`` (init 0).  The paper's
    separate bias b is folded into ``bias_ln_ih`` (β_1 + b is one free vector).  ``bias=False`` drops the
    shifts."""

    num_gates: ClassVar[int] = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, eps: float = 1e-5,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.eps = _check_eps(eps)

    def param_specs(self) -> list[ParamSpec]:
        GH, H, I = self.num_gates * self.hidden_size, self.hidden_size, self.input_size
        specs = [ParamSpec("weight_ih", (GH, I)), ParamSpec("weight_hh", (GH, H)),
                 ParamSpec("weight_ln_ih", (GH,), "ones"), ParamSpec("weight_ln_hh", (GH,), "ones")]
        if self.bias:
            specs += [ParamSpec("bias_ln_ih", (GH,), "zeros"), ParamSpec("bias_ln_hh", (GH,), "zeros")]
        return specs

    def project_input(self, x: Tensor, p: Params) -> Tensor:
        """LN(W_ih x) for every step at once: (..., I) -> (..., G*H)."""
        return F.layer_norm(F.linear(x, p["weight_ih"]), (self.num_gates * self.hidden_size,),
                            p["weight_ln_ih"], p.get("bias_ln_ih"), self.eps)

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs (cells/layernorm.h): xp = LN(W_ih x), W_hh, the element-wise rows α_2 (G),
        β_2 (G, zeros without bias), the cell's extra ones (:meth:`_driver_rows`) and ε (one row), no heads
        or options."""
        G, H = self.num_gates, self.hidden_size
        beta = p["bias_ln_hh"].view(G, H) if self.bias else x.new_zeros(G, H)
        rows = [p["weight_ln_hh"].view(G, H), beta, *self._driver_rows(x, p), x.new_full((1, H), self.eps)]
        return self.project_input(x, p), p["weight_hh"], torch.cat(rows), 0, 0

    def _driver_rows(self, x: Tensor, p: Params) -> list[Tensor]:
        return []

    def _recurrent(self, h: Tensor, p: Params) -> Tensor:
        """LN(W_hh h): (B, H) -> (B, G*H)."""
        return F.layer_norm(F.linear(h, p["weight_hh"]), (self.num_gates * self.hidden_size,),
                            p["weight_ln_hh"], p.get("bias_ln_hh"), self.eps)


class LayerNormLSTMCell(_LayerNormCell):
    r"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016, "Layer Normalization", supplementary material).

    .. math::
        (i_t, f_t, g_t, o_t) &= \mathrm{LN}(W_{ih} x_t; α_1, β_1) + \mathrm{LN}(W_{hh} h_{t-1}; α_2, β_2) + b \\
        c_t &= σ(f_t) ⊙ c_{t-1} + σ(i_t) ⊙ \tanh(g_t) \\
        h_t &= σ(o_t) ⊙ \tanh(\mathrm{LN}(c_t; α_3, β_3))

    :math:`\mathrm{LN}(z; α, β) = α ⊙ (z - μ(z)) / \sqrt{\mathrm{var}(z) + ε} + β` over the whole 4H
    pre-activation vector, as in the paper (not per gate).  Gate blocks in the order i, f, g, o as in
    ``torch.nn.LSTM``.  Parameters: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H),
    ``weight_ln_ih``/``bias_ln_ih`` = α_1/β_1 + b, ``weight_ln_hh``/``bias_ln_hh`` = α_2/β_2 (4H,),
    ``weight_ln_c``/``bias_ln_c`` = α_3/β_3 (H,).  Deviation: b is not a separate parameter, it is
    redundant with β_1 and folded into ``bias_ln_ih``.

    Args:
        eps: ε of the normalisations (default 1e-5 like ``torch.nn.LayerNorm``).
        forget_bias: initial value of the forget-gate slice of ``bias_ln_ih`` (Jozefowicz et al. 2015 use 1).

    Example:
        >>> h, c = LayerNormLSTMCell(3, 4)(torch.randn(2, 3))
        >>> tuple(h.shape)
        (2, 4)
    """

    kind = "ln_lstm"
    state_names: ClassVar[tuple[str, ...]] = ("h", "c")
    num_gates = 4
    #: the generic C++ driver's rule (backends/cpp/cells/layernorm.h)
    driver_kernel: ClassVar[str] = "ln_lstm"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, eps: float = 1e-5,
                 forget_bias: float | None = None, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, eps=eps, device=device, dtype=dtype)
        if forget_bias is not None and not bias:
            raise ValueError(f"forget_bias: needs bias=True, got forget_bias={forget_bias!r} with bias=False")
        self.forget_bias = forget_bias
        self._register_params()

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        specs = super().param_specs() + [ParamSpec("weight_ln_c", (H,), "ones")]
        if self.bias:
            specs.append(ParamSpec("bias_ln_c", (H,), "zeros"))
        return specs

    def _driver_rows(self, x: Tensor, p: Params) -> list[Tensor]:
        """α_3 and β_3 (zeros without bias) of LN(c), one row each."""
        H = self.hidden_size
        return [p["weight_ln_c"].view(1, H), p["bias_ln_c"].view(1, H) if self.bias else x.new_zeros(1, H)]

    def init_parameters(self, p: Params) -> None:
        super().init_parameters(p)
        if self.forget_bias is not None:
            H = self.hidden_size
            with torch.no_grad():
                p["bias_ln_ih"][H:2 * H].fill_(self.forget_bias)

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits: i, f, g, o (the rule's first four saved blocks) and the new cell state c."""
        H = self.hidden_size
        i, f, g, o = saved[..., : 4 * H].chunk(4, dim=-1)
        return {"i": i, "f": f, "g": g, "o": o, "c": new[..., H:]}

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h, c = state[0], state[1]
        z_i, z_f, z_g, z_o = (xp_t + self._recurrent(ctx.drop(h), p)).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
        c_new = f * c + i * g
        h_new = o * torch.tanh(F.layer_norm(c_new, (self.hidden_size,), p["weight_ln_c"], p.get("bias_ln_c"),
                                            self.eps))
        if ctx.record is not None:
            for name, v in (("i", i), ("f", f), ("g", g), ("o", o), ("c", c_new)):
                ctx.emit(name, v)
        return h_new, c_new


class LayerNormGRUCell(_LayerNormCell):
    r"""Layer-normalised GRU (Ba, Kiros & Hinton 2016, "Layer Normalization"; GRU in the torch.nn form).

    .. math::
        (a^x_r, a^x_z, a^x_n) &= \mathrm{LN}(W_{ih} x_t; α_1, β_1) \\
        (a^h_r, a^h_z, a^h_n) &= \mathrm{LN}(W_{hh} h_{t-1}; α_2, β_2) \\
        r_t &= σ(a^x_r + a^h_r), \quad z_t = σ(a^x_z + a^h_z) \\
        n_t &= \tanh(a^x_n + r_t ⊙ a^h_n) \\
        h_t &= (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    LN over the whole 3H vector, as for the paper's LN-LSTM.  Deviation: the paper gives LN equations for
    the LSTM and applies LN to a GRU without spelling them out; we normalise the input and recurrent
    pre-activations separately exactly as in its LN-LSTM and use the reset-after form of ``torch.nn.GRU``
    (the recurrent matmul is normalised once, before the reset gate scales its n block).
    Parameters: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H) with blocks r, z, n,
    ``weight_ln_ih``/``bias_ln_ih``, ``weight_ln_hh``/``bias_ln_hh`` (3H,); the LN shifts are the biases.

    Example:
        >>> h = LayerNormGRUCell(3, 4)(torch.randn(2, 3))
        >>> tuple(h.shape)
        (2, 4)
    """

    kind = "ln_gru"
    num_gates = 3
    #: the generic C++ driver's rule (backends/cpp/cells/layernorm.h)
    driver_kernel: ClassVar[str] = "ln_gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, eps: float = 1e-5,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, eps=eps, device=device, dtype=dtype)
        self._register_params()

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits: r, z, n (the rule's first three saved blocks)."""
        r, z, n = saved[..., : 3 * self.hidden_size].chunk(3, dim=-1)
        return {"r": r, "z": z, "n": n}

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h = state[0]
        x_r, x_z, x_n = xp_t.chunk(3, dim=-1)
        h_r, h_z, h_n = self._recurrent(ctx.drop(h), p).chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        if ctx.record is not None:
            ctx.emit("r", r)
            ctx.emit("z", z)
            ctx.emit("n", n)
        return ((1.0 - z) * n + z * h,)
