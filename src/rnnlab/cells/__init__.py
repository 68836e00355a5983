"""All recurrent cells; importing this package registers them by name."""

from rnnlab.cells.base import NO_CONTEXT, ParamSpec, RecurrentCell, StepContext
from rnnlab.cells.elman import ElmanCell
from rnnlab.cells.gru import GRUCell
from rnnlab.cells.lstm import GREFF_VARIANTS, CIFGLSTMCell, GreffLSTMCell, LSTMCell, PeepholeLSTMCell
from rnnlab.cells.registry import cell_doc, cell_names, register_cell, resolve_cell
from rnnlab.cells.mut import MUT1Cell, MUT2Cell, MUT3Cell
from rnnlab.cells.depth_gated import DepthGatedLSTMCell
from rnnlab.cells.clockwork import ClockworkCell
from rnnlab.cells.layernorm import LayerNormGRUCell, LayerNormLSTMCell
from rnnlab.cells.minimal import MinGRUCell, MinLSTMCell
from rnnlab.cells.indrnn import IndRNNCell
from rnnlab.cells.sru import SRUCell
from rnnlab.cells.slstm import SLSTMCell

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
register_cell("greff", GreffLSTMCell, "Greff et al. 2015 LSTM, any variant via variant=... (default V)")
register_cell("mut1", MUT1Cell, "MUT1 (Jozefowicz, Zaremba & Sutskever 2015)")
register_cell("mut2", MUT2Cell, "MUT2 (Jozefowicz, Zaremba & Sutskever 2015)")
register_cell("mut3", MUT3Cell, "MUT3 (Jozefowicz, Zaremba & Sutskever 2015)")
register_cell("depth_gated", DepthGatedLSTMCell, "Depth-gated LSTM, reads the lower layer's cell (Yao et al. 2015)")
register_cell("clockwork", ClockworkCell, "Clockwork RNN, modules with periods 1, 2, 4, 8 (Koutnik et al. 2014)")
register_cell("ln_lstm", LayerNormLSTMCell, "Layer-normalised LSTM (Ba, Kiros & Hinton 2016)")
register_cell("ln_gru", LayerNormGRUCell, "Layer-normalised GRU (Ba, Kiros & Hinton 2016)")
register_cell("mingru", MinGRUCell, "minGRU, parallel scan (Feng et al. 2024, Were RNNs All We Needed?)")
register_cell("minlstm", MinLSTMCell, "minLSTM, parallel scan (Feng et al. 2024, Were RNNs All We Needed?)")
register_cell("indrnn", IndRNNCell, "IndRNN, diagonal recurrence u ⊙ h, ReLU (Li et al. 2018)")
register_cell("sru", SRUCell, "Simple recurrent unit, element-wise recurrence on c (Lei et al. 2018)")
register_cell("slstm", SLSTMCell, "sLSTM, exponential gating, head-wise recurrence (Beck et al. 2024, xLSTM)")

__all__ = ["RecurrentCell", "ParamSpec", "StepContext", "NO_CONTEXT", "ElmanCell", "LSTMCell", "PeepholeLSTMCell",
           "CIFGLSTMCell", "GreffLSTMCell", "GREFF_VARIANTS", "GRUCell", "register_cell", "cell_names", "cell_doc",
           "resolve_cell", "MUT1Cell", "MUT2Cell", "MUT3Cell", "DepthGatedLSTMCell", "ClockworkCell",
           "LayerNormLSTMCell", "LayerNormGRUCell", "MinGRUCell", "MinLSTMCell", "IndRNNCell", "SRUCell",
           "SLSTMCell"]
