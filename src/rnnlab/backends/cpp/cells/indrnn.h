// IndRNN (Li et al. 2018): h_t = φ(xp_t + u ⊙ h_{t-1}), φ = ReLU (opt 0) or tanh (opt 1); the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

struct IndRNN {
  static constexpr int64_t X = 1, G = 1, S = 1, A = 0, E = 0;
  static constexpr Rec REC = Rec::Diagonal;

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
      ds0[j] = T(0);  // h_{t-1} enters only through the recurrent product (the driver adds it)
    }
    if (dhh) std::copy(dxp, dxp + H, dhh);  // none when the driver uses dxp for it (Elman: DHH_IS_DXP)
  }
};

}  // namespace rnnlab_generic
