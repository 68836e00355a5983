"""Inside the network: recorded gates, gradient flow through time, interpretable units, plots and a page.

Example:
    >>> import torch
    >>> from rnnlab import Recurrent
    >>> from rnnlab.inspection import gradient_flow, record_activations
    >>> rnn = Recurrent("lstm", 2, 8, batch_first=True)
    >>> sorted(record_activations(rnn, torch.randn(3, 10, 2)).values[(0, 0)])
    ['c', 'f', 'g', 'h', 'i', 'o']
    >>> gradient_flow(rnn, torch.randn(3, 10, 2), lambda out: out[:, -1].sum()).h[(0, 0)].shape
    (10,)

Plots (:mod:`rnnlab.inspection.plots`) need matplotlib (``pip install rnnlab[plot]``) and are imported lazily.
"""

from rnnlab.inspection.capture import Activations, record_activations
from rnnlab.inspection.gradflow import GradFlow, adding_problem, compare_cells, exploding_demo, gradient_flow
from rnnlab.inspection.units import rank_units, sequence_features, text_features

__all__ = ["Activations", "record_activations", "GradFlow", "gradient_flow", "compare_cells",
           "exploding_demo", "adding_problem", "rank_units", "text_features", "sequence_features"]
