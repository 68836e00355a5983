"""Triton rule for IndRNN (see cells/indrnn.py): the Elman kernels with a diagonal recurrence u ⊙ h."""

from __future__ import annotations

from torch import Tensor

from rnnlab.backends.gpu.driver import Diagonal, Prepared
from rnnlab.backends.gpu.elman import ElmanRule
from rnnlab.backends.gpu.rules import register_rule
from rnnlab.cells.indrnn import IndRNNCell


class IndRNNRule(ElmanRule):
    """``pre = xp + u ⊙ hd``, ``h = φ(pre)``: the driver forms ``u ⊙ hd``, the Elman kernels do the rest."""

    recurrence = Diagonal

    def prepare(self, p: dict[str, Tensor], H: int) -> Prepared:
        return Prepared(p.get("bias_ih"), None, p["weight_ih"].new_empty(0, H))  # the cell's single bias

    def param_grads(self, p, d_b_x, d_b_hh, d_consts):
        return {} if d_b_x is None else {"bias_ih": d_b_x}


register_rule(IndRNNCell, lambda cell: IndRNNRule(cell))
