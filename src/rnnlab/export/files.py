"""Writing an export: the model file (ONNX, optionally int8, or .pt2) and its metadata JSON, both atomically."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from rnnlab.export.runtime import META_FORMAT
from rnnlab.models import SequenceModel

FORMATS = ("onnx", "pt2")
QUANTIZE = ("int8",)


def check_output_path(out: str | Path) -> Path:
    """``out`` must name a file in an existing, writable directory (checked before any work is done)."""
    path = Path(out)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"--out: {out} is a directory; expected a file name")
    if not parent.is_dir():
        raise ValueError(f"--out: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out: directory {parent} is not writable")
    return path


def _temp_beside(path: Path, suffix: str) -> Path:
    """A fresh file in the target's directory (so the final rename is atomic), with the usual permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an exported model is meant to be shared
    return Path(tmp)


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """ONNX Runtime's dynamic quantization: int8 weights, activations quantized on the fly per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def task_metadata(config: dict[str, Any]) -> dict[str, Any]:
    """Vocabulary and normalisation statistics of the checkpoint's task (rebuilt from its saved options).

    Tasks compute these from their data when built; they are not in the checkpoint config, so the task is
    rebuilt once here and what a deployment needs is copied out.  An unbuildable task leaves them out.
    """
    from rnnlab.train.runner import task_from_checkpoint

    try:
        # never the data path saved in the checkpoint (a text-file model's metadata is left out: CheckpointError)
        task = task_from_checkpoint(config)
    except (ValueError, TypeError, OSError):
        return {}
    out: dict[str, Any] = {}
    chars = getattr(task, "chars", None)
    if chars is not None:
        out["vocabulary"] = list(chars)
    for name in ("target_mean", "target_std", "input_mean", "input_std"):
        value = getattr(task, name, None)
        if value is not None:
            out.setdefault("normalisation", {})[name] = [float(v) for v in value.reshape(-1).tolist()]
    for name in ("classes", "feature_names", "target_names"):
        value = getattr(task, name, None)
        if value is not None:
            out[name] = [str(v) for v in value]
    return out


def metadata(model: SequenceModel, config: dict[str, Any], fmt: str, layers: list[str],
             quantize: str | None) -> dict[str, Any]:
    rnn = model.rnn
    LD = rnn.num_layers * rnn.num_directions
    meta = {"format": META_FORMAT, "version": 1, "file_format": fmt, "quantize": quantize,
            "task": config["task"], "model": config["model"], "model_io": config["model_io"],
            "train": config["train"], "step": config.get("step"), "source": config.get("path"),
            "state_names": list(rnn.state_names), "state_shapes": [[LD, s] for s in rnn.cell.state_sizes()],
            "inputs": ["x", "lengths"] + [f"{n}_0" for n in rnn.state_names],
            "outputs": ["output"] + [f"{n}_n" for n in rnn.state_names], "layers": layers}
    meta.update(task_metadata(config))
    return meta


def write_export(model: SequenceModel, config: dict[str, Any], fmt: str, out: str | Path,
                 quantize: str | None = None) -> dict[str, Any]:
    """Export ``model`` (loaded from a checkpoint with ``config``) to ``out`` and ``out`` + ".json"."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ValueError(f"--quantize: expected one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if quantize is not None and fmt != "onnx":
        raise ValueError(f"--quantize: int8 quantization applies to --format onnx, got --format {fmt}")
    path = check_output_path(out)
    model = model.eval()
    tmp = _temp_beside(path, f".tmp.{fmt}")  # torch.export.save wants the .pt2 ending
    try:
        if fmt == "onnx":
            from rnnlab.export.model import model_to_onnx, save_onnx

            proto, layers = model_to_onnx(model)
            if quantize:
                fp32 = _temp_beside(path, ".fp32.onnx")
                try:
                    save_onnx(proto, fp32)
                    quantize_int8(fp32, tmp)
                finally:
                    fp32.unlink(missing_ok=True)
            else:
                save_onnx(proto, tmp)
        else:
            from rnnlab.export.pt2 import export_pt2, save_pt2

            save_pt2(export_pt2(model), tmp)
            layers = ["Scan"] * model.rnn.num_layers
        meta = metadata(model, config, fmt, layers, quantize)
        meta_tmp = _temp_beside(path, ".json.tmp")
        meta_tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)
        os.replace(meta_tmp, Path(str(path) + ".json"))
    finally:
        tmp.unlink(missing_ok=True)
    return meta
