// Entry points of the generic CPU driver (driver.h): one line per cell struct (cells/<name>.h).
#include <torch/extension.h>

#include "cells/elman.h"
#include "cells/gru.h"
#include "cells/indrnn.h"
#include "cells/lstm.h"
#include "cells/slstm.h"
#include "cells/sru.h"

// <name>_forward(xp, s0, w, e, lengths, heads, opt) -> [out, states, saved]
// <name>_backward(dout, dsT, xp, w, e, lengths, heads, opt, states, saved) -> [dxp, ds0, dw, de]
// <name>_sizes(opt=0) -> (X, G, S, A, E) for that option word
#define RNNLAB_CELL(m, name, Cell)                                                            \
  m.def(#name "_forward", &rnnlab_generic::forward<rnnlab_generic::Cell>);                   \
  m.def(#name "_backward", &rnnlab_generic::backward<rnnlab_generic::Cell>);                 \
  m.def(                                                                                      \
      #name "_sizes",                                                                         \
      [](int64_t opt) {                                                                       \
        const auto z = rnnlab_generic::sizes_of<rnnlab_generic::Cell>(opt);                   \
        return std::vector<int64_t>{z.X, z.G, z.S, z.A, z.E};                                 \
      },                                                                                      \
      pybind11::arg("opt") = 0)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  RNNLAB_CELL(m, elman, Elman);
  RNNLAB_CELL(m, gru, GRU);
  RNNLAB_CELL(m, lstm, LSTM);
  RNNLAB_CELL(m, indrnn, IndRNN);
  RNNLAB_CELL(m, sru, SRU);
  RNNLAB_CELL(m, slstm, SLSTM);
}
