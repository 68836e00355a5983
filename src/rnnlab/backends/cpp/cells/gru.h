// GRU (cells/gru.py) in both forms: torch.nn's (reset_after=True: n = tanh(x_n + r ⊙ (W_hn h + b_hn))) and the paper's (n = tanh(x_n + W_hn (r ⊙ h)), a second product); the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// xp blocks r, z, n (b_ih plus b_hh's r and z parts folded in by the caller); hh blocks W_hr h, W_hz h, W_hn h;
// state (h); e = (b_hn) when opt has BHN (b_hn sits behind the reset gate, so it cannot be folded);
// saved: r, z, n and W_hn h + b_hn.
struct GRU {
  enum : int64_t { BHN = 1 };
  static constexpr Rec REC = Rec::Full;

  static Sizes sizes(int64_t opt) { return Sizes{3, 3, 1, 4, opt & BHN ? 1 : 0}; }

  template <typename T>
  static inline void forward(int64_t H, int64_t opt, const T* __restrict xp, const T* __restrict hh,
                             const T* __restrict e, const T* __restrict s0, T* __restrict s1, T* __restrict a) {
    const bool has_b = (opt & BHN) != 0;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T r = sigm(xp[j] + hh[j]);
      const T z = sigm(xp[H + j] + hh[H + j]);
      const T hn = hh[2 * H + j] + (has_b ? e[j] : T(0));
      const T n = std::tanh(xp[2 * H + j] + r * hn);
      a[j] = r;
      a[H + j] = z;
      a[2 * H + j] = n;
      a[3 * H + j] = hn;
      s1[j] = (T(1) - z) * n + z * s0[j];
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t opt, const T*, const T*, const T* __restrict s0, const T*,
                              const T* __restrict a, const T* __restrict ds1, T* __restrict dxp,
                              T* __restrict dhh, T* __restrict de, T* __restrict ds0) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T r = a[j], z = a[H + j], n = a[2 * H + j], hn = a[3 * H + j], d = ds1[j];
      const T dzn = d * (T(1) - z) * (T(1) - n * n);
      const T dzz = d * (s0[j] - n) * z * (T(1) - z);
      const T dzr = dzn * hn * r * (T(1) - r);
      dxp[j] = dzr;
      dxp[H + j] = dzz;
      dxp[2 * H + j] = dzn;
      dhh[j] = dzr;
      dhh[H + j] = dzz;
      dhh[2 * H + j] = dzn * r;
      ds0[j] = d * z;
    }
    if (opt & BHN) {
      RNNLAB_SIMD
      for (int64_t j = 0; j < H; ++j) de[j] += dhh[2 * H + j];
    }
  }
};

// The paper's form (reset_after=False): n = tanh(x_n + W_hn (r ⊙ h)).  xp blocks r, z, n with b_ih and all of
// b_hh folded in; the first product's blocks W_hr h, W_hz h; the second product (SECOND) reads u = r ⊙ h;
// state (h); saved: r, z, n, u (u last, as the driver reads it).
struct GRUPaper {
  static constexpr int64_t X = 3, G = 2, S = 1, A = 4, E = 0, SECOND = 1;
  static constexpr Rec REC = Rec::Full;

  template <typename T>
  static inline void forward_a(int64_t H, int64_t, const T* __restrict xp, const T* __restrict hh, const T*,
                               const T*, const T* __restrict hd, T* __restrict a) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T r = sigm(xp[j] + hh[j]);
      a[j] = r;
      a[H + j] = sigm(xp[H + j] + hh[H + j]);
      a[3 * H + j] = r * hd[j];
    }
  }

  template <typename T>
  static inline void forward_b(int64_t H, int64_t, const T* __restrict xp, const T*, const T* __restrict q,
                               const T*, const T* __restrict s0, T* __restrict s1, T* __restrict a) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T z = a[H + j];
      const T n = std::tanh(xp[2 * H + j] + q[j]);
      a[2 * H + j] = n;
      s1[j] = (T(1) - z) * n + z * s0[j];
    }
  }

  template <typename T>
  static inline void backward_b(int64_t H, int64_t, const T*, const T*, const T* __restrict s0, const T*,
                                const T* __restrict a, const T* __restrict ds1, T* __restrict dxp,
                                T* __restrict dhh, T* __restrict dq, T*, T* __restrict ds0) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T z = a[H + j], n = a[2 * H + j], d = ds1[j];
      const T dzn = d * (T(1) - z) * (T(1) - n * n);
      const T dzz = d * (s0[j] - n) * z * (T(1) - z);
      dxp[H + j] = dzz;
      dhh[H + j] = dzz;
      dxp[2 * H + j] = dzn;
      dq[j] = dzn;
      ds0[j] = d * z;
    }
  }

  template <typename T>
  static inline void backward_a(int64_t H, int64_t, const T*, const T*, const T*, const T* __restrict hd,
                                const T* __restrict a, const T* __restrict du, T* __restrict dxp,
                                T* __restrict dhh, T* __restrict dhd) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T r = a[j];
      const T dzr = du[j] * hd[j] * r * (T(1) - r);
      dxp[j] = dzr;
      dhh[j] = dzr;
      dhd[j] += du[j] * r;
    }
  }
};

}  // namespace rnnlab_generic
