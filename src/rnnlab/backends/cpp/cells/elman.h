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
    if (opt == 1) {
      RNNLAB_SIMD
      for (int64_t j = 0; j < H; ++j) s1[j] = std::tanh(xp[j] + hh[j]);
    } else {
      RNNLAB_SIMD
      for (int64_t j = 0; j < H; ++j) {
        const T pre = xp[j] + hh[j];
        // ReLU keeps NaN like torch.relu (a plain pre > 0 test would turn it into 0)
        s1[j] = pre > T(0) || pre != pre ? pre : T(0);
      }
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t opt, const T*, const T*, const T*, const T* s1,
                              const T*, const T* ds1, T* dxp, T* dhh, T*, T* ds0) {
    // torch's formulas: tanh' = 1 - y², ReLU' = (y <= 0 ? 0 : 1) on the output
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T h = s1[j];
      const T d = opt == 1 ? ds1[j] * (T(1) - h * h) : (h <= T(0) ? T(0) : ds1[j]);
      dxp[j] = d;
      dhh[j] = d;
      ds0[j] = T(0);  // h_{t-1} enters only through the recurrent product (the driver adds it)
    }
  }
};

}  // namespace rnnlab_generic
