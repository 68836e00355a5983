// MUT1, MUT2, MUT3 (cells/mut.py; Jozefowicz, Zaremba & Sutskever 2015): n = tanh(x_h + W_hh (r ⊙ h)), a second product; the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// xp blocks z, r, h with every bias folded in (MUT1's tanh of x already applied by the cell's projection); the
// first product's blocks: MUT1 W_hr h; MUT2 W_hz h, W_hr h; MUT3 W_hz tanh(h) (MAPPED: φ = tanh), W_hr h; the
// second product reads u = r ⊙ h; state (h); saved: z, r, n, u (u last, as the driver reads it).
//   z = σ(x_z [+ W_hz h | + W_hz tanh(h)]), r = σ(x_r + W_hr h), n = tanh(x_h + W_hh u), h' = z n + (1 - z) h
template <int Mode>
struct MUT {
  static constexpr int64_t X = 3, G = Mode == 1 ? 1 : 2, S = 1, A = 4, E = 0, SECOND = 1;
  static constexpr int64_t MAPPED = Mode == 3 ? 1 : 0;
  static constexpr Rec REC = Rec::Full;
  static constexpr int64_t ZR = Mode == 1 ? -1 : 0, RR = Mode == 1 ? 0 : 1;  // hh block of z (none) and r

  template <typename T>
  static inline T map(T h) { return std::tanh(h); }
  template <typename T>
  static inline T dmap(T h) {
    const T t = std::tanh(h);
    return T(1) - t * t;
  }

  template <typename T>
  static inline void forward_a(int64_t H, int64_t, const T* __restrict xp, const T* __restrict hh, const T*,
                               const T*, const T* __restrict hd, T* __restrict a) {
    const T* __restrict hr = hh + RR * H;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T r = sigm(xp[H + j] + hr[j]);
      T zp = xp[j];
      if constexpr (ZR >= 0) zp += hh[ZR * H + j];  // MUT1's z reads x only
      a[j] = sigm(zp);
      a[H + j] = r;
      a[3 * H + j] = r * hd[j];
    }
  }

  template <typename T>
  static inline void forward_b(int64_t H, int64_t, const T* __restrict xp, const T*, const T* __restrict q,
                               const T*, const T* __restrict s0, T* __restrict s1, T* __restrict a) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T z = a[j];
      const T n = std::tanh(xp[2 * H + j] + q[j]);
      a[2 * H + j] = n;
      s1[j] = z * n + (T(1) - z) * s0[j];
    }
  }

  template <typename T>
  static inline void backward_b(int64_t H, int64_t, const T*, const T*, const T* __restrict s0, const T*,
                                const T* __restrict a, const T* __restrict ds1, T* __restrict dxp,
                                T* __restrict dhh, T* __restrict dq, T*, T* __restrict ds0) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T z = a[j], n = a[2 * H + j], d = ds1[j];
      const T dzn = d * z * (T(1) - n * n);
      const T dzz = d * (n - s0[j]) * z * (T(1) - z);
      dxp[j] = dzz;
      dxp[2 * H + j] = dzn;
      dq[j] = dzn;
      ds0[j] = d * (T(1) - z);
    }
    if constexpr (ZR >= 0) {
      RNNLAB_SIMD
      for (int64_t j = 0; j < H; ++j) dhh[ZR * H + j] = dxp[j];
    }
  }

  template <typename T>
  static inline void backward_a(int64_t H, int64_t, const T*, const T*, const T*, const T* __restrict hd,
                                const T* __restrict a, const T* __restrict du, T* __restrict dxp,
                                T* __restrict dhh, T* __restrict dhd) {
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T r = a[H + j];
      const T dzr = du[j] * hd[j] * r * (T(1) - r);
      dxp[H + j] = dzr;
      dhh[RR * H + j] = dzr;
      dhd[j] += du[j] * r;
    }
  }
};

using MUT1 = MUT<1>;
using MUT2 = MUT<2>;
using MUT3 = MUT<3>;

}  // namespace rnnlab_generic
