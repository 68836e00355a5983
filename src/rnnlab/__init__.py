"""rnnlab: the recurrent neural network family as drop-in torch.nn modules, trained, explained and fast."""

from rnnlab.backends import available_backends, register_backend
from rnnlab.cells import (GREFF_VARIANTS, CIFGLSTMCell, ElmanCell, GreffLSTMCell, GRUCell, LSTMCell,
                          PeepholeLSTMCell, RecurrentCell, cell_names, register_cell)
from rnnlab.cells import (ClockworkCell, DepthGatedLSTMCell, LayerNormGRUCell, LayerNormLSTMCell, MinGRUCell,
                          MinLSTMCell, MUT1Cell, MUT2Cell, MUT3Cell)
from rnnlab.cells import IndRNNCell, SLSTMCell, SRUCell
from rnnlab.modules import GRU, LSTM, RNN
from rnnlab.recurrent import Recording, Recurrent
from rnnlab.validation import check_finite

__version__ = "0.1.0"

__all__ = ["Recurrent", "Recording", "LSTM", "GRU", "RNN", "RecurrentCell", "ElmanCell", "LSTMCell",
           "PeepholeLSTMCell", "CIFGLSTMCell", "GreffLSTMCell", "GREFF_VARIANTS", "GRUCell", "cell_names",
           "register_cell", "register_backend", "available_backends", "check_finite", "__version__",
           "MUT1Cell", "MUT2Cell", "MUT3Cell", "DepthGatedLSTMCell", "ClockworkCell", "LayerNormLSTMCell",
           "LayerNormGRUCell", "MinGRUCell", "MinLSTMCell", "IndRNNCell", "SRUCell", "SLSTMCell"]
