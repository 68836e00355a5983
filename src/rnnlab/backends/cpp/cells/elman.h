// Elman RNN on the generic driver (full recurrent matrix): h_t = φ(xp_t + W_hh h_{t-1}); the element-wise rules.
#pragma once

#include "indrnn.h"

namespace rnnlab_generic {

// IndRNN's element-wise rule with a full recurrent matrix instead of a diagonal one.  Used to prove the
// driver's Rec::Full path against the reference Elman cell.
struct Elman : IndRNN {
  static constexpr Rec REC = Rec::Full;
};

}  // namespace rnnlab_generic
