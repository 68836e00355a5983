// Depth-gated LSTM (Yao et al. 2015) above the first layer: the element-wise rules of a layer that reads the cell
// state of the layer below (the first layer has no layer below and runs the LSTM rule, cells/lstm.h).
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// xp blocks: i, f, g, o (W_i* x + b_i* + b_h*), d (W_id x + b_id) and l = c^{l-1}_t, the layer below's cell state
// at this step (its gradient goes back through xp to the layer below); hh blocks i, f, g, o; state (h, c);
// e = (w_ci, w_cf, w_co, w_cd, w_ld), zero rows for the peepholes when the cell has none; saved: i, f, g, o, d.
//   d = σ(x_d + w_cd ⊙ c_{t-1} + w_ld ⊙ l),  c = f ⊙ c_{t-1} + i ⊙ g + d ⊙ l
// The depth terms multiply as the cell's step does (no guard: ±inf there gives what the reference gives); the
// peepholes use driver.h's peep, as the LSTM rule does, so that a zero row adds exactly 0.
struct DepthGated {
  static constexpr int64_t X = 6, G = 4, S = 2, A = 5, E = 5;
  static constexpr Rec REC = Rec::Full;

  template <typename T>
  static inline void forward(int64_t H, int64_t, const T* xp, const T* hh, const T* e, const T* s0, T* s1,
                             T* a) {
    const T* __restrict c0 = s0 + H;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T cp = c0[j], l = xp[5 * H + j];
      const T i = sigm(xp[j] + hh[j] + peep(e[j], cp));
      const T f = sigm(xp[H + j] + hh[H + j] + peep(e[H + j], cp));
      const T g = std::tanh(xp[2 * H + j] + hh[2 * H + j]);
      const T d = sigm(xp[4 * H + j] + e[3 * H + j] * cp + e[4 * H + j] * l);
      const T c = f * cp + i * g + d * l;
      const T o = sigm(xp[3 * H + j] + hh[3 * H + j] + peep(e[2 * H + j], c));
      s1[j] = o * std::tanh(c);
      s1[H + j] = c;
      a[j] = i;
      a[H + j] = f;
      a[2 * H + j] = g;
      a[3 * H + j] = o;
      a[4 * H + j] = d;
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t, const T* xp, const T* e, const T* s0, const T* s1, const T* a,
                              const T* ds1, T* dxp, T* dhh, T* de, T* ds0) {
    const T* __restrict c0 = s0 + H;
    const T* __restrict c1 = s1 + H;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j], d = a[4 * H + j];
      const T cp = c0[j], c = c1[j], l = xp[5 * H + j], dh = ds1[j];
      const T act = std::tanh(c);
      const T dzo = dh * act * o * (T(1) - o);
      const T dc = ds1[H + j] + dh * o * (T(1) - act * act) + peep(e[2 * H + j], dzo);
      const T dzi = dc * g * i * (T(1) - i);
      const T dzf = dc * cp * f * (T(1) - f);
      const T dzg = dc * i * (T(1) - g * g);
      const T dzd = dc * l * d * (T(1) - d);
      dxp[j] = dhh[j] = dzi;
      dxp[H + j] = dhh[H + j] = dzf;
      dxp[2 * H + j] = dhh[2 * H + j] = dzg;
      dxp[3 * H + j] = dhh[3 * H + j] = dzo;
      dxp[4 * H + j] = dzd;
      dxp[5 * H + j] = dc * d + e[4 * H + j] * dzd;  // to the layer below's c
      de[j] += dzi * cp;
      de[H + j] += dzf * cp;
      de[2 * H + j] += dzo * c;
      de[3 * H + j] += dzd * cp;
      de[4 * H + j] += dzd * l;
      ds0[j] = T(0);  // h_{t-1} enters only through the recurrent product (the driver adds it)
      ds0[H + j] = dc * f + peep(e[j], dzi) + peep(e[H + j], dzf) + e[3 * H + j] * dzd;
    }
  }
};

}  // namespace rnnlab_generic
