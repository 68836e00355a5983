// Layer-normalised GRU and LSTM (cells/layernorm.py; Ba, Kiros & Hinton 2016): LN over each row of W_hh h; the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// LN(a; α, β) = α ⊙ â + β, â = (a - μ) / sqrt(σ² + ε) over one row of n values (biased variance, like
// F.layer_norm).  Writes â, returns 1 / sqrt(σ² + ε).  Plain sums: an "omp simd reduction" would reorder them,
// which needs -ffast-math semantics we do not build with.
template <typename T>
inline T ln_row(const T* __restrict a, T* __restrict ah, int64_t n, T eps) {
  T s = 0;
  for (int64_t j = 0; j < n; ++j) s += a[j];
  const T mu = s / T(n);
  s = 0;
  for (int64_t j = 0; j < n; ++j) s += (a[j] - mu) * (a[j] - mu);
  const T rstd = T(1) / std::sqrt(s / T(n) + eps);
  RNNLAB_SIMD
  for (int64_t j = 0; j < n; ++j) ah[j] = (a[j] - mu) * rstd;
  return rstd;
}

// In place: dâ -> da = rstd (dâ - mean(dâ) - â mean(dâ ⊙ â)).
template <typename T>
inline void ln_back_row(T* __restrict d, const T* __restrict ah, T rstd, int64_t n) {
  T s1 = 0, s2 = 0;
  for (int64_t j = 0; j < n; ++j) {
    s1 += d[j];
    s2 += d[j] * ah[j];
  }
  const T m1 = s1 / T(n), m2 = s2 / T(n);
  RNNLAB_SIMD
  for (int64_t j = 0; j < n; ++j) d[j] = rstd * (d[j] - m1 - ah[j] * m2);
}

// LN-GRU (reset after).  xp blocks r, z, n = LN(W_ih x) (the cell's projection); hh = W_hh h (3H);
// e rows: α (3), β (3, zero without bias), ε (1, every entry ε); saved: r, z, n, â (3H), rstd (every entry: the
// driver does not zero its buffers, so a rule writes every saved entry).
struct LayerNormGRU {
  static constexpr int64_t X = 3, G = 3, S = 1, A = 7, E = 7;
  static constexpr Rec REC = Rec::Full;

  template <typename T>
  static inline void forward(int64_t H, int64_t, const T* __restrict xp, const T* __restrict hh,
                             const T* __restrict e, const T* __restrict s0, T* __restrict s1, T* __restrict a) {
    const T* __restrict al = e;
    const T* __restrict be = e + 3 * H;
    T* __restrict ah = a + 3 * H;
    const T rstd = ln_row(hh, ah, 3 * H, e[6 * H]);
    for (int64_t j = 0; j < H; ++j) a[6 * H + j] = rstd;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T r = sigm(xp[j] + al[j] * ah[j] + be[j]);
      const T z = sigm(xp[H + j] + al[H + j] * ah[H + j] + be[H + j]);
      const T n = std::tanh(xp[2 * H + j] + r * (al[2 * H + j] * ah[2 * H + j] + be[2 * H + j]));
      a[j] = r;
      a[H + j] = z;
      a[2 * H + j] = n;
      s1[j] = (T(1) - z) * n + z * s0[j];
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t, const T*, const T* __restrict e, const T* __restrict s0,
                              const T*, const T* __restrict a, const T* __restrict ds1, T* __restrict dxp,
                              T* __restrict dhh, T* __restrict de, T* __restrict ds0) {
    const T* __restrict al = e;
    const T* __restrict be = e + 3 * H;
    const T* __restrict ah = a + 3 * H;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T r = a[j], z = a[H + j], n = a[2 * H + j], d = ds1[j];
      const T hn = al[2 * H + j] * ah[2 * H + j] + be[2 * H + j];
      const T dzn = d * (T(1) - z) * (T(1) - n * n);
      const T dzz = d * (s0[j] - n) * z * (T(1) - z);
      const T dzr = dzn * hn * r * (T(1) - r);
      dxp[j] = dzr;
      dxp[H + j] = dzz;
      dxp[2 * H + j] = dzn;
      dhh[j] = dzr;  // dL/d LN(W_hh h) for now
      dhh[H + j] = dzz;
      dhh[2 * H + j] = dzn * r;
      ds0[j] = d * z;
    }
    RNNLAB_SIMD
    for (int64_t j = 0; j < 3 * H; ++j) {
      de[j] += dhh[j] * ah[j];
      de[3 * H + j] += dhh[j];
      dhh[j] *= al[j];
    }
    ln_back_row(dhh, ah, a[6 * H], 3 * H);
  }
};

// LN-LSTM.  xp blocks i, f, g, o = LN(W_ih x); hh = W_hh h (4H); state (h, c);
// e rows: α2 (4), β2 (4), α3 (1), β3 (1) (β zero without bias), ε (1);
// saved: i, f, g, o, â (4H), ĉ (H), rstd of â (block 9), rstd of ĉ (block 10), each in every entry of its block
// (the driver does not zero its buffers, so a rule writes every saved entry).
struct LayerNormLSTM {
  static constexpr int64_t X = 4, G = 4, S = 2, A = 11, E = 11;
  static constexpr Rec REC = Rec::Full;

  template <typename T>
  static inline void forward(int64_t H, int64_t, const T* __restrict xp, const T* __restrict hh,
                             const T* __restrict e, const T* __restrict s0, T* __restrict s1, T* __restrict a) {
    const T* __restrict al = e;
    const T* __restrict be = e + 4 * H;
    const T* __restrict al_c = e + 8 * H;
    const T* __restrict be_c = e + 9 * H;
    const T eps = e[10 * H];
    T* __restrict ah = a + 4 * H;
    T* __restrict ch = a + 8 * H;
    const T rstd_a = ln_row(hh, ah, 4 * H, eps);
    for (int64_t j = 0; j < H; ++j) a[9 * H + j] = rstd_a;
    const T* __restrict c0 = s0 + H;
    T* __restrict c1 = s1 + H;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T i = sigm(xp[j] + al[j] * ah[j] + be[j]);
      const T f = sigm(xp[H + j] + al[H + j] * ah[H + j] + be[H + j]);
      const T g = std::tanh(xp[2 * H + j] + al[2 * H + j] * ah[2 * H + j] + be[2 * H + j]);
      const T o = sigm(xp[3 * H + j] + al[3 * H + j] * ah[3 * H + j] + be[3 * H + j]);
      a[j] = i;
      a[H + j] = f;
      a[2 * H + j] = g;
      a[3 * H + j] = o;
      c1[j] = f * c0[j] + i * g;
    }
    const T rstd_c = ln_row(c1, ch, H, eps);
    for (int64_t j = 0; j < H; ++j) a[10 * H + j] = rstd_c;
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) s1[j] = a[3 * H + j] * std::tanh(al_c[j] * ch[j] + be_c[j]);
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t, const T*, const T* __restrict e, const T* __restrict s0,
                              const T*, const T* __restrict a, const T* __restrict ds1, T* __restrict dxp,
                              T* __restrict dhh, T* __restrict de, T* __restrict ds0) {
    const T* __restrict al = e;
    const T* __restrict al_c = e + 8 * H;
    const T* __restrict be_c = e + 9 * H;
    const T* __restrict ah = a + 4 * H;
    const T* __restrict ch = a + 8 * H;
    const T* __restrict c0 = s0 + H;
    const T* __restrict dh = ds1;
    // dL/dĉ, then dL/dc through LN(c): per-thread scratch (rows may run in parallel)
    thread_local std::vector<T> scratch;
    if (static_cast<int64_t>(scratch.size()) < H) scratch.resize(H);
    T* __restrict dch = scratch.data();
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T o = a[3 * H + j];
      const T act = std::tanh(al_c[j] * ch[j] + be_c[j]);
      const T dy = dh[j] * o * (T(1) - act * act);
      dxp[3 * H + j] = dh[j] * act * o * (T(1) - o);
      de[8 * H + j] += dy * ch[j];
      de[9 * H + j] += dy;
      dch[j] = dy * al_c[j];
    }
    ln_back_row(dch, ch, a[10 * H], H);
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T i = a[j], f = a[H + j], g = a[2 * H + j];
      const T dc = ds1[H + j] + dch[j];
      dxp[j] = dc * g * i * (T(1) - i);
      dxp[H + j] = dc * c0[j] * f * (T(1) - f);
      dxp[2 * H + j] = dc * i * (T(1) - g * g);
      ds0[H + j] = dc * f;
      ds0[j] = T(0);  // h_{t-1} enters only through the recurrent product (the driver adds it)
    }
    RNNLAB_SIMD
    for (int64_t j = 0; j < 4 * H; ++j) {
      de[j] += dxp[j] * ah[j];
      de[4 * H + j] += dxp[j];
      dhh[j] = dxp[j] * al[j];
    }
    ln_back_row(dhh, ah, a[9 * H], 4 * H);
  }
};

}  // namespace rnnlab_generic
