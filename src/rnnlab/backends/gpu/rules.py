"""Which Triton rule computes a cell: each rule file registers its cell class here (no dispatch ladder)."""

from __future__ import annotations

from typing import Callable

from rnnlab.backends.gpu.driver import CellRule
from rnnlab.cells.base import RecurrentCell

#: cell class -> factory(cell) returning its rule, or None when the cell's options are not covered
_RULES: dict[type[RecurrentCell], Callable[[RecurrentCell], CellRule | None]] = {}


def register_rule(cell_class: type[RecurrentCell], factory: Callable[[RecurrentCell], CellRule | None]) -> None:
    _RULES[cell_class] = factory


def _same_math(cell: RecurrentCell, base: type[RecurrentCell]) -> bool:
    """``cell`` is ``base`` or a subclass that only sets options (same step and projection code)."""
    cls = type(cell)
    return cls.step is base.step and cls.project_input is base.project_input and cls.sequence is base.sequence


def rule_for(cell: RecurrentCell) -> CellRule | None:
    """The rule of the nearest registered class in the cell's MRO, if the cell has that class's math."""
    _load()
    for cls in type(cell).__mro__:
        factory = _RULES.get(cls)
        if factory is not None:
            return factory(cell) if _same_math(cell, cls) else None
    return None


def _load() -> None:
    # importing a rule file registers it
    from rnnlab.backends.gpu import (  # noqa: F401
        clockwork, depth_gated, elman, gru, indrnn, layernorm, lstm, minimal, mut, slstm, sru,
    )
