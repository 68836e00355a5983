"""LSTM family: the torch.nn LSTM, peepholes, projection, coupled gates and the Greff et al. (2015) variants."""

from __future__ import annotations

from typing import ClassVar, Iterable

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, Params, RecurrentCell, State, StepContext

_GATE_ORDER = ("i", "f", "g", "o")


def _parse_peepholes(peepholes: bool | str | Iterable[str] | None) -> tuple[str, ...]:
    if peepholes is None or peepholes is False:
        return ()
    if peepholes is True:
        return ("i", "f", "o")
    names = tuple(peepholes)
    bad = [n for n in names if n not in ("i", "f", "o")]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"peepholes: expected a subset of 'ifo' (or True/False), got {peepholes!r}")
    return tuple(n for n in ("i", "f", "o") if n in names)


class LSTMCell(RecurrentCell):
    r"""Long short-term memory cell (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000).

    .. math::
        i_t &= σ(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi} + w_{ci} ⊙ c_{t-1}) \\
        f_t &= σ(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf} + w_{cf} ⊙ c_{t-1}) \\
        g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        c_t &= f_t ⊙ c_{t-1} + i_t ⊙ g_t \\
        o_t &= σ(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho} + w_{co} ⊙ c_t) \\
        h_t &= o_t ⊙ \tanh(c_t) \quad (\text{with } \texttt{proj\_size}=P:\ h_t = W_{hr}(o_t ⊙ \tanh(c_t)))

    With the defaults (no peepholes, all gates) this is exactly ``torch.nn.LSTMCell``: rows of
    ``weight_ih`` / ``weight_hh`` are the gate blocks in the order i, f, g, o.  Options give the variants of
    Greff et al., "LSTM: A Search Space Odyssey" (2015); removing a gate removes its rows, the remaining
    blocks keep the order i, f, g, o.

    Args:
        input_size, hidden_size, bias: as in ``torch.nn.LSTMCell``.
        proj_size: P > 0 adds ``weight_hr`` (P, H) and makes h of size P (Sak et al. 2014, LSTMP).
        peepholes: which gates see the cell state through diagonal weights ``weight_ci/cf/co`` (H,)
            (Gers & Schmidhuber 2000): ``True`` for all of i, f, o, or a subset such as ``"if"``.
        forget_bias: if given, the forget-gate slice of ``bias_ih`` is set to this value and that of
            ``bias_hh`` to 0 at initialisation (Gers et al. 2000; Jozefowicz et al. 2015 recommend 1.0).
        input_gate, forget_gate, output_gate: ``False`` fixes that gate to 1 (Greff's NIG, NFG, NOG).
        coupled: f = 1 − i, no forget-gate weights (CIFG).
        input_activation: ``False`` drops the tanh of g (NIAF).
        output_activation: ``False`` gives h = o ⊙ c (NOAF).
        full_gate_recurrence: gates also receive i, f, o of the previous step through ``weight_gg``
            (3H, 3H) (Greff's FGR); the state then carries ``a`` = [i, f, o]_{t-1} (B, 3H).

    Example:
        >>> cell = LSTMCell(3, 5)
        >>> h, c = cell(torch.randn(2, 3))
        >>> tuple(h.shape), tuple(c.shape)
        ((2, 5), (2, 5))
    """

    kind = "lstm"
    state_names: ClassVar[tuple[str, ...]] = ("h", "c")
    #: the generic C++ driver's rule (backends/cpp/cells/lstm.h)
    driver_kernel: ClassVar[str] = "lstm"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, proj_size: int = 0,
                 peepholes: bool | str | Iterable[str] | None = None, forget_bias: float | None = None,
                 input_gate: bool = True, forget_gate: bool = True, output_gate: bool = True,
                 coupled: bool = False, input_activation: bool = True, output_activation: bool = True,
                 full_gate_recurrence: bool = False, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"proj_size: expected an int >= 0, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size: must be smaller than hidden_size={hidden_size}, got {proj_size}")
        if coupled and not input_gate:
            raise ValueError("coupled: a coupled forget gate f = 1 - i needs the input gate (input_gate=True)")
        if coupled and not forget_gate:
            raise ValueError("coupled: coupled=True already replaces the forget gate; leave forget_gate=True")
        self.proj_size = proj_size
        self.input_gate = input_gate
        self.forget_gate = forget_gate and not coupled
        self.output_gate = output_gate
        self.coupled = coupled
        self.input_activation = input_activation
        self.output_activation = output_activation
        self.full_gate_recurrence = full_gate_recurrence
        present = {"i": input_gate, "f": self.forget_gate, "g": True, "o": output_gate}
        self.gates: tuple[str, ...] = tuple(g for g in _GATE_ORDER if present[g])
        peeps = _parse_peepholes(peepholes)
        missing = [g for g in peeps if g not in self.gates]
        if missing:
            raise ValueError(f"peepholes: gate(s) {missing} are not present in this cell (gates {self.gates})")
        self.peepholes = peeps
        if forget_bias is not None and not self.forget_gate:
            raise ValueError(f"forget_bias: this cell has no forget gate (gates {self.gates}), got {forget_bias}")
        self.forget_bias = forget_bias
        if full_gate_recurrence:
            self.state_names = ("h", "c", "a")
        self._register_params()

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    def state_sizes(self) -> tuple[int, ...]:
        h = self.proj_size or self.hidden_size
        if self.full_gate_recurrence:
            return (h, self.hidden_size, 3 * self.hidden_size)
        return (h, self.hidden_size)

    def param_specs(self) -> list[ParamSpec]:
        G, H = self.num_gates, self.hidden_size
        specs = self.linear_specs(G * H, G * H, self.proj_size or H)
        specs += [ParamSpec(f"weight_c{g}", (H,)) for g in self.peepholes]
        if self.full_gate_recurrence:
            specs.append(ParamSpec("weight_gg", (3 * H, 3 * H)))
        if self.proj_size:
            specs.append(ParamSpec("weight_hr", (self.proj_size, H)))
        return specs

    def init_parameters(self, p: Params) -> None:
        super().init_parameters(p)
        if self.forget_bias is not None and self.bias:
            k, H = self.gates.index("f"), self.hidden_size
            with torch.no_grad():
                p["bias_ih"][k * H:(k + 1) * H].fill_(self.forget_bias)
                p["bias_hh"][k * H:(k + 1) * H].zero_()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        opts = {"proj_size": self.proj_size, "peepholes": "".join(self.peepholes), "coupled": self.coupled,
                "input_gate": self.input_gate, "forget_gate": self.forget_gate or self.coupled,
                "output_gate": self.output_gate, "input_activation": self.input_activation,
                "output_activation": self.output_activation, "full_gate_recurrence": self.full_gate_recurrence}
        defaults = {"proj_size": 0, "peepholes": "", "coupled": False, "input_activation": True,
                    "output_activation": True, "full_gate_recurrence": False}
        extra = [f"{k}={v!r}" for k, v in opts.items() if defaults.get(k, True) != v]
        return ", ".join([s] + extra)

    def driver_supported(self) -> bool:
        """The driver's rule covers every option; Greff's full gate recurrence only without a projection."""
        return not (self.full_gate_recurrence and self.proj_size)

    def driver_state(self, state: State) -> Tensor:
        """With a projection the driver's row is [m, c, h] (driver.h proj_bit): m = o ⊙ act(c) before the
        projection, which the rule never reads back (zeros here), then h (P)."""
        if not self.proj_size:
            return super().driver_state(state)
        h, c = state[0], state[1]
        return torch.cat([c.new_zeros(c.shape), c.contiguous(), h.contiguous()], dim=-1)

    def from_driver_state(self, s: Tensor) -> State:
        if not self.proj_size:
            return super().from_driver_state(s)
        H = self.hidden_size
        return s[..., 2 * H:], s[..., H:2 * H]

    def driver_inputs(self, x: Tensor, p: Params):
        """Generic driver inputs: xp (T, B, G*H) with both biases folded, W_hh, the peepholes (3, H) (zero rows
        for absent ones) or ``None``, no heads, the option word of cells/lstm.h.  With a projection the weight is
        [W_hh; W_hrᵀ] (G*H + H, P) and the option word has PROJ (the driver forms h = m W_hrᵀ); with the full gate
        recurrence it is [W_hh; W_gg viewed (9H, H)] and the option word has FGR (driver.h PART_REC)."""
        b = p["bias_ih"] + p["bias_hh"] if self.bias else None
        xp = F.linear(x, p["weight_ih"], b)
        opt = sum(bit for bit, on in ((1, not self.input_gate), (2, not self.forget_gate), (4, not self.output_gate),
                                      (8, self.coupled), (16, not self.input_activation),
                                      (32, not self.output_activation), (64, bool(self.peepholes)),
                                      (128, bool(self.proj_size)), (256, self.full_gate_recurrence)) if on)
        peep = None
        if self.peepholes:
            zero = x.new_zeros(self.hidden_size)
            peep = torch.stack([p[f"weight_c{g}"] if g in self.peepholes else zero for g in ("i", "f", "o")])
        w = p["weight_hh"]
        if self.proj_size:
            w = torch.cat([w, p["weight_hr"].t()])
        elif self.full_gate_recurrence:
            w = torch.cat([w, p["weight_gg"].reshape(-1, self.hidden_size)])
        return xp, w, peep, 0, opt

    def driver_records(self, xp: Tensor, w: Tensor, e: Tensor, prev: Tensor, new: Tensor, saved: Tensor,
                       rec_mask: Tensor | None) -> dict[str, Tensor]:
        """What :meth:`step` emits, from the generic driver's results: the present gates (the rule's saved blocks,
        in block order), f = 1 - i when coupled, and the new cell state c."""
        blocks = dict(zip(self.gates, saved.chunk(self.num_gates, dim=-1)))
        if self.coupled:
            blocks["f"] = 1.0 - blocks["i"]
        records = {g: blocks[g] for g in ("i", "f", "g", "o") if g in blocks}
        records["c"] = new[..., self.hidden_size:2 * self.hidden_size]  # [m, c] or, projected, [m, c, h]
        return records

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        h, c = state[0], state[1]
        pre = xp_t + F.linear(ctx.drop(h), p["weight_hh"], p.get("bias_hh"))
        if self.full_gate_recurrence:
            # the previous gate activations feed the i, f, o pre-activations (Greff's FGR)
            rec = F.linear(state[2], p["weight_gg"]).chunk(3, dim=-1)
        blocks = dict(zip(self.gates, pre.chunk(self.num_gates, dim=-1)))

        def gate(name: str, cell_state: Tensor) -> Tensor | None:
            if name not in blocks:
                return None
            z = blocks[name]
            if name in self.peepholes:
                z = z + p[f"weight_c{name}"] * cell_state
            if self.full_gate_recurrence:
                z = z + rec["ifo".index(name)]
            return torch.sigmoid(z)

        i = gate("i", c)
        f = (1.0 - i) if self.coupled else gate("f", c)
        g = torch.tanh(blocks["g"]) if self.input_activation else blocks["g"]
        c_new = (c if f is None else f * c) + (g if i is None else i * g)
        o = gate("o", c_new)
        act = torch.tanh(c_new) if self.output_activation else c_new
        h_new = act if o is None else o * act
        if self.proj_size:
            h_new = F.linear(h_new, p["weight_hr"])
        if ctx.record is not None:
            for name, v in (("i", i), ("f", f), ("g", g), ("o", o)):
                if v is not None:
                    ctx.emit(name, v)
            ctx.emit("c", c_new)
        if self.full_gate_recurrence:
            one = torch.ones_like(c_new)
            a = torch.cat([one if v is None else v for v in (i, f, o)], dim=-1)
            return h_new, c_new, a
        return h_new, c_new


class PeepholeLSTMCell(LSTMCell):
    r"""LSTM with peephole connections (Gers & Schmidhuber 2000, "Recurrent nets that time and count").

    i and f look at :math:`c_{t-1}`, o looks at :math:`c_t` through diagonal weights ``weight_ci``,
    ``weight_cf``, ``weight_co`` (H,); see :class:`LSTMCell` for the equations.  ``peepholes`` selects the
    gates (default all three, e.g. ``peepholes="f"`` for a forget-gate peephole only).
    """

    kind = "peephole"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 peepholes: bool | str | Iterable[str] = True, **kwargs) -> None:
        super().__init__(input_size, hidden_size, bias, peepholes=peepholes, **kwargs)


class CIFGLSTMCell(LSTMCell):
    r"""Coupled input-forget gate LSTM (CIFG; Greff et al. 2015, as in the GRU's update gate).

    .. math::
        f_t = 1 - i_t

    and otherwise :class:`LSTMCell`; the weights hold the blocks i, g, o (3H rows), no forget-gate block.
    """

    kind = "cifg"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, **kwargs) -> None:
        super().__init__(input_size, hidden_size, bias, coupled=True, **kwargs)


#: Greff et al. (2015) variants as LSTMCell options. "V" (vanilla) has peepholes on all gates and both
#: activations; every other variant changes one thing relative to V.
GREFF_VARIANTS: dict[str, dict[str, object]] = {
    "V": {"peepholes": True},
    "NIG": {"peepholes": ("f", "o"), "input_gate": False},
    "NFG": {"peepholes": ("i", "o"), "forget_gate": False},
    "NOG": {"peepholes": ("i", "f"), "output_gate": False},
    "NIAF": {"peepholes": True, "input_activation": False},
    "NOAF": {"peepholes": True, "output_activation": False},
    "NP": {"peepholes": False},
    "CIFG": {"peepholes": ("i", "o"), "coupled": True},
    "FGR": {"peepholes": True, "full_gate_recurrence": True},
}


class GreffLSTMCell(LSTMCell):
    r"""One of the eight LSTM variants of Greff et al., "LSTM: A Search Space Odyssey" (2015).

    ``variant`` is one of V, NIG, NFG, NOG, NIAF, NOAF, NP, CIFG, FGR (see :data:`GREFF_VARIANTS`):

    - V: vanilla LSTM with peepholes on i, f, o (the equations of :class:`LSTMCell`).
    - NIG: :math:`i_t = 1`.  NFG: :math:`f_t = 1`.  NOG: :math:`o_t = 1`.
    - NIAF: :math:`g_t = W_{ig} x_t + W_{hg} h_{t-1} + b_g` (no tanh).  NOAF: :math:`h_t = o_t ⊙ c_t`.
    - NP: no peepholes.  CIFG: :math:`f_t = 1 - i_t`.
    - FGR: :math:`i, f, o` pre-activations add :math:`W_{gg}[i, f, o]_{t-1}` (full gate recurrence).

    Deviation: Greff's peephole for a removed gate is removed with it; the forget peephole of CIFG goes with
    the forget gate.
    """

    kind = "greff"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, variant: str = "V",
                 **kwargs) -> None:
        key = variant.upper() if isinstance(variant, str) else variant
        if key not in GREFF_VARIANTS:
            raise ValueError(f"variant: expected one of {sorted(GREFF_VARIANTS)}, got {variant!r}")
        self.variant = key
        options = dict(GREFF_VARIANTS[key])
        options.update(kwargs)
        super().__init__(input_size, hidden_size, bias, **options)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, variant={self.variant!r}"
