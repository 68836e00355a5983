"""Data files of a task: their hashes are recorded at training time, and a checkpoint never names a file to open.

A task option that is a file path (charlm's ``path``) is data the user chose when training.  A checkpoint
records that file's SHA-256 next to the path, but ``eval``/``inspect``/``generate``/``--resume`` never open
the recorded path: the user names the file again (``--data FILE``), and its hash must match the recorded
one.  Tasks on the package-shipped corpora (no path option) are rebuilt from the installed packages.  So a
checkpoint, edited or not, cannot make rnnlab read an arbitrary local file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from rnnlab.train.checkpoint import CheckpointError

#: the task spec's field holding option -> SHA-256 of the data file it named at training time
HASHES_KEY = "data_sha256"


def is_data_option(key: str) -> bool:
    """Task options that name a local data file (by convention ``path`` or ``*_path``)."""
    return key == "path" or key.endswith("_path")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def with_data_hashes(task_spec: dict[str, Any]) -> dict[str, Any]:
    """``task_spec`` ({"name", "options"}) plus ``data_sha256``: option -> SHA-256 of every data file it names.

    Files that cannot be read are left out (building the task reports them with a clearer message).
    """
    options = task_spec.get("options") or {}
    hashes = dict(task_spec.get(HASHES_KEY) or {})
    for key, value in options.items():
        if is_data_option(key) and isinstance(value, (str, os.PathLike)) and key not in hashes:
            try:
                hashes[key] = file_sha256(value)
            except OSError:
                continue
    out = dict(task_spec)
    if hashes:
        out[HASHES_KEY] = hashes
    return out


def task_spec_from_checkpoint(config: dict[str, Any], data: str | os.PathLike | None = None,
                              flag: str = "--data") -> dict[str, Any]:
    """The task spec to rebuild a checkpoint's task with, without opening any file the checkpoint names.

    When the task was trained on a data file, ``data`` (the user's ``flag``) must name a file with the
    recorded SHA-256; it replaces the recorded path.  When it was trained on the packaged corpus, ``data``
    must be None.  Raises :class:`CheckpointError` with a one-line message saying what to do.
    """
    spec = config.get("task")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
            or not isinstance(spec.get("options", {}), dict):
        raise CheckpointError(f"checkpoint config: task must be {{'name': str, 'options': {{...}}}}, got {spec!r}")
    options = dict(spec.get("options") or {})
    keys = [k for k, v in options.items() if is_data_option(k) and v is not None]
    if not keys:
        if data is not None:
            raise CheckpointError(f"{flag}: this {spec['name']!r} model was trained on the data shipped with the "
                                  f"package, not on a file; leave {flag} out")
        return {"name": spec["name"], "options": options}
    if len(keys) > 1:  # no built-in task has two; refuse rather than guess which file --data replaces
        raise CheckpointError(f"checkpoint config: task options {keys} name several data files")
    key = keys[0]
    recorded = (spec.get(HASHES_KEY) or {}).get(key) if isinstance(spec.get(HASHES_KEY), dict) else None
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise CheckpointError(f"checkpoint config: task option {key!r} names a data file but no SHA-256 of it "
                              f"was recorded; cannot check which file the model was trained on")
    # only the file's name is echoed: the checkpoint's path is never opened nor printed in full
    name = Path(str(options[key])).name
    if data is None:
        raise CheckpointError(f"{flag}: this {spec['name']!r} model was trained on the text file {name!r} "
                              f"(sha256 {recorded[:12]}...); rnnlab does not open files named by a checkpoint: "
                              f"pass that file with {flag} FILE")
    if not os.path.isfile(data):  # a FIFO or device would never end
        raise CheckpointError(f"{flag}: {str(data)!r} is not a regular file")
    try:
        actual = file_sha256(data)
    except OSError as e:
        raise CheckpointError(f"{flag}: cannot read {str(data)!r} ({e.strerror or e})") from None
    if actual != recorded:
        raise CheckpointError(f"{flag}: {str(data)!r} has sha256 {actual[:12]}..., the model was trained on "
                              f"{name!r} with sha256 {recorded[:12]}... (a different or edited file)")
    options[key] = os.path.abspath(data)
    return {"name": spec["name"], "options": options, HASHES_KEY: {key: recorded}}
