"""The one sequence wrapper: time order, direction, lengths, layers, dropout and state for any cell."""

from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from rnnlab.backends import LayerCall, aten_stack, get_backend, run_layer
from rnnlab.cells.base import RecurrentCell, State, check_positive_int
from rnnlab.cells.registry import resolve_cell
from rnnlab.sequence import repack, unpack
from rnnlab.validation import DtypeError, OptionError, check_finite, check_input, check_lengths, check_state

CellFactory = Callable[..., RecurrentCell]


def _cell_options(factory: CellFactory) -> list[str]:
    """Keyword options a cell factory accepts beyond (input_size, hidden_size, bias, device, dtype)."""
    import inspect

    fixed = {"self", "input_size", "hidden_size", "bias", "device", "dtype"}
    seen: list[str] = []
    func = factory.func if isinstance(factory, functools.partial) else factory
    preset = factory.keywords if isinstance(factory, functools.partial) else {}
    classes = func.__mro__ if isinstance(func, type) else (func,)
    for c in classes:  # subclasses pass **kwargs on to their base: collect along the MRO
        target = c.__init__ if isinstance(c, type) else c
        if target is object.__init__ or getattr(c, "__module__", "").startswith("torch"):
            continue
        try:
            params = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):  # pragma: no cover - builtins
            continue
        for p in params:
            if p.kind is p.KEYWORD_ONLY and p.name not in fixed and p.name not in preset and p.name not in seen:
                seen.append(p.name)
    return seen


class Recording:
    """Per-step activations captured by :meth:`Recurrent.recording`.

    ``gates[(layer, direction)][name]`` is a tensor shaped like the output's time/batch layout
    ((B, T, H) when ``batch_first`` else (T, B, H); (T, H) for an unbatched input; a PackedSequence input is
    recorded padded, in the module's layout); names are the cell's gates (e.g. i, f, g, o, c for LSTM,
    r, z, n for GRU) plus ``h``.  Padded steps are zero.  Each forward call inside the block overwrites
    the previous call's records.
    """

    def __init__(self) -> None:
        self.gates: dict[tuple[int, int], dict[str, Tensor]] = {}

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        return self.gates[key]

    def __repr__(self) -> str:
        return f"Recording({ {k: sorted(v) for k, v in self.gates.items()} })"


class Recurrent(nn.Module):
    r"""Runs any :class:`~rnnlab.cells.RecurrentCell` over sequences, like ``torch.nn.LSTM`` does for LSTM.

    Args:
        cell: a registered name (``"lstm"``, ``"gru"``, ``"peephole"``, ... see :func:`rnnlab.cell_names`),
            a :class:`RecurrentCell` subclass, or a callable ``(input_size, hidden_size, bias, **kw) -> cell``.
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as in ``torch.nn.LSTM``.
        recurrent_dropout: variational dropout on h where it enters the recurrent weights, one mask per
            sequence for all steps (Gal & Ghahramani 2016); training only.
        zoneout: each unit of h and c keeps its previous value with this probability (Krueger et al. 2016);
            in eval the expectation is used.
        weight_drop: DropConnect on the hidden-to-hidden weights (``weight_hh``), one mask per forward call
            shared by every step (Wan et al. 2013; AWD-LSTM, Merity et al. 2017); training only.  The dropped
            weight is what every backend receives, so the fused kernels run it unchanged.
        backend: ``"auto"`` (fastest that supports the call), ``"reference"`` or a registered name.
        check_finite: raise ``ValueError`` on NaN/inf in the input or initial state.
        **cell_kwargs: options of the cell (e.g. ``proj_size``, ``peepholes``, ``reset_after``).

    Parameters are named as in ``torch.nn`` (``weight_ih_l0``, ``bias_hh_l1_reverse``, ``weight_hr_l0``, plus
    cell-specific names such as ``weight_ci_l0``), so ``state_dict`` moves between rnnlab and ``torch.nn``.

    ``forward(input, hx=None, lengths=None)`` takes (T, B, I) (``batch_first``: (B, T, I)), an unbatched
    (T, I) or a ``PackedSequence``; ``lengths`` (B,) marks valid steps of a padded batch.  It returns
    ``(output, h_n)`` for single-state cells and ``(output, (h_n, c_n, ...))`` otherwise; output is
    (T, B, D*H_out) and each final state (num_layers*D, B, S_k), taken at each sequence's last valid step.

    Example:
        >>> rnn = Recurrent("peephole", 8, 16, num_layers=2, batch_first=True)
        >>> out, (h, c) = rnn(torch.randn(4, 10, 8), lengths=[10, 7, 3, 1])
        >>> tuple(out.shape), tuple(h.shape)
        ((4, 10, 16), (2, 4, 16))
    """

    def __init__(self, cell: str | type[RecurrentCell] | CellFactory, input_size: int, hidden_size: int,
                 num_layers: int = 1, bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 weight_drop: float = 0.0,
                 backend: str = "auto", check_finite: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, **cell_kwargs: Any) -> None:
        super().__init__()
        factory = resolve_cell(cell)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            # torch.nn fails here with "Only Tensors of floating point ... can require gradients"
            raise DtypeError(f"dtype: expected a floating-point dtype (torch.float32, torch.float64, ...), "
                             f"got {dtype!r}")
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        for name, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected bool, got {type(value).__name__} {value!r}")
        # dropout=1 is allowed as in torch.nn; a recurrent mask or zoneout of 1 would freeze the state
        for name, value, closed in (("dropout", dropout, True), ("recurrent_dropout", recurrent_dropout, False),
                                    ("zoneout", zoneout, False), ("weight_drop", weight_drop, False)):
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if not number or not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
                interval = "[0, 1]" if closed else "[0, 1)"
                raise ValueError(f"{name}: expected a probability in {interval}, got {value!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers=1",
                          stacklevel=2)
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a backend name, got {type(backend).__name__}")
        if backend != "auto":
            get_backend(backend)  # fail at construction, not at the first forward, on a misspelt name
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite: expected bool, got {type(check_finite).__name__} {check_finite!r}")
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.recurrent_dropout = float(recurrent_dropout)
        self.zoneout = float(zoneout)
        self.weight_drop = float(weight_drop)
        self.backend = backend
        self.check_finite = check_finite
        self.cell_kwargs = dict(cell_kwargs)
        D = 2 if bidirectional else 1
        # cells hold no parameters here: the wrapper owns them under torch.nn names, cells define the step
        self._cells: list[list[RecurrentCell]] = []
        # (cell's name, module attribute name) per layer/direction, built once instead of on every forward
        self._param_names: list[list[list[tuple[str, str]]]] = []
        in_size = input_size
        for layer in range(num_layers):
            row, names_row = [], []
            for direction in range(D):
                try:
                    c = factory(in_size, hidden_size, bias, device=device, dtype=dtype, **cell_kwargs)
                except TypeError as e:
                    option = str(e).split()[-1].strip("'") if "unexpected keyword argument" in str(e) else None
                    if option not in cell_kwargs:
                        raise
                    # name the option and the cell instead of a bare "__init__() got an unexpected keyword"
                    raise OptionError(f"{option}: not an option of cell {cell!r}; expected one of "
                                    f"{_cell_options(factory)}, got {option}={cell_kwargs[option]!r}") from None
                if not isinstance(c, RecurrentCell):
                    raise TypeError(f"cell: the factory must build a RecurrentCell, got {type(c).__name__}")
                suffix = self._suffix(layer, direction)
                names = list(c._parameters)
                for pname in names:
                    self.register_parameter(pname + suffix, c._parameters[pname])
                c._parameters.clear()
                # the cell reads its layer's weights from here: rnn.cell(x_t, hx) and reset_parameters work
                c.bind(functools.partial(self.layer_params, layer, direction))
                row.append(c)
                names_row.append([(pname, pname + suffix) for pname in names])
            in_size = D * row[0].output_size  # the next layer sees both directions' outputs
            self._cells.append(row)
            self._param_names.append(names_row)
        self._recording: Recording | None = None
        self._probes: dict[tuple[int, int], Tensor] | None = None
        if weight_drop and "weight_hh" not in dict(self._param_names[0][0]):
            raise OptionError(f"weight_drop: cell {cell!r} has no hidden-to-hidden weight (weight_hh) to drop, "
                              f"got weight_drop={weight_drop!r}")
        # how extra_repr names the cell: the registered name as given, else the class or factory name
        self._cell_label = repr(cell) if isinstance(cell, str) else getattr(cell, "__name__", type(cell).__name__)

    # --- structure --------------------------------------------------------------------------------------
    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction else "")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def cell(self) -> RecurrentCell:
        """The first layer's cell (its definition; parameters live on this module)."""
        return self._cells[0][0]

    def cells(self) -> Iterator[tuple[int, int, RecurrentCell]]:
        for layer, row in enumerate(self._cells):
            for direction, c in enumerate(row):
                yield layer, direction, c

    def layer_params(self, layer: int, direction: int = 0) -> dict[str, Tensor]:
        """The parameters of one layer/direction under the cell's own names (``weight_ih``, ...)."""
        # getattr, not self._parameters: torch.nn.utils.parametrize replaces parameters by properties
        params = self._parameters  # plain parameters: a dict lookup; parametrized ones: through getattr
        return {n: params[full] if full in params else getattr(self, full)
                for n, full in self._param_names[layer][direction]}

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.cell.state_names

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Like ``torch.nn.LSTM.all_weights``: the parameters of each layer/direction, in order."""
        return [list(self.layer_params(l, d).values()) for l, d, _ in self.cells()]

    def flatten_parameters(self) -> None:
        """As ``torch.nn.RNNBase``: on CUDA, a stack torch.nn's op can run gets its weights in one contiguous
        cuDNN buffer (see :mod:`rnnlab.backends.aten_stack`); elsewhere nothing to do."""
        aten_stack.flatten(self)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.flatten_parameters()  # after .cuda() / .to(): cuDNN wants one weight buffer, as torch.nn makes
        return out

    def train(self, mode: bool = True) -> "Recurrent":
        super().train(mode)
        for _, _, c in self.cells():  # cells are not submodules (their weights live here): tell them too
            c.train(mode)
        return self

    def reset_parameters(self) -> None:
        for layer, direction, c in self.cells():
            c.init_parameters(self.layer_params(layer, direction))

    def _repr_head(self) -> str:
        """What extra_repr shows before the sizes: the cell (the drop-in modules show nothing, like torch.nn)."""
        return f"{self._cell_label}, "

    def extra_repr(self) -> str:
        # torch.nn.RNNBase's order and defaults first, so the drop-in modules print exactly like torch.nn
        s = f"{self._repr_head()}{self.input_size}, {self.hidden_size}"
        options = dict(self.cell_kwargs)
        if options.get("proj_size", 0) != 0:
            s += f", proj_size={options['proj_size']}"
        options.pop("proj_size", None)
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("recurrent_dropout", 0.0), ("zoneout", 0.0),
                              ("weight_drop", 0.0),
                              ("backend", "auto"), ("check_finite", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        for k, v in options.items():
            s += f", {k}={v!r}"
        return s

    def state_shapes(self, batch: int) -> list[tuple[int, int, int]]:
        """Shape of each part of ``hx`` / the final state: (num_layers*D, B, S_k)."""
        LD = self.num_layers * self.num_directions
        return [(LD, batch, s) for s in self.cell.state_sizes()]

    # --- recording ----------------------------------------------------------------------------------------
    @contextmanager
    def recording(self) -> Iterator[Recording]:
        """Record every gate's per-step activation during the forward calls inside the block.

        Example:
            >>> rnn = Recurrent("lstm", 3, 4)
            >>> with rnn.recording() as rec:
            ...     _ = rnn(torch.randn(5, 2, 3))
            >>> tuple(rec[(0, 0)]["f"].shape)
            (5, 2, 4)
        """
        previous, self._recording = self._recording, Recording()
        try:
            yield self._recording
        finally:
            self._recording = previous

    @contextmanager
    def probing(self) -> Iterator[dict[tuple[int, int], Tensor]]:
        """Make every step's output state h_t a node that gradients can be read at, for gradient-flow inspection.

        Each forward call inside the block adds, per (layer, direction), a zero tensor (T, B, H_out) requiring
        grad (time-major, input time order, whatever the module's layout) to h at every step, and stores it in
        the yielded dict under ``(layer, direction)``; outputs are unchanged.  After a backward,
        ``probes[(l, d)].grad[t]`` is ∂loss/∂h_t through every later step, layer and output that h_t reaches.
        The layers run on the reference backend (fused kernels keep no per-step graph).

        Example:
            >>> rnn = Recurrent("rnn", 3, 4)
            >>> with rnn.probing() as probes:
            ...     out, _ = rnn(torch.randn(5, 2, 3))
            >>> out[-1].sum().backward()
            >>> tuple(probes[(0, 0)].grad.shape), bool(probes[(0, 0)].grad[0].abs().sum() > 0)
            ((5, 2, 4), True)
        """
        previous, self._probes = self._probes, {}
        try:
            yield self._probes
        finally:
            self._probes = previous

    # --- computation ----------------------------------------------------------------------------------------
    def forward(self, input: Tensor | PackedSequence, hx: Tensor | tuple[Tensor, ...] | None = None,
                lengths: Tensor | list[int] | None = None):
        ref = getattr(self, self._param_names[0][0][0][1])  # dtype/device every input must match
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence already carries its lengths; pass lengths=None")
            x, lens = unpack(packed)
            x, _ = check_input(x, self.input_size, False, ref)
            unbatched = False
        else:
            x, unbatched = check_input(input, self.input_size, self.batch_first, ref)
            if unbatched and lengths is not None:
                raise ValueError("lengths: not supported for an unbatched (T, input_size) input; "
                                 "pass a (T, B, input_size) batch or lengths=None")
            lens = None if lengths is None else check_lengths(lengths, x.shape[1], x.shape[0])
        if lens is not None and not torch.compiler.is_compiling() and bool((lens == x.shape[0]).all()):
            lens = None  # all sequences full: skip the masking work
        T, B = x.shape[0], x.shape[1]
        D = self.num_directions
        # an empty batch (allowed, as in torch.nn) runs on the reference backend: zero-size matmuls give the
        # (T, 0, H) output and zero gradients; fused kernels need not handle B = 0
        backend = self.backend if B > 0 else "reference"
        if hx is None:  # zeros made per layer/direction directly: no (L*D, B, S) tensor to slice
            sizes = self.cell.state_sizes()
            per_k = [tuple(torch.zeros(B, S, dtype=x.dtype, device=x.device) for S in sizes)
                     for _ in range(self.num_layers * D)]
            if self.check_finite:
                check_finite("input", x)
        else:
            state0 = self._initial_state(hx, B, unbatched, x, ref)
            if self.check_finite:
                check_finite("input", x)
                for name, s in zip(self.state_names, state0):
                    check_finite(f"hx ({name})", s)
            # initial state of each layer/direction k: one unbind per part, not an index op per (k, part)
            per_k = list(zip(*(s.unbind(0) for s in state0)))
        probes = self._probes
        if B > 0 and probes is None and aten_stack.route_applies(x):
            # a plain LSTM/GRU/RNN stack on CUDA (cuDNN) or under CPU autocast: torch.nn's own op, whole stack
            routed = aten_stack.try_run(self, input, hx, lens)
            if routed is not None:
                return routed

        finals: list[list[Tensor]] = [[] for _ in self.state_names]
        lower_seq: list[State | None] = [None] * self.num_directions
        record = self._recording is not None
        for layer in range(self.num_layers):
            outs, next_lower = [], []
            needs_states = layer + 1 < self.num_layers and self._cells[layer + 1][0].needs_lower
            for direction in range(D):
                c = self._cells[layer][direction]
                k = layer * D + direction
                rec_mask = None
                if self.training and self.recurrent_dropout > 0:
                    keep = 1.0 - self.recurrent_dropout
                    rec_mask = torch.empty(B, c.output_size, dtype=x.dtype, device=x.device).bernoulli_(keep) / keep
                params = self.layer_params(layer, direction)
                if self.weight_drop and self.training:  # DropConnect: one mask on W_hh for the whole call
                    params = {**params, "weight_hh": F.dropout(params["weight_hh"], self.weight_drop, True)}
                call = LayerCall(cell=c, params=params, x=x,
                                 state=per_k[k], lengths=lens, reverse=bool(direction),
                                 lower=lower_seq[direction] if c.needs_lower else None, rec_mask=rec_mask,
                                 zoneout=self.zoneout, training=self.training, record=record,
                                 want_states=needs_states)
                if probes is not None:
                    call.probe = probes[(layer, direction)] = torch.zeros(
                        T, B, c.output_size, dtype=x.dtype, device=x.device, requires_grad=True)
                res = run_layer(call, backend)
                outs.append(res.output)
                next_lower.append(res.states)
                for acc, s in zip(finals, res.state):
                    acc.append(s)
                if record:
                    gates = dict(res.records)
                    gates["h"] = res.output
                    if self.batch_first and not unbatched:
                        gates = {n: v.transpose(0, 1) for n, v in gates.items()}
                    elif unbatched:
                        gates = {n: v.squeeze(1) for n, v in gates.items()}
                    self._recording.gates[(layer, direction)] = gates  # type: ignore[union-attr]
            x = outs[0] if D == 1 else torch.cat(outs, dim=-1)  # (T, B, D*H_out)
            lower_seq = next_lower
            if self.dropout > 0 and self.training and layer + 1 < self.num_layers:
                x = F.dropout(x, self.dropout, training=True)

        # each (num_layers*D, B, S_k); one layer/direction: a view instead of a copy
        h_n = tuple(parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts) for parts in finals)
        if packed is not None:
            output: Tensor | PackedSequence = repack(x, packed)
        elif unbatched:
            output = x.squeeze(1)
            h_n = tuple(s.squeeze(1) for s in h_n)
        else:
            output = x.transpose(0, 1) if self.batch_first else x
        return output, (h_n[0] if len(h_n) == 1 else h_n)

    def _initial_state(self, hx, B: int, unbatched: bool, x: Tensor, ref: Tensor) -> State:
        """hx in the caller's layout -> one (num_layers*D, B, S_k) tensor per state part."""
        shapes = self.state_shapes(B)
        if hx is None:
            return tuple(torch.zeros(s, dtype=x.dtype, device=x.device) for s in shapes)
        expected = [(s[0], s[2]) for s in shapes] if unbatched else shapes
        parts = check_state("hx", hx, expected, ref, self.state_names)
        return tuple(p.unsqueeze(1) for p in parts) if unbatched else parts
