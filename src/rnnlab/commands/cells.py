"""`rnnlab cells`: list every registered cell with its paper."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="list the available cells", description="List every registered cell name "
                       "(usable as --cell and in rnnlab.Recurrent) with the paper it comes from.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.cells import cell_doc, cell_names

    names = cell_names()
    width = max(len(n) for n in names)
    for n in names:
        print(f"{n:<{width}}  {cell_doc(n)}")
    return 0
