// LSTM and its option variants (cells/lstm.py: peepholes, CIFG, Greff's NIG/NFG/NOG/NIAF/NOAF): the element-wise rules.
#pragma once

#include "../driver.h"

namespace rnnlab_generic {

// xp / hh blocks: the present gates of i, f, g, o in that order (an absent gate has no block; CIFG has no f);
// state (h, c); e = (w_ci, w_cf, w_co) peepholes (zero rows for absent ones) when opt has PEEP; saved: the
// present gates' activations, in block order.  Option word: the bits below, all clear = the plain LSTM.
// PROJ (LSTMP): state component 0 is m = o ⊙ act(c) and the driver forms h = m W_rᵀ (driver.h, proj_bit).
// FGR (Greff's full gate recurrence): the state is (h, c, a) with a = [i, f, o] (1 for an absent gate, 1 - i
// when coupled), and the driver adds a_{t-1} W_ggᵀ to the present i, f, o blocks of hh (driver.h, PART_REC).
struct LSTM {
  enum : int64_t {
    NO_I = 1, NO_F = 2, NO_O = 4, COUPLED = 8, NO_IN_ACT = 16, NO_OUT_ACT = 32, PEEP = 64, PROJ = 128, FGR = 256
  };
  static constexpr int64_t PART_REC = FGR;
  static constexpr Rec REC = Rec::Full;
  // dL/dhh equals dL/dxp block for block (xp and hh are added, nothing else): the driver keeps one of them
  static constexpr bool DHH_IS_DXP = true;

  static Sizes sizes(int64_t opt) {
    const int64_t gates = 4 - !!(opt & NO_I) - !!(opt & (NO_F | COUPLED)) - !!(opt & NO_O);
    return Sizes{gates, gates, opt & FGR ? 5 : 2, gates, opt & PEEP ? 3 : 0};
  }

  // FGR: the part a (state components 2..4) feeds the i, f, o blocks (a removed or coupled gate's is dropped)
  static PartRec part_rec(int64_t opt);

  // Block offsets (in units of H) of i, f, g, o; -1 for an absent gate.
  struct Offsets {
    int64_t i, f, g, o;
    explicit Offsets(int64_t opt) {
      int64_t k = 0;
      i = opt & NO_I ? -1 : k++;
      f = opt & (NO_F | COUPLED) ? -1 : k++;
      g = k++;
      o = opt & NO_O ? -1 : k++;
    }
  };

  // Per-thread scratch: zeros read for absent gates (ones for a per-unit select), and a sink written for them
  // (and for FGR's a when off), so every loop below is one branch-free vectorisable pass whatever the options
  // (0/1 multipliers select: measured faster than branches).  Two buffers: the zeros are never written, so no
  // call of another H can dirty them.
  template <typename T>
  static const T* zeros(int64_t H) {
    thread_local std::vector<T> buf;
    if (static_cast<int64_t>(buf.size()) < 3 * H) buf.assign(3 * H, T(0));
    return buf.data();
  }
  template <typename T>
  static const T* ones(int64_t H) {
    thread_local std::vector<T> buf;
    if (static_cast<int64_t>(buf.size()) < H) buf.assign(H, T(1));
    return buf.data();
  }
  template <typename T>
  static T* sinks(int64_t H) {
    thread_local std::vector<T> buf;
    if (static_cast<int64_t>(buf.size()) < 6 * H) buf.resize(6 * H);
    return buf.data();
  }

  template <typename T>
  static inline void forward(int64_t H, int64_t opt, const T* xp, const T* hh, const T* e, const T* s0, T* s1,
                             T* a) {
    const Offsets k(opt);
    const T* zero = zeros<T>(H);
    T* z = sinks<T>(H);  // [0, 3H): absent gates, [3H, 6H): a without FGR
    auto in = [&](int64_t off, const T* base) { return off >= 0 ? base + off * H : zero; };
    auto sink = [&](int64_t off, int64_t n) { return off >= 0 ? a + off * H : z + n * H; };
    const T *__restrict xi = in(k.i, xp), *__restrict xf = in(k.f, xp), *__restrict xg = xp + k.g * H,
              *__restrict xo = in(k.o, xp);
    const T *__restrict hi = in(k.i, hh), *__restrict hf = in(k.f, hh), *__restrict hg = hh + k.g * H,
              *__restrict ho = in(k.o, hh);
    const T* __restrict wci = opt & PEEP ? e : zero;
    const T* __restrict wcf = opt & PEEP ? e + H : zero;
    const T* __restrict wco = opt & PEEP ? e + 2 * H : zero;
    T *__restrict ai = sink(k.i, 0), *__restrict af = sink(k.f, 1), *__restrict ag = a + k.g * H,
      *__restrict ao = sink(k.o, 2);
    const T* __restrict c0 = s0 + H;
    T* __restrict h1 = s1;
    T* __restrict c1 = s1 + H;
    const bool fg = (opt & FGR) != 0;
    T *__restrict ani = fg ? s1 + 2 * H : z + 3 * H, *__restrict anf = fg ? s1 + 3 * H : z + 4 * H,
      *__restrict ano = fg ? s1 + 4 * H : z + 5 * H;
    const T mi = k.i >= 0, mf = k.f >= 0, mo = k.o >= 0, cpl = (opt & COUPLED) != 0;
    const bool ia = !(opt & NO_IN_ACT), oa = !(opt & NO_OUT_ACT);
    const T one = 1, nf = one - mf - cpl;  // f = 1 when there is neither a forget gate nor coupling
    RNNLAB_SIMD
    for (int64_t j = 0; j < H; ++j) {
      const T cp = c0[j];
      const T i = mi * sigm(xi[j] + hi[j] + peep(wci[j], cp)) + (one - mi);
      const T f = cpl * (one - i) + mf * sigm(xf[j] + hf[j] + peep(wcf[j], cp)) + nf;
      const T zg = xg[j] + hg[j];
      // selects, not 0/1 products: (1 - ia) * zg is NaN for an infinite pre-activation
      const T g = ia ? std::tanh(zg) : zg;
      const T c = f * cp + i * g;
      const T o = mo * sigm(xo[j] + ho[j] + peep(wco[j], c)) + (one - mo);
      const T act = oa ? std::tanh(c) : c;
      ai[j] = i;
      af[j] = f;
      ag[j] = g;
      ao[j] = o;
      c1[j] = c;
      h1[j] = o * act;
      ani[j] = i;
      anf[j] = f;
      ano[j] = o;
    }
  }

  template <typename T>
  static inline void backward(int64_t H, int64_t opt, const T*, const T* e, const T* s0, const T* s1, const T* a,
                              const T* ds1, T* dxp, T*, T* de, T* ds0) {
    const Offsets k(opt);
    const T* zero = zeros<T>(H);
    T* z = sinks<T>(H);
    auto in = [&](int64_t off) { return off >= 0 ? a + off * H : zero; };
    auto sink = [&](int64_t off, int64_t n) { return off >= 0 ? dxp + off * H : z + n * H; };
    const T *__restrict gi = in(k.i), *__restrict gf = in(k.f), *__restrict gg = a + k.g * H,
              *__restrict go = in(k.o);
    T *__restrict di = sink(k.i, 0), *__restrict df = sink(k.f, 1), *__restrict dg = dxp + k.g * H,
      *__restrict dob = sink(k.o, 2);
    const bool pe = (opt & PEEP) != 0;
    const T* __restrict wci = pe ? e : zero;
    const T* __restrict wcf = pe ? e + H : zero;
    const T* __restrict wco = pe ? e + 2 * H : zero;
    const T* __restrict c0 = s0 + H;
    const T* __restrict c1 = s1 + H;
    const T* __restrict dh = ds1;
    const T* __restrict dc1 = ds1 + H;
    T* __restrict dh0 = ds0;
    T* __restrict dc0 = ds0 + H;
    // FGR: the gradient reaching this step's a = [i, f, o] (from the next step's product and the final state)
    const bool fg = (opt & FGR) != 0;
    const T *__restrict dai = fg ? ds1 + 2 * H : zero, *__restrict daf = fg ? ds1 + 3 * H : zero,
            *__restrict dao = fg ? ds1 + 4 * H : zero;
    const T mi = k.i >= 0, mf = k.f >= 0, mo = k.o >= 0, cpl = (opt & COUPLED) != 0;
    const T ia = !(opt & NO_IN_ACT), oa = !(opt & NO_OUT_ACT);
    const T one = 1, nf = one - mf - cpl;
    // GCC vectorises no select on a loop-invariant condition between vector values (nor a call under one): with
    // them this loop ran scalar (tanhf per unit), 4x the forward's element-wise time, 5% of an LSTM training
    // step at (100, 64, 256).  So the options select pointers here, never values in the loop: coupling reads
    // c_prev and the f gradient of a through cpc / dafc (zeros without it), the output activation's choice is a
    // per-unit compare (act_on: ones or zeros).  An absent gate is exactly 1, so its σ' factor g(1 - g) is 0 and
    // its dz only reaches the sink and a zero peephole (peep() ignores it, whatever its value).
    const bool coupled = cpl != T(0);
    const T* __restrict cpc = coupled ? c0 : zero;
    const T* __restrict dafc = coupled ? daf : zero;
    const T* __restrict act_on = oa != T(0) ? ones<T>(H) : zero;
    // and once more with every option constant (every gate, both activations): the LSTM, peepholes, FGR
    auto loop = [&](auto all_gates) {
      constexpr bool ALL = decltype(all_gates)::value;
      RNNLAB_SIMD
      for (int64_t j = 0; j < H; ++j) {
        const T i = ALL ? gi[j] : mi * gi[j] + (one - mi);
        const T f = ALL ? gf[j] : cpl * (one - i) + mf * gf[j] + nf;
        const T g = gg[j];
        const T o = ALL ? go[j] : mo * go[j] + (one - mo);
        const T c = c1[j], cp = c0[j];
        const T th = std::tanh(c);
        const T act = ALL || act_on[j] != T(0) ? th : c;
        const T dzo = (dh[j] * act + dao[j]) * o * (one - o);
        const T dc = dc1[j] + dh[j] * o * (one - (ALL ? one : oa) * act * act) + peep(wco[j], dzo);
        const T dzg = dc * i * (one - (ALL ? one : ia) * g * g);
        // c = f c_prev + i g, and with coupling f = 1 - i also depends on i
        const T dzi = (dc * (ALL ? g : g - cpc[j]) + dai[j] - (ALL ? T(0) : dafc[j])) * i * (one - i);
        const T dzf = (dc * cp + daf[j]) * f * (one - f);
        dc0[j] = dc * f + peep(wci[j], dzi) + peep(wcf[j], dzf);
        dh0[j] = T(0);  // h_{t-1} enters only through the recurrent product (the driver adds it)
        di[j] = dzi;
        df[j] = dzf;
        dg[j] = dzg;
        dob[j] = dzo;
      }
    };
    if (opt & (NO_I | NO_F | NO_O | COUPLED | NO_IN_ACT | NO_OUT_ACT))
      loop(std::false_type{});
    else
      loop(std::true_type{});
    if (fg)  // a_{t-1} reaches this step only through the driver's product (it adds that gradient)
      for (int64_t j = 0; j < 3 * H; ++j) ds0[2 * H + j] = T(0);
    if (pe) {
      RNNLAB_SIMD
      for (int64_t j = 0; j < H; ++j) {
        de[j] += di[j] * c0[j];
        de[H + j] += df[j] * c0[j];
        de[2 * H + j] += dob[j] * c1[j];
      }
    }
  }
};

inline PartRec LSTM::part_rec(int64_t opt) {
  const Offsets k(opt);
  return PartRec{2, 3, {k.i, k.f, k.o, -1, -1, -1, -1, -1}};
}

}  // namespace rnnlab_generic
