// sLSTM (Beck et al. 2024, xLSTM): exponential input gate, normaliser n, stabiliser m; the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// xp and hh blocks: z̃, ĩ, f̃, õ; state (h, c, n, m); sigmoid forget gate (log f = log σ(f̃)).
// saved: z, o, i', f', σ(-f̃), a = log σ(f̃) + m_{t-1}, ĩ.
// The backward is autograd's through every operation of SLSTMCell.step, including the stabiliser m
// (torch.maximum's rule: half the gradient to each side on a tie, all of it to both when NaN).
struct SLSTM {
  static constexpr int64_t X = 4, G = 4, S = 4, A = 7, E = 0;
  static constexpr Rec REC = Rec::Heads;

  template <typename T>
  static inline void forward(int64_t H, int64_t, const T* xp, const T* hh, const T*, const T* s0, T* s1, T* sv) {
    const T *c0 = s0 + H, *n0 = s0 + 2 * H, *m0 = s0 + 3 * H;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T zt = xp[j] + hh[j], it = xp[H + j] + hh[H + j];
      const T ft = xp[2 * H + j] + hh[2 * H + j], ot = xp[3 * H + j] + hh[3 * H + j];
      const T a = log_sigm(ft) + m0[j];
      const T m = (a > it || a != a) ? a : it;  // torch.maximum propagates NaN from either side
      const T m1 = (it != it) ? it : m;
      const T ip = std::exp(it - m1), fp = std::exp(a - m1);
      const T z = std::tanh(zt), o = sigm(ot);
      const T c = fp * c0[j] + ip * z;
      const T n = fp * n0[j] + ip;
      s1[j] = o * c / n;
      s1[H + j] = c;
      s1[2 * H + j] = n;
      s1[3 * H + j] = m1;
      sv[j] = z;
      sv[H + j] = o;
      sv[2 * H + j] = ip;
      sv[3 * H + j] = fp;
      sv[4 * H + j] = sigm(-ft);
      sv[5 * H + j] = a;
      sv[6 * H + j] = it;
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t, const T*, const T*, const T* s0, const T* s1,
                              const T* sv, const T* ds1, T* dxp, T* dhh, T*, T* ds0) {
    const T *c0 = s0 + H, *n0 = s0 + 2 * H;
    const T *c1 = s1 + H, *n1 = s1 + 2 * H;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T z = sv[j], o = sv[H + j], ip = sv[2 * H + j], fp = sv[3 * H + j], sf = sv[4 * H + j];
      const T a = sv[5 * H + j], it = sv[6 * H + j];
      const T dh = ds1[j];
      // h = (o c) / n
      const T q = o * c1[j];
      const T dq = dh / n1[j];
      const T dn = ds1[2 * H + j] - dh * ((q / n1[j]) / n1[j]);  // torch's div rule (no n² overflow)
      const T dout = dq * c1[j];
      const T dc = ds1[H + j] + dq * o;
      // c = f' c0 + i' z,  n = f' n0 + i'
      const T dfp = dc * c0[j] + dn * n0[j];
      const T dip = dc * z + dn;
      const T dz = dc * ip;
      // i' = exp(ĩ - m), f' = exp(a - m)
      T da = dfp * fp;
      T dit = dip * ip;
      const T dm = ds1[3 * H + j] - dfp * fp - dip * ip;
      // m = max(a, ĩ)
      const T half = dm / T(2);
      da += a == it ? half : (a < it ? T(0) : dm);
      dit += a == it ? half : (a > it ? T(0) : dm);
      const T dft = da * sf;  // d log σ(f̃) = σ(-f̃)
      const T dzt = dz * (T(1) - z * z);
      const T dot = dout * (T(1) - o) * o;
      dxp[j] = dhh[j] = dzt;
      dxp[H + j] = dhh[H + j] = dit;
      dxp[2 * H + j] = dhh[2 * H + j] = dft;
      dxp[3 * H + j] = dhh[3 * H + j] = dot;
      ds0[j] = T(0);  // h_{t-1} enters only through R (the driver adds it)
      ds0[H + j] = dc * fp;
      ds0[2 * H + j] = dn * fp;
      ds0[3 * H + j] = da;  // a = log σ(f̃) + m_{t-1}
    }
  }
};

}  // namespace rnnlab_generic
