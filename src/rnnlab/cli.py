"""The `rnnlab` command: one sub-command per module in rnnlab.commands, user mistakes exit 2 with a message."""

from __future__ import annotations

import argparse
import importlib
import sys
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
    "inspect": "inspect",
    "cells": "cells",
    "export": "export",
    "tag": "tag",
}


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2, no stack trace."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlab", description="Recurrent networks: train, compare, "
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
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"rnnlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rnnlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
