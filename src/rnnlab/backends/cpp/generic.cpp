// Entry points of the generic CPU driver (driver.h): one line per cell struct (cells/<name>.h).
#include <torch/extension.h>

#include "cells/clockwork.h"
#include "cells/depth_gated.h"
#include "cells/elman.h"
#include "cells/gru.h"
#include "cells/indrnn.h"
#include "cells/layernorm.h"
#include "cells/lstm.h"
#include "cells/minimal.h"
#include "cells/mut.h"
#include "cells/slstm.h"
#include "cells/sru.h"

// <name>_forward(xp, s0, w, e, lengths, heads, opt, rec_mask, keep) -> [out, states, saved, fresh]
//   opt: the cell's option word, plus BF16_PRODUCTS (driver.h kBf16Products) for bf16 products
// <name>_infer(the same) -> [out, s_T]: without the states, saved and fresh rows only backward and recording read
// <name>_backward(dout, dsT, xp, w, e, lengths, heads, opt, rec_mask, keep, states, saved, fresh, dstates)
//   -> [dxp, ds0, dw, de]     (rec_mask / keep: empty = off; driver.h's forward says what they mean)
// <name>_sizes(opt=0) -> (X, G, S, A, E, PROJ) for that option word (PROJ: the option bit of the rule's output
//   projection, 0 when it has none; driver.h's proj_bit)
// set_gemm_backend("onednn" | "aten"), gemm_backend(), set_onednn_nn_min_weight(entries): the per-step GEMM
// selection of gemm.h; set_reduced_min_macs(macs), reduced_min_macs(): the smallest product that runs in bf16
// when xp arrives in bf16 (gemm.h ReducedProducts); set_huge_pages(on), huge_pages(): buffers.h's huge-page advice
#define RNNLAB_CELL(m, name, Cell)                                                            \
  m.def(#name "_forward", &rnnlab_generic::forward<rnnlab_generic::Cell>);                   \
  m.def(#name "_infer", &rnnlab_generic::infer<rnnlab_generic::Cell>);                       \
  m.def(#name "_backward", &rnnlab_generic::backward<rnnlab_generic::Cell>);                 \
  m.def(                                                                                      \
      #name "_sizes",                                                                         \
      [](int64_t opt) {                                                                       \
        const auto z = rnnlab_generic::sizes_of<rnnlab_generic::Cell>(rnnlab_generic::cell_opt(opt)); \
        return std::vector<int64_t>{z.X, z.G, z.S, z.A, z.E,                                  \
                                    rnnlab_generic::proj_bit<rnnlab_generic::Cell>::value};   \
      },                                                                                      \
      pybind11::arg("opt") = 0)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("BF16_PRODUCTS") = rnnlab_generic::kBf16Products;
  m.def("set_gemm_backend", &rnnlab_gemm::set_gemm_backend);
  m.def("gemm_backend", &rnnlab_gemm::gemm_backend);
  m.def("set_onednn_nn_min_weight", &rnnlab_gemm::set_onednn_nn_min_weight);
  m.def("set_reduced_min_macs", &rnnlab_gemm::set_reduced_min_macs);
  m.def("reduced_min_macs", &rnnlab_gemm::reduced_min_macs);
  m.def("set_huge_pages", &rnnlab_buffers::set_huge_pages);
  m.def("huge_pages", &rnnlab_buffers::huge_pages);
  RNNLAB_CELL(m, clockwork, Clockwork);
  RNNLAB_CELL(m, depth_gated, DepthGated);
  RNNLAB_CELL(m, elman, Elman);
  RNNLAB_CELL(m, gru, GRU);
  RNNLAB_CELL(m, gru_paper, GRUPaper);
  RNNLAB_CELL(m, lstm, LSTM);
  RNNLAB_CELL(m, ln_gru, LayerNormGRU);
  RNNLAB_CELL(m, ln_lstm, LayerNormLSTM);
  RNNLAB_CELL(m, mingru, MinGRU);
  RNNLAB_CELL(m, minlstm, MinLSTM);
  RNNLAB_CELL(m, mut1, MUT1);
  RNNLAB_CELL(m, mut2, MUT2);
  RNNLAB_CELL(m, mut3, MUT3);
  RNNLAB_CELL(m, indrnn, IndRNN);
  RNNLAB_CELL(m, sru, SRU);
  RNNLAB_CELL(m, slstm, SLSTM);
}
