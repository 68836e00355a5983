"""All recurrent cells; importing this package registers them by name."""

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, RecurrentCell, StepContext
from rnnlab.cells.elman import ElmanCell
from rnnlab.cells.gru import GRUCell
from rnnlab.cells.lstm import GREFF_VARIANTS, CIFGLSTMCell, GreffLSTMCell, LSTMCell, PeepholeLSTMCell
from rnnlab.cells.registry import cell_doc, cell_names, register_cell, resolve_cell

register_cell("rnn", ElmanCell, "Elman RNN, tanh (Elman 1990)")
register_cell("rnn_tanh", ElmanCell, "Elman RNN, tanh (Elman 1990)")
register_cell("rnn_relu", ElmanCell, "Elman RNN, ReLU", nonlinearity="relu")
register_cell("lstm", LSTMCell, "LSTM (Hochreiter & Schmidhuber 1997; forget gate Gers et al. 2000)")
register_cell("peephole", PeepholeLSTMCell, "Peephole LSTM (Gers & Schmidhuber 2000)")
register_cell("cifg", CIFGLSTMCell, "Coupled input-forget gate LSTM (Greff et al. 2015)")
register_cell("gru", GRUCell, "GRU, reset after the recurrent matmul (torch.nn / cuDNN form)")
register_cell("gru_paper", GRUCell, "GRU, reset before the recurrent matmul (Cho et al. 2014)", reset_after=False)
for _variant in GREFF_VARIANTS:
    register_cell(f"greff_{_variant.lower()}", GreffLSTMCell, f"Greff et al. 2015 LSTM variant {_variant}",
                  variant=_variant)

__all__ = ["RecurrentCell", "ParamSpec", "StepContext", "NO_CONTEXT", "ElmanCell", "LSTMCell", "PeepholeLSTMCell",
           "CIFGLSTMCell", "GreffLSTMCell", "GREFF_VARIANTS", "GRUCell", "register_cell", "cell_names", "cell_doc",
           "resolve_cell"]
