// SRU (Lei et al. 2018): gates on c_{t-1} through v_f, v_r, highway output; the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// xp blocks: f̃ = W_f x + b_f, r̃ = W_r x + b_r, x̃ = W x, x' (x or W' x); state (h, c); e = (v_f, v_r);
// saved: f, r.  No recurrent matrix: the only recurrence is element-wise on c.  Recurrent dropout masks c where
// it enters the gates (v ⊙ (c ⊙ m), as SRUCell.step's ctx.drop), not in the carry f ⊙ c: m is the row's mask or
// nullptr (DROP = 1: state component 1, read here rather than by a recurrent product).
struct SRU {
  static constexpr int64_t X = 4, G = 0, S = 2, A = 2, E = 2;
  static constexpr int64_t DROP = 1;
  static constexpr Rec REC = Rec::None;

  template <typename T>
  static inline void forward(int64_t H, int64_t, const T* xp, const T*, const T* e, const T* s0, T* s1, T* a,
                             const T* m) {
    const T* c0 = s0 + H;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T cd = m ? c0[j] * m[j] : c0[j];
      const T f = sigm(xp[j] + e[j] * cd);
      const T r = sigm(xp[H + j] + e[H + j] * cd);
      const T c = f * c0[j] + (T(1) - f) * xp[2 * H + j];
      s1[H + j] = c;
      s1[j] = r * c + (T(1) - r) * xp[3 * H + j];
      a[j] = f;
      a[H + j] = r;
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t, const T* xp, const T* e, const T* s0, const T* s1,
                              const T* a, const T* ds1, T* dxp, T*, T* de, T* ds0, const T* m) {
    const T* c0 = s0 + H;
    const T* c1 = s1 + H;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T f = a[j], r = a[H + j], dh = ds1[j];
      const T dr = dh * c1[j] - dh * xp[3 * H + j];
      const T dc = ds1[H + j] + dh * r;
      const T df = dc * c0[j] - dc * xp[2 * H + j];
      const T daf = df * (T(1) - f) * f;
      const T dar = dr * (T(1) - r) * r;
      dxp[j] = daf;
      dxp[H + j] = dar;
      dxp[2 * H + j] = dc * (T(1) - f);
      dxp[3 * H + j] = dh * (T(1) - r);
      const T cd = m ? c0[j] * m[j] : c0[j];
      de[j] += daf * cd;
      de[H + j] += dar * cd;
      ds0[j] = T(0);  // h_{t-1} is not read
      const T dcd = daf * e[j] + dar * e[H + j];  // through c ⊙ m
      ds0[H + j] = dc * f + (m ? dcd * m[j] : dcd);
    }
  }
};

}  // namespace rnnlab_generic
