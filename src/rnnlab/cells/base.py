"""The single-step cell contract that every recurrent variant implements.

A cell is a *definition*: which parameters it has (:class:`ParamSpec`), how the input is projected for all
time steps at once (:meth:`RecurrentCell.project_input`) and how one step maps ``(x_t, state) -> state``
(:meth:`RecurrentCell.step`).  Cells read their weights from a mapping ``p`` passed in, never from ``self``,
so the sequence wrapper (:class:`rnnlab.Recurrent`) can own the parameters under ``torch.nn`` names
(``weight_ih_l0``, ``weight_hh_l1_reverse``, ...) while the very same cell object describes the step.
Used on its own, a cell is an ``nn.Module`` with its parameters (``weight_ih``, ``weight_hh``, ``bias_ih``,
``bias_hh`` like ``torch.nn.LSTMCell``) and ``forward(input, hx)`` behaves like the ``torch.nn`` cells.

Notation used in every docstring: B batch, T time, I input size, H hidden size, G number of gate blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

State = tuple[Tensor, ...]
Params = Mapping[str, Tensor]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a cell: its name (``torch.nn`` cell naming), shape and initialisation.

    ``init`` is ``"uniform"`` (U(-1/sqrt(H), 1/sqrt(H)), the ``torch.nn`` default), ``"zeros"`` or ``"ones"``.
    """

    name: str
    shape: tuple[int, ...]
    init: str = "uniform"


class StepContext:
    """Per-step extras the wrapper hands to :meth:`RecurrentCell.step`.

    - ``rec_mask``: variational recurrent dropout mask (B, H) or ``None``; cells call :meth:`drop` on the
      hidden state exactly where it enters a recurrent weight matrix (Gal & Ghahramani 2016).
    - ``lower``: the state of the layer below at this step (depth-gated cells), ``None`` on the first layer.
    - ``record``: a dict of lists, or ``None``; cells call :meth:`emit` for each gate / candidate so that
      inspection can see inside without changing the outputs.  When off it costs one ``is None`` test.
    """

    __slots__ = ("rec_mask", "lower", "record")

    def __init__(self, rec_mask: Tensor | None = None, lower: State | None = None,
                 record: dict[str, list[Tensor]] | None = None) -> None:
        self.rec_mask = rec_mask
        self.lower = lower
        self.record = record

    def drop(self, h: Tensor) -> Tensor:
        return h if self.rec_mask is None else h * self.rec_mask

    def emit(self, name: str, value: Tensor) -> None:
        if self.record is not None:
            self.record.setdefault(name, []).append(value)


NO_CONTEXT = StepContext()


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int, else raise naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


class RecurrentCell(nn.Module):
    """Base class of all cells: a single recurrent step ``(x_t, state) -> state``.

    Subclasses define :attr:`state_names`, :meth:`param_specs` and :meth:`step`; most reuse the default
    :meth:`project_input` (``x @ weight_ihᵀ + bias_ih`` for all steps as one GEMM).  The first state
    component is always the output ``h``.

    Args:
        input_size: I, features of ``x_t``.
        hidden_size: H, units of the state.
        bias: if ``False`` the cell has no bias parameters.
    """

    #: names of the state components; the first is the output h.
    state_names: ClassVar[tuple[str, ...]] = ("h",)
    #: the cell reads the state of the layer below (``ctx.lower``); the wrapper then provides it.
    needs_lower: ClassVar[bool] = False
    #: short name used by the registry, the CLI and kernel dispatch.
    kind: ClassVar[str] = "cell"

    def __new__(cls, *args, **kwargs):
        # The constructor arguments, kept so that an equivalent cell can be rebuilt from a string: the generic
        # driver's registered op (backends/cpp/generic_ops.py) cannot take a cell object, only its description.
        cell = super().__new__(cls)
        object.__setattr__(cell, "_init_args", (args, kwargs))  # plain attribute, set before Module.__init__
        return cell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        if not isinstance(bias, bool):
            raise TypeError(f"bias: expected bool, got {type(bias).__name__} {bias!r}")
        self.bias = bias
        self._factory = {"device": device, "dtype": dtype}

    def _register_params(self) -> None:
        """Create the parameters from :meth:`param_specs`; subclasses call this at the end of ``__init__``."""
        for spec in self.param_specs():
            self.register_parameter(spec.name, nn.Parameter(torch.empty(spec.shape, **self._factory)))
        self.reset_parameters()

    # --- definition -------------------------------------------------------------------------------------
    def param_specs(self) -> list[ParamSpec]:
        raise NotImplementedError

    def linear_specs(self, ih_rows: int, hh_rows: int = 0, hh_cols: int | None = None) -> list[ParamSpec]:
        """``weight_ih`` (ih_rows, I), ``weight_hh`` (hh_rows, hh_cols or H) and, with ``bias``, ``bias_ih`` /
        ``bias_hh``, in ``torch.nn`` order (it fixes the ``state_dict`` order); ``hh_rows=0``: no recurrent part."""
        specs = [ParamSpec("weight_ih", (ih_rows, self.input_size))]
        if hh_rows:
            specs.append(ParamSpec("weight_hh", (hh_rows, hh_cols or self.hidden_size)))
        if self.bias:
            specs.append(ParamSpec("bias_ih", (ih_rows,)))
            if hh_rows:
                specs.append(ParamSpec("bias_hh", (hh_rows,)))
        return specs

    def state_sizes(self) -> tuple[int, ...]:
        """Feature size of each state component (defaults to H for all)."""
        return (self.hidden_size,) * len(self.state_names)

    @property
    def output_size(self) -> int:
        return self.state_sizes()[0]

    def init_parameters(self, p: Mapping[str, Tensor]) -> None:
        """Initialise the tensors in ``p`` in place according to :meth:`param_specs`."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for spec in self.param_specs():
                t = p[spec.name]
                if spec.init == "uniform":
                    t.uniform_(-bound, bound)
                elif spec.init == "zeros":
                    t.zero_()
                elif spec.init == "ones":
                    t.fill_(1.0)
                else:  # pragma: no cover - a programming error in a cell definition
                    raise ValueError(f"unknown init {spec.init!r} for parameter {spec.name}")

    def bind(self, params_of: Callable[[], dict[str, Tensor]] | None) -> None:
        """Read the parameters through ``params_of`` instead of holding them: a :class:`~rnnlab.Recurrent`
        owns its cells' weights under ``torch.nn`` names and binds each cell to its layer's, so the cell keeps
        working on its own (``forward``, ``reset_parameters``); ``None`` unbinds."""
        self._params_of = params_of

    def cell_params(self) -> dict[str, Tensor]:
        """The parameters by the cell's own names: its own, or its layer's in the sequence wrapper that owns it."""
        params_of = self.__dict__.get("_params_of")
        return params_of() if params_of is not None else dict(self.named_parameters(recurse=False))

    def reset_parameters(self) -> None:
        self.init_parameters(self.cell_params())

    def init_state(self, batch: int, *, dtype: torch.dtype, device: torch.device) -> State:
        """Zero state, one (B, S_k) tensor per component."""
        return tuple(torch.zeros(batch, s, dtype=dtype, device=device) for s in self.state_sizes())

    # --- computation ------------------------------------------------------------------------------------
    def project_input(self, x: Tensor, p: Params) -> Tensor:
        """Input part of all gates for every step at once: (..., I) -> (..., G*H)."""
        return F.linear(x, p["weight_ih"], p.get("bias_ih"))

    def step(self, xp_t: Tensor, state: State, p: Params, ctx: StepContext = NO_CONTEXT) -> State:
        """One step: ``xp_t`` is this step's :meth:`project_input` (B, G*H); returns the new state."""
        raise NotImplementedError

    def sequence(self, xp: Tensor, state: State, p: Params, mask: Tensor | None,
                 record: dict[str, list[Tensor]] | None = None) -> tuple[Tensor, State] | None:
        """Optional whole-sequence fast path (e.g. a parallel scan).

        ``xp`` is (T, B, G*H), ``mask`` (T, B, 1) bool marking valid steps or ``None``.  Returns the outputs
        (T, B, H_out) with padded steps zeroed and the final state, or ``None`` when the cell has no such path.
        """
        return None

    def driver_state(self, state: State) -> Tensor:
        """The state as the generic C++ driver carries it: (B, S*H), S parts of H units side by side.  Cells
        with a part of another width (the clockwork counter) override this and :meth:`from_driver_state`."""
        return state[0].contiguous() if len(state) == 1 else torch.cat([s.contiguous() for s in state], dim=-1)

    def from_driver_state(self, s: Tensor) -> State:
        """The inverse of :meth:`driver_state`: (B, S*H) -> the cell's state parts."""
        sizes = self.state_sizes()
        return (s,) if len(sizes) == 1 else tuple(s.split(list(sizes), dim=-1))

    def driver_supported(self) -> bool:
        """Whether the generic C++ driver's rule for this cell class (its ``driver_kernel``) covers this
        instance's options; cells whose rule covers only some options override it."""
        return True

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def forward(self, input: Tensor, hx: Tensor | Sequence[Tensor] | None = None) -> Tensor | State:
        """One step on its own, like ``torch.nn.LSTMCell``: input (B, I) or (I,); returns h or a tuple."""
        from rnnlab.validation import check_cell_call

        x, state, unbatched = check_cell_call(self, input, hx)
        p = self.cell_params()
        new = self.step(self.project_input(x, p), state, p)
        if unbatched:
            new = tuple(s.squeeze(0) for s in new)
        return new[0] if len(new) == 1 else new
