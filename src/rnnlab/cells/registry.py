"""Cell registry: names used by Recurrent, the CLI and the kernels map to cell classes and presets."""

from __future__ import annotations

import functools
from typing import Any, Callable

from rnnlab.cells.base import RecurrentCell

_REGISTRY: dict[str, Callable[..., RecurrentCell]] = {}
_DOCS: dict[str, str] = {}


def register_cell(name: str, factory: Callable[..., RecurrentCell], doc: str = "", **preset: Any) -> None:
    """Register ``factory`` (a cell class) under ``name``; ``preset`` fixes keyword options (e.g. a variant)."""
    key = name.lower()
    _REGISTRY[key] = functools.partial(factory, **preset) if preset else factory
    _DOCS[key] = doc or (factory.__doc__ or "").strip().splitlines()[0]


def cell_names() -> list[str]:
    """All registered cell names."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def cell_doc(name: str) -> str:
    _ensure_loaded()
    return _DOCS[name.lower()]


def resolve_cell(cell: object) -> Callable[..., RecurrentCell]:
    """A name, a RecurrentCell subclass or a factory callable -> a factory."""
    if isinstance(cell, str):
        _ensure_loaded()
        key = cell.lower()
        if key not in _REGISTRY:
            raise ValueError(f"cell: unknown cell {cell!r}; expected one of {', '.join(sorted(_REGISTRY))}")
        return _REGISTRY[key]
    if isinstance(cell, type) and issubclass(cell, RecurrentCell):
        return cell
    if isinstance(cell, RecurrentCell):
        raise TypeError("cell: pass the cell class or its name, not an instance (each layer needs its own)")
    if callable(cell):
        return cell
    raise TypeError(f"cell: expected a cell name, a RecurrentCell subclass or a factory, got {type(cell).__name__}")


def _ensure_loaded() -> None:
    # importing the cells package registers the built-in cells
    import rnnlab.cells  # noqa: F401
