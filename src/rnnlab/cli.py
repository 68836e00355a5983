"""The `rnnlab` command: one sub-command per module in rnnlab.commands; every failure it expects is one line.

User mistakes (:class:`UserError`, argparse errors) exit 2; resource failures (out of memory, a full, read-only
or forbidden disk: the exception classes in :func:`resource_failure`) exit 1 naming the cause and what was kept.
Any other exception is a bug in rnnlab and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys
from pathlib import Path
from typing import Sequence

#: sub-command name -> module in rnnlab.commands exposing ``register(subparsers)`` and ``run(args) -> int``
COMMANDS = {
    "train": "train",
    "eval": "evaluate",
    "generate": "generate",
    "translate": "translate",
    "predict": "predict",
    "compare": "compare",
    "demo": "demo",
    "bench": "bench",
    "inspect": "inspection",
    "cells": "cells",
    "export": "export",
    "tag": "tag",
}


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2, no stack trace."""


#: errno values that mean "the disk refused", not "rnnlab is wrong"
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.ENOMEM}
#: substrings of torch's allocator RuntimeErrors (CPU and CUDA)
_ALLOC_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (the usage text is one `--help` away) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: error: {message}")


def resource_failure(exc: BaseException) -> str | None:
    """The cause, as a short phrase, when ``exc`` means the machine ran out of memory or disk; else ``None``."""
    if isinstance(exc, MemoryError):
        return "not enough memory"
    if isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _ALLOC_MESSAGES):
        return "not enough memory"
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
        return {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                errno.ENOMEM: "not enough memory", errno.EFBIG: "file too large"}.get(exc.errno, "permission denied")
    if type(exc).__name__ == "SafetensorError":  # only writes get here: reads are checked as CheckpointError
        return "cannot write a tensor file"
    return None


def _kept(args: argparse.Namespace) -> str:
    """What survives a resource failure, for the one-line message."""
    out = getattr(args, "out", None)
    if args.command == "train" and out:
        try:
            manifest = json.loads((Path(out) / "checkpoints" / "MANIFEST.json").read_text(encoding="utf-8"))
            latest = manifest.get("latest") if isinstance(manifest, dict) else None
        except (OSError, ValueError):
            latest = None
        if isinstance(latest, str):
            return f"kept: the checkpoints of {out!r} up to {latest}; continue with `rnnlab train --resume --out {out}`"
        return f"kept: nothing, {out!r} has no completed checkpoint (writes are atomic, no partial file is left)"
    try:
        existed = bool(out) and Path(out).exists()
    except (OSError, ValueError):
        existed = False
    if existed:
        return f"kept: what {out!r} held before and the files completed so far"
    return "kept: nothing was written"


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).strip() or "(no message)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnlab", description="Recurrent networks: train, compare, "
                                     "inspect and benchmark every cell of the family.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"rnnlab.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"rnnlab.commands.{module}":
                raise
            continue  # not built yet
        mod.register(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as e:
        print(_one_line(e), file=sys.stderr)  # "rnnlab train: error: argument --lag: invalid int value: 'x'"
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"rnnlab {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rnnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        cause = resource_failure(e)
        if cause is None:
            raise  # not a user mistake nor the machine's limit: a bug, keep the traceback
        detail = _one_line(e) if str(e) else type(e).__name__
        print(f"rnnlab {args.command}: {cause} ({detail}); {_kept(args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    # `python -m rnnlab.cli`: run the imported module's main, so that UserError is the class the commands raise
    from rnnlab.cli import main as _main

    sys.exit(_main())
