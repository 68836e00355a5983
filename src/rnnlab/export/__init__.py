"""Deployment: ONNX (native LSTM/GRU/RNN nodes or a Scan per cell), torch.export, and ONNX Runtime helpers.

Modules: ``model`` (ONNX of a Recurrent or a SequenceModel), ``pt2`` (torch.export), ``runtime`` (ONNX Runtime),
``files`` (the `rnnlab export` output).  Nothing is imported here: ONNX needs the optional onnx package.
"""
