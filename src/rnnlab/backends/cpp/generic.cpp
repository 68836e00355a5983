// Entry points of the generic CPU driver (driver.h): one line per cell struct (cells/<name>.h).
#include <torch/extension.h>

#include "cells/elman.h"
#include "cells/indrnn.h"
#include "cells/slstm.h"
#include "cells/sru.h"

// <name>_forward(xp, s0, w, e, lengths, heads, opt) -> [out, states, saved]
// <name>_backward(dout, dsT, xp, w, e, lengths, heads, opt, states, saved) -> [dxp, ds0, dw, de]
// <name>_sizes() -> (X, G, S, A, E)
#define RNNLAB_CELL(m, name, Cell)                                                            \
  m.def(#name "_forward", &rnnlab_generic::forward<rnnlab_generic::Cell>);                   \
  m.def(#name "_backward", &rnnlab_generic::backward<rnnlab_generic::Cell>);                 \
  m.def(#name "_sizes", [] {                                                                  \
    using C = rnnlab_generic::Cell;                                                           \
    return std::vector<int64_t>{C::X, C::G, C::S, C::A, C::E};                                \
  })

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  RNNLAB_CELL(m, elman, Elman);
  RNNLAB_CELL(m, indrnn, IndRNN);
  RNNLAB_CELL(m, sru, SRU);
  RNNLAB_CELL(m, slstm, SLSTM);
}
