// Elman RNN on the generic driver (full recurrent matrix): h_t = φ(xp_t + W_hh h_{t-1}); the element-wise rules.
#pragma once

#include "indrnn.h"

namespace rnnlab_generic {

// IndRNN's element-wise rule with a full recurrent matrix instead of a diagonal one.
struct Elman : IndRNN {
  static constexpr Rec REC = Rec::Full;
  static constexpr bool DHH_IS_DXP = true;  // dhh = dxp = dL/d pre-activation
};

}  // namespace rnnlab_generic
