"""Checkpoints without pickle: safetensors for every tensor, JSON for the rest, swapped in atomically.

Layout of a run directory::

    RUN_DIR/checkpoints/MANIFEST.json        {"latest": "step-00000120", "best": "step-00000100", ...}
    RUN_DIR/checkpoints/step-00000120/model.safetensors    model weights (state_dict names)
    RUN_DIR/checkpoints/step-00000120/trainer.safetensors  optimiser tensors, RNG state, carried BPTT state
    RUN_DIR/checkpoints/step-00000120/config.json          model/task/train config, step, metrics, sha256s

A checkpoint directory is written under a temporary name in the same parent, every file fsynced, then
renamed into place; the manifest is replaced last.  ``config.json`` records the SHA-256 of both tensor
files and, in ``config_sha256``, of its own canonical content, so a torn, edited or tampered checkpoint is
detected on load instead of silently mixing weights and settings.  (A checksum is not a signature: whoever
can write the file can recompute it; that is why nothing in a checkpoint names a file rnnlab opens, see
``rnnlab.train.datafiles``.)

Every name in the manifest must be a plain ``step-NNNNNNNN`` child of ``checkpoints/``: a manifest naming
anything else (``../x``, an absolute path, a non-string) is rejected, so ``--resume`` never deletes and
``eval`` never reads outside the run.  Temporary files of killed writes are removed by
:func:`clean_stale_files` when a run (re)starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rnnlab.models import ModelConfig, SequenceModel

FORMAT = "rnnlab-checkpoint"
#: 2: config.json carries ``config_sha256`` (version 1 checkpoints had the tensor checksums only)
VERSION = 2
#: the names the trainer gives its checkpoints (``Trainer.save_checkpoint``); nothing else is followed
STEP_NAME = re.compile(r"step-[0-9]{8,}")
#: temporary names of killed writes: save_checkpoint's ``.step-N.tmp-XXXX`` / ``.step-N.old-PID`` and
#: atomic_write_text's ``.MANIFEST.json.XXXX`` (tempfile's random part: letters, digits, underscore)
STALE_TMP = re.compile(r"\.(step-[0-9]{8,})\.tmp-[a-z0-9_]+")
STALE_OLD = re.compile(r"\.(step-[0-9]{8,})\.old-[0-9]+")
STALE_MANIFEST = re.compile(r"\.MANIFEST\.json\.[a-z0-9_]+")
MODEL_FILE, TRAINER_FILE, CONFIG_FILE, MANIFEST = "model.safetensors", "trainer.safetensors", "config.json", \
    "MANIFEST.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt (the message names the path and the problem)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: its directory, the JSON config and the tensors of both files."""

    path: Path
    config: dict[str, Any]
    model_state: dict[str, Tensor]
    trainer_tensors: dict[str, Tensor] = field(default_factory=dict)


# --- low-level atomic writes ---------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a fsynced temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def strict_json(data: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN/inf (``ValueError`` naming the first such field) before anything is
    written, so a file is never left holding half a document or non-standard JSON."""
    bad = nonfinite_field(data)
    if bad is not None:
        raise ValueError(f"{bad[0]}: expected a finite number, got {bad[1]!r} (JSON has no NaN/inf)")
    return json.dumps(data, allow_nan=False, **kwargs)


def nonfinite_field(data: Any, where: str = "") -> tuple[str, float] | None:
    """``(dotted.path, value)`` of the first NaN/inf float inside ``data`` (dicts, lists, tuples), or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "value", data
    if isinstance(data, dict):
        items: Any = ((f"{where}.{k}" if where else str(k), v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for key, value in items:
        found = nonfinite_field(value, key)
        if found is not None:
            return found
    return None


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint config's canonical JSON, every field but ``config_sha256`` itself."""
    body = {k: v for k, v in config.items() if k != "config_sha256"}
    # through a JSON round trip first: int keys become strings exactly as in the file, so the digest of
    # the in-memory dict at save time equals that of the parsed file at load time
    body = json.loads(json.dumps(body, allow_nan=False))
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- optimiser state <-> tensors + JSON ----------------------------------------------------------------------
def optimizer_state_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``"optim.<param>.<key>"``) and a JSON part."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_from_flat(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_flat`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])  # JSON turned the tuple into a list
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --- save -------------------------------------------------------------------------------------------------------
def save_checkpoint(directory: str | os.PathLike, model: nn.Module, config: dict[str, Any], *,
                    optimizer: torch.optim.Optimizer | None = None,
                    tensors: dict[str, Tensor] | None = None) -> Path:
    """Write one checkpoint directory atomically (replacing an existing one of the same name).

    ``config`` must be JSON-serialisable; ``tensors`` are extra tensors (RNG state, carried state) saved
    beside the optimiser's.  Returns the checkpoint's path.

    Example:
        >>> import tempfile
        >>> m = nn.Linear(2, 1)
        >>> p = save_checkpoint(Path(tempfile.mkdtemp()) / "ck", m, {"step": 3})
        >>> load_checkpoint(p).config["step"]
        3
    """
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / MODEL_FILE))
        extra: dict[str, Tensor] = {}
        meta = dict(config)
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_state_to_flat(optimizer)
            extra.update(opt_tensors)
            meta["optimizer_state"] = opt_meta
        for k, v in (tensors or {}).items():
            extra[k] = v.detach().cpu().contiguous()
        save_file(extra, str(tmp / TRAINER_FILE))
        for name in (MODEL_FILE, TRAINER_FILE):
            _fsync_file(tmp / name)
        meta.update(format=FORMAT, version=VERSION,
                    sha256={MODEL_FILE: _sha256(tmp / MODEL_FILE), TRAINER_FILE: _sha256(tmp / TRAINER_FILE)})
        meta.pop("config_sha256", None)
        strict_json(meta)  # ValueError naming a NaN/inf field, before config.json is opened
        meta["config_sha256"] = config_digest(meta)
        text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=False)
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            # rename the old one aside first: a crash in between leaves the old copy under the trash name
            trash = final.parent / f".{final.name}.old-{os.getpid()}"
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --- manifest: only plain step-N children of checkpoints/ ---------------------------------------------------
def checkpoint_name(value: Any, field_name: str, where: Path | str = "MANIFEST.json") -> str:
    """``value`` if it is a checkpoint name the trainer writes (``step-NNNNNNNN``), else CheckpointError.

    This is what keeps a manifest from pointing outside the run: no separators, no ``..``, no absolute
    path, no non-string can match the pattern.
    """
    if not isinstance(value, str) or not STEP_NAME.fullmatch(value):
        raise CheckpointError(f"{where}: {field_name} must be a checkpoint name like 'step-00000120' inside "
                              f"checkpoints/, got {value!r}; refusing to use this manifest")
    return value


def _validate_manifest(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: checkpoint manifest is not a JSON object")
    for key in ("latest", "best"):
        if data.get(key) is not None:
            checkpoint_name(data[key], key, path)
    names = data.get("checkpoints", [])
    if not isinstance(names, list):
        raise CheckpointError(f"{path}: checkpoints must be a list of checkpoint names, got {names!r}; refusing "
                              f"to use this manifest")
    for i, name in enumerate(names):
        checkpoint_name(name, f"checkpoints[{i}]", path)
    return data


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``checkpoints/MANIFEST.json`` ({} when there is none), every name in it validated."""
    path = Path(run_dir) / "checkpoints" / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint manifest ({e})") from None
    return _validate_manifest(data, path)


def write_manifest(run_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    path = Path(run_dir) / "checkpoints" / MANIFEST
    _validate_manifest(manifest, path)
    atomic_write_text(path, strict_json(manifest, indent=1, sort_keys=True))


def has_completed_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether the run's manifest names a completed checkpoint (a run killed during its first checkpoint
    write has a ``checkpoints/`` folder but none)."""
    return bool(read_manifest(run_dir).get("latest"))


def _inside(child: Path, parent: Path) -> bool:
    """``child`` resolves (symlinks followed) to a direct child of ``parent`` (also resolved)."""
    return Path(os.path.realpath(child)).parent == Path(os.path.realpath(parent))


def remove_checkpoint(run_dir: str | os.PathLike, name: str) -> None:
    """Delete ``checkpoints/<name>`` of a run; never anything outside it.

    ``name`` must be a checkpoint name; a symlink is unlinked (its target is left alone) and a directory
    that resolves outside ``checkpoints/`` is left in place.
    """
    ckdir = Path(run_dir) / "checkpoints"
    target = ckdir / checkpoint_name(name, "checkpoint to delete")
    _remove_inside(target, ckdir)


def _remove_inside(target: Path, ckdir: Path) -> None:
    if target.is_symlink():
        target.unlink()  # only the link: what it points to was never ours
    elif target.is_dir() and _inside(target, ckdir):
        shutil.rmtree(target, ignore_errors=True)
    elif target.is_file() and _inside(target, ckdir):
        target.unlink()


def clean_stale_files(run_dir: str | os.PathLike) -> list[str]:
    """Remove what killed writes left in ``RUN/checkpoints/``; returns the names handled.

    Only these exact patterns, only directly inside ``checkpoints/``: ``.step-N.tmp-XXXX`` (an unfinished
    checkpoint), ``.MANIFEST.json.XXXX`` (an unfinished manifest) and ``.step-N.old-PID`` (the previous copy
    of a checkpoint being replaced: deleted when ``step-N`` exists, renamed back to ``step-N`` when the kill
    came between the two renames).  Call it only when no other process writes to the run.
    """
    ckdir = Path(run_dir) / "checkpoints"
    if not ckdir.is_dir() or ckdir.is_symlink():
        return []
    handled = []
    for entry in sorted(os.listdir(ckdir)):
        target = ckdir / entry
        old = STALE_OLD.fullmatch(entry)
        if old and not (ckdir / old.group(1)).exists() and not (ckdir / old.group(1)).is_symlink() \
                and target.is_dir() and not target.is_symlink() and _inside(target, ckdir):
            os.rename(target, ckdir / old.group(1))  # the only copy of that checkpoint: put it back
        elif old or STALE_TMP.fullmatch(entry) or STALE_MANIFEST.fullmatch(entry):
            _remove_inside(target, ckdir)
        else:
            continue
        handled.append(entry)
    if handled:
        _fsync_dir(ckdir)
    return handled


# --- locate and load ---------------------------------------------------------------------------------------------
def resolve_checkpoint(path: str | os.PathLike, which: str = "best") -> Path:
    """A run directory (-> its ``which`` = "best" or "latest" checkpoint), a checkpoint directory, or a
    file inside one -> the checkpoint directory.  Raises :class:`CheckpointError` when there is none."""
    if which not in ("best", "latest"):
        raise ValueError(f"which: expected 'best' or 'latest', got {which!r}")
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory (expected a run directory or a checkpoint)")
    if p.is_file():
        if p.name in (CONFIG_FILE, MODEL_FILE, TRAINER_FILE):
            p = p.parent
        else:
            raise CheckpointError(f"{p}: not a checkpoint (expected a run directory or a checkpoint directory)")
    if (p / CONFIG_FILE).exists() and (p / MODEL_FILE).exists():
        return p
    ckdir = p / "checkpoints"
    if ckdir.is_dir():
        manifest = read_manifest(p)  # validated: names are plain step-N children
        name = manifest.get(which) or manifest.get("latest")
        if not name:
            raise CheckpointError(f"{p}: run directory has no completed checkpoint yet (it was stopped before "
                                  f"its first checkpoint was written)")
        found = ckdir / name
        if found.is_symlink() or (found.exists() and not _inside(found, ckdir)):
            raise CheckpointError(f"{found}: is a symbolic link or lies outside {ckdir}; refusing to load it")
        return found
    raise CheckpointError(f"{p}: not a checkpoint (no {CONFIG_FILE} + {MODEL_FILE}, and no checkpoints/ folder)")


def load_checkpoint(path: str | os.PathLike, which: str = "best") -> Checkpoint:
    """Load and verify a checkpoint (see :func:`resolve_checkpoint` for ``path``); no pickle involved."""
    ck = resolve_checkpoint(path, which)
    try:
        config = json.loads((ck / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{ck}: missing {CONFIG_FILE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ck / CONFIG_FILE}: corrupt checkpoint config ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{ck / CONFIG_FILE}: not an rnnlab checkpoint config (format != {FORMAT!r})")
    if config.get("version") != VERSION:
        raise CheckpointError(f"{ck / CONFIG_FILE}: checkpoint version {config.get('version')!r}, "
                              f"this rnnlab reads version {VERSION}")
    try:
        digest = config_digest(config)
    except ValueError as e:  # NaN/Infinity literals: never written by rnnlab
        raise CheckpointError(f"{ck / CONFIG_FILE}: corrupt checkpoint config ({e})") from None
    if config.get("config_sha256") != digest:
        raise CheckpointError(f"{ck / CONFIG_FILE}: checksum mismatch (the config was edited or is corrupt: "
                              f"config_sha256 does not match its content)")
    sums = config.get("sha256")
    if not isinstance(sums, dict):
        raise CheckpointError(f"{ck / CONFIG_FILE}: sha256 must be an object of file checksums, got {sums!r}")
    tensors = {}
    for name in (MODEL_FILE, TRAINER_FILE):
        f = ck / name
        if not f.exists():
            raise CheckpointError(f"{f}: missing checkpoint file")
        expected = sums.get(name)
        if expected != _sha256(f):
            raise CheckpointError(f"{f}: checksum mismatch (the file is corrupt or does not belong to "
                                  f"{ck / CONFIG_FILE})")
        try:
            tensors[name] = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None
    return Checkpoint(ck, config, tensors[MODEL_FILE], tensors[TRAINER_FILE])


def build_model(config: dict[str, Any]) -> SequenceModel:
    """A fresh :class:`SequenceModel` from a checkpoint config's ``model`` and ``model_io`` entries."""
    try:
        io = config["model_io"]
        if io.get("target") == "seq2seq":  # an encoder-decoder (rnnlab.seq2seq), built from its own config
            from rnnlab.seq2seq import Seq2Seq

            return Seq2Seq.from_checkpoint_config(config)
        from rnnlab.train.config import check_model_config

        # every field checked first, so an edited config is named field by field (ConfigError is a ValueError)
        model_config = check_model_config(ModelConfig.from_dict(config["model"]))
        return SequenceModel(model_config, input_size=io["input_size"],
                             output_size=io["output_size"], target=io["target"], vocab_size=io.get("vocab_size"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint config: cannot rebuild the model ({type(e).__name__}: {e})") from None


def load_model(path: str | os.PathLike, which: str = "best") -> tuple[SequenceModel, dict[str, Any]]:
    """``(model, config)`` from a run directory (its best checkpoint) or a checkpoint directory.

    ``config`` holds at least ``model`` (ModelConfig dict), ``model_io``, ``task`` ({"name", "options"}),
    ``train`` (TrainConfig dict), ``step``, ``epoch`` and ``metrics``.  The model is in eval mode.
    """
    ck = load_checkpoint(path, which)
    model = build_model(ck.config)
    try:
        model.load_state_dict(ck.model_state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{ck.path / MODEL_FILE}: weights do not fit the saved model config ({first})") \
            from None
    model.eval()
    config = dict(ck.config)
    config["path"] = str(ck.path)
    return model, config
