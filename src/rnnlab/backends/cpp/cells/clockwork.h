// Clockwork RNN (cells/clockwork.py; Koutník et al. 2014): a module updates only when its period divides the step; the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// xp = W_ih x + b_ih + b_hh (the bias sits inside the tanh, outside any gate); hh = (W_hh ⊙ M) h with the
// block-triangular mask applied by the caller (autograd masks the gradient); state (h, n) with the step counter
// n carried in all H lanes of its block (the cell's n is lane 0); e = the period of every unit (1, H);
// saved: a = tanh(xp + hh).  Unit j is active when round(n) mod P_j = 0 (torch.remainder's zero test, which is
// fmod's for either sign); n advances by one per valid step and gets no gradient through the update rule.
struct Clockwork {
  static constexpr int64_t X = 1, G = 1, S = 2, A = 1, E = 1;
  static constexpr Rec REC = Rec::Full;
  static constexpr bool DHH_IS_DXP = true;  // dL/dhh = dL/dxp = dL/d pre-activation

  // the counter is the same in every lane of its block (driver_state fills it so); lane 0 is read
  template <typename T>
  static inline bool active(T n_rounded, T period) { return std::fmod(n_rounded, period) == T(0); }

  template <typename T>
  static inline void forward(int64_t H, int64_t, const T* __restrict xp, const T* __restrict hh,
                             const T* __restrict e, const T* __restrict s0, T* __restrict s1, T* __restrict a) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      a[j] = std::tanh(xp[j] + hh[j]);
      s1[H + j] = s0[H + j] + T(1);
    }
    const T r = std::nearbyint(s0[H]);  // torch.round: half to even
    for (int64_t j = 0; j < H; ++j) s1[j] = active(r, e[j]) ? a[j] : s0[j];
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t, const T*, const T* __restrict e, const T* __restrict s0,
                              const T*, const T* __restrict a, const T* __restrict ds1, T* __restrict dxp, T*,
                              T*, T* __restrict ds0) {
    const T r = std::nearbyint(s0[H]);
    for (int64_t j = 0; j < H; ++j) {
      const bool on = active(r, e[j]);
      const T d = ds1[j];
      dxp[j] = on ? d * (T(1) - a[j] * a[j]) : T(0);
      ds0[j] = on ? T(0) : d;  // an idle unit passes h_{t-1} on unchanged
      ds0[H + j] = ds1[H + j];  // n + 1
    }
  }
};

}  // namespace rnnlab_generic
