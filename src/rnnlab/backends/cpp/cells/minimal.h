// minGRU and minLSTM (cells/minimal.py; Feng et al. 2024): gates from x_t only, h_t = a_t ⊙ h_{t-1} + b_t; the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// The candidate map g(v) = v + 0.5 (v >= 0), σ(v) (v < 0) and its derivative (torch.where's: the branch taken).
template <typename T>
inline T min_g(T v) { return v >= T(0) ? v + T(0.5) : sigm(v); }

template <typename T>
inline T min_dg(T v) {
  const T s = sigm(v);
  return v >= T(0) ? T(1) : s * (T(1) - s);
}

// softplus(u) = max(u, 0) + log1p(exp(-|u|)): finite for finite u, exact at ±inf, NaN stays NaN.
template <typename T>
inline T softplus(T u) {
  const T hi = u > T(0) || u != u ? u : T(0);
  return hi + std::log1p(std::exp(-std::abs(u)));
}

// xp blocks k_z, k_h (the cell's projection); state (h); nothing saved: the gates are recomputed from xp.
// h = (1 - z) h_{t-1} + z g(k_h), z = σ(k_z).  No recurrent matrix.
struct MinGRU {
  static constexpr int64_t X = 2, G = 0, S = 1, A = 0, E = 0;
  static constexpr Rec REC = Rec::None;

  template <typename T>
  static inline void forward(int64_t H, int64_t, const T* __restrict xp, const T*, const T*,
                             const T* __restrict s0, T* __restrict s1, T*) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T z = sigm(xp[j]);
      s1[j] = (T(1) - z) * s0[j] + z * min_g(xp[H + j]);
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t, const T* __restrict xp, const T*, const T* __restrict s0,
                              const T*, const T*, const T* __restrict ds1, T* __restrict dxp, T*, T*,
                              T* __restrict ds0) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T z = sigm(xp[j]), k = xp[H + j], d = ds1[j];
      dxp[j] = d * (min_g(k) - s0[j]) * z * (T(1) - z);
      dxp[H + j] = d * z * min_dg(k);
      ds0[j] = d * (T(1) - z);
    }
  }
};

// xp blocks k_f, k_i, k_h; h = f' h_{t-1} + i' g(k_h) with f' = f / (f + i), i' = i / (f + i) formed as the
// cell forms them: δ = softplus(-k_f) - softplus(-k_i) = log(i / f), f' = exp(-softplus(δ)),
// i' = exp(-softplus(-δ)) (never 0/0, whatever the magnitudes).
struct MinLSTM {
  static constexpr int64_t X = 3, G = 0, S = 1, A = 0, E = 0;
  static constexpr Rec REC = Rec::None;

  template <typename T>
  static inline void forward(int64_t H, int64_t, const T* __restrict xp, const T*, const T*,
                             const T* __restrict s0, T* __restrict s1, T*) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T delta = softplus(-xp[j]) - softplus(-xp[H + j]);
      const T fn = std::exp(-softplus(delta)), in = std::exp(-softplus(-delta));
      s1[j] = fn * s0[j] + in * min_g(xp[2 * H + j]);
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t, const T* __restrict xp, const T*, const T* __restrict s0,
                              const T*, const T*, const T* __restrict ds1, T* __restrict dxp, T*, T*,
                              T* __restrict ds0) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T kf = xp[j], ki = xp[H + j], kh = xp[2 * H + j], d = ds1[j];
      const T delta = softplus(-kf) - softplus(-ki);
      const T fn = std::exp(-softplus(delta)), in = std::exp(-softplus(-delta)), gh = min_g(kh);
      // d f'/dδ = -f' σ(δ), d i'/dδ = i' σ(-δ); dδ/dk_f = -σ(-k_f), dδ/dk_i = σ(-k_i)
      const T ddelta = -d * s0[j] * fn * sigm(delta) + d * gh * in * sigm(-delta);
      dxp[j] = -ddelta * sigm(-kf);
      dxp[H + j] = ddelta * sigm(-ki);
      dxp[2 * H + j] = d * in * min_dg(kh);
      ds0[j] = d * fn;
    }
  }
};

}  // namespace rnnlab_generic
