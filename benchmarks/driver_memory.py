"""The C++ driver's memory choices, each timed on and off in one process: huge pages, the inference entry.

``--compare huge_pages``: the driver advises its large per-call buffers (outputs, states, saved activations,
gradients) onto transparent huge pages (``backends/cpp/buffers.h``); training and inference of each cell and
shape with the switch (``set_huge_pages``) on and off.  The machine's THP mode
(``/sys/kernel/mm/transparent_hugepage/enabled``) is recorded: with ``never`` the advice does nothing.

``--compare infer``: without autograd the backend calls ``<rule>_infer`` (two state rows and one step's saved
blocks, reused) instead of ``<rule>_forward`` (every step's states and saved blocks); both entries are called
directly with the arguments the backend passes.

On and off alternate inside every repeat (the order flips each time); the report gives medians and on / off.

Example:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/driver_memory.py --compare huge_pages --repeats 7 \
        --out docs/bench/driver_memory_huge_pages.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

import rnnlab
from rnnlab.backends.cpp import generic_registry
from rnnlab.backends.cpp.generic_loader import load_generic

from interleave import alternate, write_report  # benchmarks/interleave.py

SHAPES: list[tuple[int, int, int]] = [(200, 16, 128), (100, 64, 256), (50, 128, 512), (20, 32, 1024)]
CELLS = ["gru", "peephole", "slstm", "mut1", "ln_gru", "indrnn"]
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str:
    """The bracketed word of the kernel's THP setting ("madvise", "always", "never"), or "unknown"."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return "unknown"
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def _module_call(mod: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    def train() -> None:
        mod(x)[0].sum().backward()

    def infer() -> None:
        with torch.no_grad():
            mod(x)
    return train if mode == "train" else infer


def huge_pages(cell: str, shape: tuple[int, int, int], mode: str, repeats: int) -> dict[str, object]:
    """Whole training steps / inference calls with the huge-page advice on and off."""
    ext = load_generic()
    T, B, H = shape
    torch.manual_seed(0)
    f = _module_call(rnnlab.Recurrent(cell, H, H), torch.randn(T, B, H), mode)
    try:
        ms = alternate({"on": (lambda: ext.set_huge_pages(True), f), "off": (lambda: ext.set_huge_pages(False), f)},
                       repeats)
    finally:
        ext.set_huge_pages(True)
    return {"cell": cell, "T": T, "B": B, "H": H, "mode": mode, "on_ms": ms["on"], "off_ms": ms["off"],
            "on_vs_off": ms["on"] / ms["off"]}


def _infer_arguments(mod: torch.nn.Module, x: torch.Tensor) -> tuple[str, tuple]:
    """The rule name and the arguments the backend passes to ``<rule>_infer`` for layer 0 of ``mod`` on ``x``."""
    ext = load_generic()
    seen: dict[str, object] = {}

    class Capture:  # the extension, noting the first inference call
        def __getattr__(self, attr: str):
            fn = getattr(ext, attr)
            if not attr.endswith("_infer") or seen:
                return fn
            return lambda *args: seen.update(name=attr[:-len("_infer")], args=args) or fn(*args)

    real = generic_registry.load_generic
    generic_registry.load_generic = Capture  # type: ignore[assignment]
    try:
        with torch.no_grad():
            mod(x)
    finally:
        generic_registry.load_generic = real  # type: ignore[assignment]
    if not seen:
        raise SystemExit(f"driver_memory: {type(mod.cell).__name__} did not run the driver's inference entry")
    return seen["name"], seen["args"]  # type: ignore[return-value]


def infer_entry(cell: str, shape: tuple[int, int, int], repeats: int) -> dict[str, object]:
    """``<rule>_infer`` against ``<rule>_forward`` on the same arguments (extension calls, no Python around)."""
    ext = load_generic()
    T, B, H = shape
    torch.manual_seed(0)
    name, args = _infer_arguments(rnnlab.Recurrent(cell, H, H), torch.randn(T, B, H))
    infer, forward = getattr(ext, f"{name}_infer"), getattr(ext, f"{name}_forward")
    with torch.no_grad():
        ms = alternate({"on": (lambda: None, lambda: infer(*args)), "off": (lambda: None, lambda: forward(*args))},
                       repeats)
    return {"cell": cell, "T": T, "B": B, "H": H, "mode": "infer", "on_ms": ms["on"], "off_ms": ms["off"],
            "on_vs_off": ms["on"] / ms["off"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", choices=["huge_pages", "infer"], required=True)
    ap.add_argument("--cells", nargs="+", default=CELLS)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if load_generic() is None:
        raise SystemExit("driver_memory: the C++ driver extension did not build; nothing to measure")
    on_off = {"huge_pages": ("advice on", "off"), "infer": ("_infer", "_forward")}[args.compare]
    print(f"compare: {args.compare}, THP mode: {_thp_mode()}, threads: {torch.get_num_threads()}")
    print(f"{'cell':10}{'T,B,H':>14}{'mode':>7}{on_off[0] + ' ms':>15}{on_off[1] + ' ms':>13}{'ratio':>8}")
    rows = []
    for cell in args.cells:
        for shape in SHAPES:
            for mode in ("train", "infer") if args.compare == "huge_pages" else ("infer",):
                row = (huge_pages(cell, shape, mode, args.repeats) if args.compare == "huge_pages"
                       else infer_entry(cell, shape, args.repeats))
                rows.append(row)
                print(f"{cell:10}{','.join(map(str, shape)):>14}{mode:>7}{row['on_ms']:>15.2f}{row['off_ms']:>13.2f}"
                      f"{row['on_vs_off']:>8.3f}", flush=True)
    if args.out is not None:
        report = {"settings": {"compare": args.compare, "on": on_off[0], "off": on_off[1], "thp_mode": _thp_mode(),
                               "threads": torch.get_num_threads(), "repeats": args.repeats,
                               "torch": torch.__version__}, "rows": rows}
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
