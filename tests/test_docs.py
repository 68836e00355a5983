"""Every docstring example under src/rnnlab and every Python block of README.md runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import rnnlab

ROOT = Path(__file__).resolve().parents[1]


def _module_names() -> list[str]:
    names = ["rnnlab"]
    for info in pkgutil.walk_packages(rnnlab.__path__, prefix="rnnlab."):
        names.append(info.name)
    return sorted(names)


MODULES = _module_names()


def test_every_module_is_found():
    # a guard against the walk silently finding nothing (e.g. a broken __path__)
    assert {"rnnlab.recurrent", "rnnlab.modules", "rnnlab.cells.lstm"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    torch.manual_seed(0)  # examples print shapes and booleans, but keep any random draw reproducible
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {"torch": torch, "rnnlab": rnnlab}
    for test in finder.find(module, name, globs={**vars(module), **globs}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest example(s) failed in {name}"


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_python_examples():
    assert _readme_blocks(), "README.md: no ```python block found"


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    torch.manual_seed(0)
    code = _readme_blocks()[index]
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
