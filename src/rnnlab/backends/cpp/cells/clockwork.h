// Clockwork RNN (cells/clockwork.py; Koutník et al. 2014): a module updates only when its period divides the step; the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// xp = W_ih x + b_ih + b_hh (the bias sits inside the tanh, outside any gate); hh = (W_hh ⊙ M) h with the
// block-triangular mask applied by the caller (autograd masks the gradient); state (h, n) with the step counter
// n carried in all H lanes of its block (the cell's n is lane 0); e = the period of every unit (1, H);
// saved: a = tanh(xp + hh).  Unit j is active when r = round(n) is a multiple of P_j (torch.remainder's zero
// test); n advances by one per valid step and gets no gradient through the update rule.
struct Clockwork {
  static constexpr int64_t X = 1, G = 1, S = 2, A = 1, E = 1;
  static constexpr Rec REC = Rec::Full;
  static constexpr bool DHH_IS_DXP = true;  // dL/dhh = dL/dxp = dL/d pre-activation

  // the counter is the same in every lane of its block (driver_state fills it so); lane 0 is read
  template <typename T>
  static inline bool active(T n_rounded, T period) { return std::fmod(n_rounded, period) == T(0); }

  // The same test in plain arithmetic, which vectorises (fmod does not, nor floor without -fno-trapping-math: the
  // per-unit fmod was most of a training step at (50, 128, 512)): k = q rounded to the nearest integer by adding
  // and removing 1.5 * 2^m (exact for |q| < 2^(m-1)), and r is a multiple of P iff k P == r.  Used while |r| is
  // below kExact<T>; beyond it the scalar fmod test runs.
  template <typename T>
  static constexpr T kExact = std::is_same_v<T, float> ? T(1 << 22) : T(int64_t(1) << 51);
  template <typename T>
  static inline bool active_small(T r, T period) {
    constexpr T shift = std::is_same_v<T, float> ? T(12582912.0) : T(6755399441055744.0);  // 1.5 * 2^23, 2^52
    const T k = (r / period + shift) - shift;
    return k * period == r;
  }
  template <typename T>
  static inline bool small_counter(T r) {
    return std::abs(r) < kExact<T>;
  }

  template <typename T>
  static inline void forward(int64_t H, int64_t, const T* __restrict xp, const T* __restrict hh,
                             const T* __restrict e, const T* __restrict s0, T* __restrict s1, T* __restrict a) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      a[j] = std::tanh(xp[j] + hh[j]);
      s1[H + j] = s0[H + j] + T(1);
    }
    const T r = std::nearbyint(s0[H]);  // torch.round: half to even
    if (small_counter(r)) {
      RNNLAB_SIMD
      for (int64_t j = 0; j < H; ++j) s1[j] = active_small(r, e[j]) ? a[j] : s0[j];
    } else {
      for (int64_t j = 0; j < H; ++j) s1[j] = active(r, e[j]) ? a[j] : s0[j];
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t, const T*, const T* __restrict e, const T* __restrict s0,
                              const T*, const T* __restrict a, const T* __restrict ds1, T* __restrict dxp, T*,
                              T*, T* __restrict ds0) {
    const T r = std::nearbyint(s0[H]);
    auto loop = [&](auto on_at) {
      RNNLAB_SIMD
      for (int64_t j = 0; j < H; ++j) {
        const bool on = on_at(j);
        const T d = ds1[j];
        dxp[j] = on ? d * (T(1) - a[j] * a[j]) : T(0);
        ds0[j] = on ? T(0) : d;  // an idle unit passes h_{t-1} on unchanged
        ds0[H + j] = ds1[H + j];  // n + 1
      }
    };
    if (small_counter(r))
      loop([&](int64_t j) { return active_small(r, e[j]); });
    else
      loop([&](int64_t j) { return active(r, e[j]); });
  }
};

}  // namespace rnnlab_generic
