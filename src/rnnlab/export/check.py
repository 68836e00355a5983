"""What the exporters accept: a plain SequenceModel (the same check for ONNX and torch.export)."""

from __future__ import annotations

from rnnlab.models import SequenceModel


def check_exportable(model: SequenceModel) -> None:
    """Exports cover the plain SequenceModel: embedding, Recurrent stack, linear head."""
    if type(model) is not SequenceModel:
        raise ValueError(f"model: export supports rnnlab.models.SequenceModel, got {type(model).__name__}")
    if getattr(model, "crf", None) is not None:
        raise ValueError("model: a CRF output layer is not exportable yet (its decoding is not an ONNX graph)")
