// Elman RNN on the generic driver (full recurrent matrix): h_t = φ(xp_t + W_hh h_{t-1}); the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// The same element-wise rule as IndRNN; only the recurrence differs (a full matrix).  Used to prove the
// driver's Rec::Full path against the reference Elman cell.
struct Elman {
  static constexpr int64_t X = 1, G = 1, S = 1, A = 0, E = 0;
  static constexpr Rec REC = Rec::Full;

  template <typename T>
  static inline void forward(int64_t H, int64_t opt, const T* xp, const T* hh, const T*, const T*, T* s1, T*) {
    for (int64_t j = 0; j < H; ++j) {
      const T pre = xp[j] + hh[j];
      s1[j] = opt == 1 ? std::tanh(pre) : (pre > T(0) || pre != pre ? pre : T(0));
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t opt, const T*, const T*, const T*, const T* s1,
                              const T*, const T* ds1, T* dxp, T* dhh, T*, T* ds0) {
    for (int64_t j = 0; j < H; ++j) {
      const T h = s1[j];
      const T d = opt == 1 ? ds1[j] * (T(1) - h * h) : (h <= T(0) ? T(0) : ds1[j]);
      dxp[j] = d;
      dhh[j] = d;
      ds0[j] = T(0);
    }
  }
};

}  // namespace rnnlab_generic
