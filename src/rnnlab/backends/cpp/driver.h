// The shared CPU time loop: one templated forward/backward driver for every cell declared in cells/<name>.h.
//
// A cell is a struct with compile-time sizes and two static element-wise functions for ONE batch row:
//   X   blocks of H in the projected input xp (T, B, X*H), formed once for all steps by the caller's input GEMM;
//   G   blocks of H in the recurrent product hh (B, G*H) of the previous h (state component 0);
//   S   state components of H each, carried as one (B, S*H) row; component 0 is the output h;
//   A   blocks of H the forward step saves for the backward step;
//   E   element-wise parameter vectors (E, H) the step reads (e.g. SRU's v_f, v_r); the driver sums their grads;
//   REC the recurrent product the driver forms (Rec below);
//   forward(H, opt, xp, hh, e, s0, s1, a)                       -> writes s1 (S*H) and a (A*H)
//   backward(H, opt, xp, e, s0, s1, a, ds1, dxp, dhh, de, ds0) -> writes dxp (X*H), dhh (G*H), ds0 (S*H)
//                                                                   and adds to de (E*H)
// "writes" means every entry: the driver's buffers are not zero-filled (tests/test_buffers.py NaN-fills them).
// ds0 is only the element-wise part; the driver adds dhh through the recurrent weights to ds0's h block.
// backward gets no hh (it is not recomputed): what the backward needs beyond xp and the states goes into a.
//
// The driver owns everything else: the loop over time, lengths (a row past its length keeps its state and
// outputs 0; its gradients pass straight through), the recurrent product per step, the saved tensors and the
// recurrent weight gradient as one product over all T*B rows.  Per step the recurrent product writes into
// buffers allocated once per call (Recurrence): an at::mm / at::bmm into them, or an inline loop (diagonal).
// No -ffast-math (loader flags): the helpers below are exact at ±inf and never overflow.
#pragma once

#include <torch/extension.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "buffers.h"  // big_empty: large buffers on transparent huge pages
#include "gemm.h"  // libmvec declarations, RNNLAB_SIMD, the per-step GEMMs (Lin) and for_rows

namespace rnnlab_generic {

using at::Tensor;
using rnnlab_buffers::big_empty;
using rnnlab_gemm::for_rows;
using rnnlab_gemm::kSmallGemm;
using rnnlab_gemm::Lin;

// How hh = R(h_{t-1}) is formed (B, G*H) from h (B, H):
//   Full:     W (G*H, H), hh = h Wᵀ (one at::mm per step)
//   Diagonal: u (G*H,), hh[g*H + j] = u[g*H + j] h[j]   (IndRNN)
//   None:     no recurrent product (G = 0; the cell reads its own state, e.g. SRU)
//   Heads:    block-diagonal over nh heads: W (G*H, dh) with dh = H / nh, row g*H + k*dh + j of head k sees
//             h[k*dh : (k+1)*dh]  (sLSTM; one batched product per step)
enum class Rec { Full, Diagonal, None, Heads };

// σ from e = exp(-|x|) <= 1: never overflows; exact 0/1 at ±inf; NaN stays NaN.
template <typename T>
inline T sigm(T x) {
  const T e = std::exp(-std::abs(x));
  const T r = T(1) / (T(1) + e);
  return x >= T(0) ? r : e * r;
}

// log σ(x) = -softplus(-x) = min(x, 0) - log1p(exp(-|x|)): finite for finite x, -inf at -inf, 0 at +inf.
template <typename T>
inline T log_sigm(T x) {
  const T lo = x < T(0) || x != x ? x : T(0);  // min(x, 0) keeping NaN, as a blend
  return lo - std::log1p(std::exp(-std::abs(x)));
}

// Peephole term w ⊙ c: an absent peephole is a zero weight, and 0 · ±inf would turn a state that overflowed
// (possible without the input tanh) into NaN where the cell simply has no such term.
template <typename T>
inline T peep(T w, T c) {
  return w != T(0) ? w * c : T(0);
}

inline std::vector<int64_t> row_lengths(const Tensor& lengths, int64_t T, int64_t B) {
  std::vector<int64_t> len(B, T);
  if (lengths.defined() && lengths.numel() > 0) {
    TORCH_CHECK(lengths.numel() == B, "lengths: expected ", B, " entries, got ", lengths.numel());
    auto l = lengths.contiguous().to(at::kLong);
    const int64_t* p = l.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) len[b] = std::min<int64_t>(std::max<int64_t>(p[b], 0), T);
  }
  return len;
}

// A cell's block counts (see the top of this file).  Most cells fix them at compile time (static constexpr
// X, G, S, A, E); a cell whose option word changes them (an LSTM without an input gate has one block less)
// defines ``static Sizes sizes(int64_t opt)`` instead.
struct Sizes {
  int64_t X, G, S, A, E;
};

template <class Cell, class = void>
struct has_sizes : std::false_type {};
template <class Cell>
struct has_sizes<Cell, std::void_t<decltype(Cell::sizes(int64_t(0)))>> : std::true_type {};

// A cell whose dL/dhh equals its dL/dxp block for block (hh is only added to xp) declares
// ``static constexpr bool DHH_IS_DXP = true``: its backward then leaves dhh alone and the driver feeds dxp to
// the recurrent products (one (T, B, G*H) buffer less to write and read).
template <class Cell, class = void>
struct dhh_is_dxp : std::false_type {};
template <class Cell>
struct dhh_is_dxp<Cell, std::void_t<decltype(Cell::DHH_IS_DXP)>> : std::bool_constant<Cell::DHH_IS_DXP> {};

// Recurrent dropout (cells/base.py StepContext.drop) masks h where it enters the recurrent product: by default
// the driver forms R(h ⊙ m) and routes R^T's gradient back through m.  A cell that drops another state
// component k where its own element-wise rule reads it (SRU: c in v ⊙ c) declares ``static constexpr int64_t
// DROP = k``; its forward and backward then take one more trailing argument, the row's mask (H) or nullptr.
template <class Cell, class = void>
struct drop_state : std::integral_constant<int64_t, 0> {};
template <class Cell>
struct drop_state<Cell, std::void_t<decltype(Cell::DROP)>> : std::integral_constant<int64_t, Cell::DROP> {};

// A second product inside the step (GRU's paper form, MUT1-3: n reads W_n (r ⊙ h)): a cell that declares
// ``static constexpr int64_t SECOND = Q`` has a weight of G*H + Q*H rows, the last Q*H forming q = u W_2ᵀ from
// an H-vector u that the first half of its rule makes.  Its rule is then two-phase:
//   forward_a(H, opt, xp, hh, e, s0, hd, a)              -> writes a, u = its LAST saved block (a + (A-1)*H)
//   forward_b(H, opt, xp, hh, q, e, s0, s1, a)           -> writes s1 and the rest of a
//   backward_b(H, opt, xp, e, s0, s1, a, ds1, dxp, dhh, dq, de, ds0) -> dq (Q*H) and what does not go through u
//   backward_a(H, opt, xp, e, s0, hd, a, du, dxp, dhh, dhd)          -> the rest; ADDS dL/dhd to dhd
// hd is h as the products read it (h ⊙ m under recurrent dropout, else h); the driver routes dhd back through
// the mask.  The driver forms q and du = dq W_2 per step over all rows, and dW_2 = Σ dqᵀ u over all T*B rows.
template <class Cell, class = void>
struct second_blocks : std::integral_constant<int64_t, 0> {};
template <class Cell>
struct second_blocks<Cell, std::void_t<decltype(Cell::SECOND)>> : std::integral_constant<int64_t, Cell::SECOND> {};

// Mapped rows (MUT3: z reads W_hz tanh(h)): a cell that declares ``static constexpr int64_t MAPPED = M`` has its
// first M*H product rows read φ(h) ⊙ m instead of h ⊙ m, with φ = Cell::map and φ' = Cell::dmap (of h).
template <class Cell, class = void>
struct mapped_blocks : std::integral_constant<int64_t, 0> {};
template <class Cell>
struct mapped_blocks<Cell, std::void_t<decltype(Cell::MAPPED)>> : std::integral_constant<int64_t, Cell::MAPPED> {};

// An output projection (LSTMP, Sak et al. 2014): a cell that declares ``static constexpr int64_t PROJ = bit`` has,
// when its option word has that bit, a rule whose component 0 is m (H) and an h that the driver forms itself,
// h = m W_rᵀ (P wide, one product over all rows per step).  Then the state row is [rule state (S*H), h (P)],
// w is [W (G*H, P); W_rᵀ (H, P)] (the recurrent product reads h), out is h (T, B, P), rec_mask is (B, P) on h,
// and zoneout's keep is (T, B, P + (Z-1)*H): h, then the rule's components 1..Z-1 (m itself is never mixed).
template <class Cell, class = void>
struct proj_bit : std::integral_constant<int64_t, 0> {};
template <class Cell>
struct proj_bit<Cell, std::void_t<decltype(Cell::PROJ)>> : std::integral_constant<int64_t, Cell::PROJ> {};

// A product from another state part (Greff's full gate recurrence: gates read the previous step's gates): a cell
// that declares ``static constexpr int64_t PART_REC = bit`` and ``static PartRec part_rec(int64_t opt)`` has, when
// its option word has that bit, the K*H-wide state part at component ``from`` read through W_p (K*H, K*H) per
// step, r = part W_pᵀ, and block k of r added to hh block dst[k] (-1: dropped).  w is then [W (G*H, H); W_p
// viewed (K*K*H, H)].  The rule sees r only inside hh (it must write ds0 of the part as 0: the part reaches the
// next step only through this product); the driver routes dL/dhh back through W_p to the part and forms dW_p as
// one product over all T*B rows.  Rec::Full, no split products, no output projection.
struct PartRec {
  int64_t from, K;
  int64_t dst[8];
};
template <class Cell, class = void>
struct part_rec_bit : std::integral_constant<int64_t, 0> {};
template <class Cell>
struct part_rec_bit<Cell, std::void_t<decltype(Cell::PART_REC)>>
    : std::integral_constant<int64_t, Cell::PART_REC> {};

// One call's part product: W_p and the per-step buffers, made once; off when the option bit is clear.
template <class Cell, typename T>
struct PartProduct {
  bool on = false;
  PartRec pr{};
  int64_t B = 0, H = 0, G = 0, SW = 0;
  Tensor wp, r;
  std::optional<Lin<T>> fwd, bwd;
  PartProduct(int64_t opt, const Tensor& w, int64_t B_, int64_t H_, int64_t G_, int64_t SW_)
      : B(B_), H(H_), G(G_), SW(SW_) {
    if constexpr (part_rec_bit<Cell>::value != 0) {
      on = (opt & part_rec_bit<Cell>::value) != 0;
      if (!on) return;
      pr = Cell::part_rec(opt);
      const int64_t KH = pr.K * H;
      TORCH_CHECK(w.dim() == 2 && w.size(0) == G * H + pr.K * KH && w.size(1) == H,
                  "w: expected [W (G*H, H); W_p viewed (K*K*H, H)] = (", G * H + pr.K * KH, ", ", H, "), got ",
                  w.sizes());
      wp = w.narrow(0, G * H, pr.K * KH).reshape({KH, KH}).contiguous();
      r = at::empty({B, KH}, w.options());
    }
  }
  // hh (B, G*H) += r scattered into the dst blocks, r = part W_pᵀ from the state rows s (B, SW)
  void add(T* hh, const T* s) {
    const int64_t KH = pr.K * H;
    if (!fwd) fwd.emplace(wp, false, B);
    T* rp = r.template data_ptr<T>();
    fwd->apply(rp, KH, s + pr.from * H, SW, B, false);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < pr.K; ++k) {
        if (pr.dst[k] < 0) continue;
        T* o = hh + b * G * H + pr.dst[k] * H;
        const T* q = rp + b * KH + k * H;
        for (int64_t j = 0; j < H; ++j) o[j] += q[j];
      }
  }
  // dr (B, K*H) gathered from dhh (B rows, leading dimension ldh), then the part's rows of d (B, SW) += dr W_p
  void back(const T* dhh, int64_t ldh, T* d) {
    const int64_t KH = pr.K * H;
    if (!bwd) bwd.emplace(wp, true, B);
    T* rp = r.template data_ptr<T>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < pr.K; ++k) {
        T* q = rp + b * KH + k * H;
        if (pr.dst[k] < 0) {
          std::fill(q, q + H, T(0));
        } else {
          const T* g = dhh + b * ldh + pr.dst[k] * H;
          for (int64_t j = 0; j < H; ++j) q[j] = g[j];
        }
      }
    bwd->apply(d + pr.from * H, SW, rp, KH, B, true);
  }
  // dW_p = Σ drᵀ part over all N = T*B rows, viewed (K*K*H, H) as it travels in w (ATen ops only: no copy of
  // W_p, no dtype dispatch)
  static Tensor grad(const PartRec& pr, int64_t H, const Tensor& dhh, const Tensor& part) {
    const int64_t N = part.size(0), KH = pr.K * H;
    auto dr = at::zeros({N, KH}, part.options());
    for (int64_t k = 0; k < pr.K; ++k)
      if (pr.dst[k] >= 0) dr.narrow(1, k * H, H).copy_(dhh.narrow(1, pr.dst[k] * H, H));
    return rnnlab_gemm::mm(dr.t(), part).reshape({pr.K * KH, H});
  }
};

// The widths of one call's state row: the rule's S*H, then h (P) when projected.
struct Layout {
  bool proj;
  int64_t P, SW, HW, HO, Z, KW;  // P; row width; width and offset of h; zoned parts; keep row width (proj)
  Layout(int64_t opt, int64_t bit, const Tensor& w, const Tensor& keep, int64_t G, int64_t S, int64_t H) {
    proj = (opt & bit) != 0;
    P = proj ? w.size(1) : 0;
    TORCH_CHECK(!proj || (w.dim() == 2 && w.size(0) == (G + 1) * H), "w: expected [W (G*H, P); W_r^T (H, P)] = (",
                (G + 1) * H, ", P), got ", w.sizes());
    SW = S * H + P;
    HW = proj ? P : H;
    HO = proj ? S * H : 0;
    const bool zoned = keep.defined() && keep.numel() > 0;
    if (!zoned) {
      Z = 0;
    } else if (proj) {
      TORCH_CHECK(keep.dim() == 3 && keep.size(2) >= P && (keep.size(2) - P) % H == 0,
                  "keep: expected (T, B, P + (Z-1)*H) with a projection");
      Z = 1 + (keep.size(2) - P) / H;
    } else {
      TORCH_CHECK(keep.dim() == 4, "keep: expected (T, Z, B, H)");
      Z = keep.size(1);
    }
    KW = proj && zoned ? keep.size(2) : 0;
  }
  // the keep weights of zoned part c (0: h) for row b at step t
  template <typename T>
  const T* keep_at(const T* k, int64_t t, int64_t c, int64_t b, int64_t B, int64_t H) const {
    if (proj) return k + (t * B + b) * KW + (c == 0 ? 0 : P + (c - 1) * H);
    return k + ((t * Z + c) * B + b) * H;
  }
};

// Zoneout's blend, torch.lerp(new, old, keep) as ATen computes it (the weight picks the formula), so that a
// keep mask of 0/1 gives exactly the reference's value, NaN included when old - new is not finite.
template <typename T>
inline T lerp_keep(T fresh, T old, T k) {
  return std::abs(k) < T(0.5) ? fresh + k * (old - fresh) : old - (old - fresh) * (T(1) - k);
}

template <class Cell>
inline Sizes sizes_of(int64_t opt) {
  if constexpr (has_sizes<Cell>::value) {
    return Cell::sizes(opt);
  } else {
    return Sizes{Cell::X, Cell::G, Cell::S, Cell::A, Cell::E};
  }
}

// The (E, H) element-wise parameters, or nullptr when the cell has none.
template <typename T>
inline const T* E_ptr(const Tensor& e) { return e.numel() > 0 ? e.data_ptr<T>() : nullptr; }

// The option word of a call: the cell's own bits, plus this one, which the op's autocast rule sets (generic_ops.py)
// to run the products in bf16 with float32 accumulation (gemm.h ReducedProducts; float32 states only).
constexpr int64_t kBf16Products = int64_t(1) << 62;

// The cell's own option bits of a call's option word.
inline int64_t cell_opt(int64_t opt) { return opt & ~kBf16Products; }

// Checks one call's dtypes and returns whether its products run in bf16.  Under autocast (generic_ops.py) xp may
// be bf16 / fp16 with float32 states (the driver reads it as float32); everything else is in the states' dtype.
inline bool bf16_products(int64_t opt, const Tensor& xp, const Tensor& states) {
  const auto s = states.scalar_type();
  const bool f32 = s == at::kFloat;
  TORCH_CHECK(xp.scalar_type() == s || (f32 && (xp.scalar_type() == at::kBFloat16 || xp.scalar_type() == at::kHalf)),
              "xp: expected the states' dtype, or bfloat16 / float16 with float32 states, got ", xp.scalar_type(),
              " with ", s, " states");
  const bool on = (opt & kBf16Products) != 0;
  TORCH_CHECK(!on || f32, "opt: bf16 products need float32 states, got ", s);
  return on;
}

// The projected input as the rules read it, one step at a time: xp itself in the states' dtype, or (bf16 / fp16
// under autocast) each step converted into one buffer that stays in cache.  Converting all of a bf16 xp up front
// (a fresh float32 copy of T*B*X*H) cost a fifth of a peephole LSTM call at (T, B, H) = (50, 128, 512).
template <typename T>
struct StepInput {
  Tensor xp, buf;
  int64_t row;  // entries per step, B*X*H

  StepInput(const Tensor& xp_in, const at::TensorOptions& opts) : xp(xp_in.contiguous()) {
    row = xp.size(0) > 0 ? xp.numel() / xp.size(0) : 0;
    if (xp.scalar_type() != opts.dtype()) buf = at::empty({row}, opts);
  }
  // step t's rows (B, X*H), valid until the next call
  const T* at(int64_t t) {
    if (!buf.defined()) return xp.data_ptr<T>() + t * row;
    T* b = buf.data_ptr<T>();
    if constexpr (std::is_same<T, float>::value) {
      if (xp.scalar_type() == at::kBFloat16) {
        rnnlab_gemm::from_bf16(b, reinterpret_cast<const uint16_t*>(xp.data_ptr<at::BFloat16>()) + t * row, row, false);
        return b;
      }
    }
    buf.copy_(xp.select(0, t).reshape({row}));
    return b;
  }
};

// The recurrent product of one call: weights rearranged and buffers allocated once, then per step
// hh (B, G*H) = R(h_{t-1}) and, backward, dh_{t-1} += R^T(dhh).  h is block 0 of the (B, S*H) state rows.
template <Rec R, typename T>
struct Recurrence {
  int64_t B, H, G, S, heads, dh;
  Tensor w, wk, hh, q, dq;

  Recurrence(const Tensor& w_in, int64_t B_, int64_t H_, int64_t G_, int64_t S_, int64_t heads_)
      : B(B_), H(H_), G(G_), S(S_), heads(heads_ > 0 ? heads_ : 1), dh(H_ / (heads_ > 0 ? heads_ : 1)) {
    w = w_in.contiguous();
    auto opts = w.options();
    if constexpr (R != Rec::None) hh = at::empty({B, G * H}, opts);
    if constexpr (R == Rec::Heads) {
      // w (G*H, dh), row g*H + k*dh + j -> per head (nh, G*dh, dh), row g*dh + j
      wk = w.view({G, heads, dh, dh}).permute({1, 0, 2, 3}).reshape({heads, G * dh, dh}).contiguous();
      q = at::empty({heads, B, G * dh}, opts);
      dq = at::empty({heads, B, G * dh}, opts);
    }
  }

  // Full: the per-step products through the shared GEMM selection (gemm.h: inline / MKL / oneDNN packed
  // once per call), made on first use (a call runs forward or backward, never both).
  std::optional<Lin<T>> lin_fwd, lin_bwd;
  // Heads: one such product per head, so they take the same selection as a full matrix (ATen's bmm over the
  // heads always ran MKL).  sLSTM training, 2 threads, interleaved medians of 7, oneDNN-selected / all-ATen
  // products (set_gemm_backend): 1 head (100,64,256) 0.87, (50,128,512) 0.95, (20,32,1024) 0.84, (200,16,128)
  // 1.00; 4 heads (50,128,512) 1.03.
  std::vector<Lin<T>> head_fwd, head_bwd;

  // Heads too small for a library call take the inline loops (bf16 products, when asked for at this size, take
  // Lin's path instead: tests lower the bf16 thresholds to 0).
  bool inline_heads() const {
    const int64_t macs = B * G * H * dh;
    return macs < kSmallGemm && !rnnlab_gemm::reduced_for(c10::CppTypeToScalarType<T>::value, macs / heads,
                                                          rnnlab_gemm::g_reduced_step);
  }

  // hh for the state rows states[t] (B, S*H); nullptr for Rec::None.
  const T* forward(const Tensor& states, int64_t t) {
    return forward(states.data_ptr<T>() + t * B * S * H, S * H);
  }

  // hh from the h rows at hp (B rows, leading dimension ld).  The inline paths read the rows through a
  // pointer (no per-step Tensor: its bookkeeping is most of a tiny step's cost).
  const T* forward(const T* hp, int64_t ld) {
    if constexpr (R == Rec::None) {
      return nullptr;
    } else if constexpr (R == Rec::Full) {
      if (!lin_fwd) lin_fwd.emplace(w, false, B);
      lin_fwd->apply(hh.data_ptr<T>(), G * H, hp, ld, B, false);
    } else if constexpr (R == Rec::Diagonal) {
      const T* u = w.data_ptr<T>();
      T* o = hh.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t g = 0; g < G; ++g)
          for (int64_t j = 0; j < H; ++j) o[(b * G + g) * H + j] = u[g * H + j] * hp[b * ld + j];
    } else if (inline_heads()) {
      // per gate and head, rows g*H + k*dh .. + dh of W read head k: the inline kernel's vectorised dot
      // products (a plain running sum over l stays scalar without -ffast-math)
      const T* wp = w.data_ptr<T>();
      T* o = hh.data_ptr<T>();
      for (int64_t g = 0; g < G; ++g)
        for (int64_t k = 0; k < heads; ++k) {
          const int64_t r0 = g * H + k * dh;
          rnnlab_gemm::small_nt<T>(o + r0, G * H, hp + k * dh, ld, wp + r0 * dh, dh, B, dh, dh, false);
        }
    } else {
      if (head_fwd.empty())
        for (int64_t k = 0; k < heads; ++k) head_fwd.emplace_back(wk[k], false, B);
      if (heads == 1) {  // one head: q's layout is hh's, so the product writes hh directly
        head_fwd[0].apply(hh.data_ptr<T>(), G * H, hp, ld, B, false);
        return hh.data_ptr<T>();
      }
      T* qw = q.data_ptr<T>();
      for (int64_t k = 0; k < heads; ++k)  // q[k] (B, G*dh) = h[:, k*dh:(k+1)*dh] W_kᵀ, h rows read in place
        head_fwd[k].apply(qw + k * B * G * dh, G * dh, hp + k * dh, ld, B, false);
      const T* qp = q.data_ptr<T>();
      T* o = hh.data_ptr<T>();
      for (int64_t k = 0; k < heads; ++k)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t g = 0; g < G; ++g)
            for (int64_t j = 0; j < dh; ++j)
              o[b * G * H + g * H + k * dh + j] = qp[(k * B + b) * G * dh + g * dh + j];
    }
    return hh.data_ptr<T>();
  }

  // ds (B, S*H) block 0 += R^T(dhh_all[t]), dhh_all (T, B, G*H) contiguous.
  void backward(const Tensor& dhh_all, int64_t t, Tensor& ds) {
    backward(dhh_all.data_ptr<T>() + t * B * G * H, ds.data_ptr<T>(), S * H);
  }

  // Rows of d (B rows, leading dimension ld) += R^T(p), p (B, G*H) contiguous.
  void backward(const T* p, T* d, int64_t ld) {
    if constexpr (R == Rec::Full) {
      if (!lin_bwd) lin_bwd.emplace(w, true, B);
      lin_bwd->apply(d, ld, p, G * H, B, true);
    } else if constexpr (R == Rec::Diagonal) {
      const T* u = w.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t g = 0; g < G; ++g)
          for (int64_t j = 0; j < H; ++j) d[b * ld + j] += p[(b * G + g) * H + j] * u[g * H + j];
    } else if constexpr (R == Rec::Heads) {
      if (inline_heads()) {
        const T* wp = w.data_ptr<T>();
        for (int64_t b = 0; b < B; ++b)
          for (int64_t r = 0; r < G * H; ++r) {
            const T g = p[b * G * H + r];
            const T* wr = wp + r * dh;
            T* dr = d + b * ld + ((r % H) / dh) * dh;
            RNNLAB_SIMD
            for (int64_t l = 0; l < dh; ++l) dr[l] += g * wr[l];
          }
        return;
      }
      if (head_bwd.empty())
        for (int64_t k = 0; k < heads; ++k) head_bwd.emplace_back(wk[k], true, B);
      if (heads == 1) {  // one head: dhh is dq already
        head_bwd[0].apply(d, ld, p, G * H, B, true);
        return;
      }
      T* qp = dq.data_ptr<T>();
      for (int64_t k = 0; k < heads; ++k)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t g = 0; g < G; ++g)
            for (int64_t j = 0; j < dh; ++j)
              qp[(k * B + b) * G * dh + g * dh + j] = p[b * G * H + g * H + k * dh + j];
      for (int64_t k = 0; k < heads; ++k)  // d[:, k*dh:(k+1)*dh] += dq[k] (B, G*dh) W_k, into the rows in place
        head_bwd[k].apply(d + k * dh, ld, qp + k * B * G * dh, G * dh, B, true);
    }
  }
};

// dW over all steps at once from dhh (N, G*H) and the previous h (N, H), N = T*B.
template <Rec R>
inline Tensor recurrent_weight_grad(const Tensor& dhh, const Tensor& hp, const Tensor& w, int64_t G,
                                    int64_t heads) {
  const int64_t N = hp.size(0), H = hp.size(1);
  if constexpr (R == Rec::Full) {
    return rnnlab_gemm::mm(dhh.t(), hp);
  } else if constexpr (R == Rec::Diagonal) {
    return (dhh.view({N, G, H}) * hp.unsqueeze(1)).sum(0).reshape({G * H});
  } else {
    // row g*H + k*dh + j of dW (G*H, dh) = Σ_n dhh[n, g*H + k*dh + j] h[n, k*dh : (k+1)*dh]: one product per
    // gate and head over strided column blocks of dhh and h, written into dW's rows in place (one product in
    // all for a single head).  Permuting dhh (N, G*H) into per-head batches for one bmm copied all of it first.
    // sLSTM training, 2 threads, this (with the single-head steps writing hh / reading dhh directly) / that,
    // medians of 4 alternating processes on a noisy machine: (50, 128, 512) 1 head 0.93, 4 heads 0.88;
    // (100, 64, 256) 0.98.
    if (heads == 1) return rnnlab_gemm::mm(dhh.t(), hp);
    const int64_t dh = H / heads;
    Tensor dw = at::empty(w.sizes(), w.options());
    for (int64_t g = 0; g < G; ++g)
      for (int64_t k = 0; k < heads; ++k) {
        auto out = dw.narrow(0, g * H + k * dh, dh);  // (dh, dh), contiguous rows
        rnnlab_gemm::mm_out(out, dhh.narrow(1, g * H + k * dh, dh).t(), hp.narrow(1, k * dh, dh));
      }
    return dw;
  }
}

// The products of a cell with mapped rows or a second product (Rec::Full only): the weight's row blocks are
// W_map (M*H, read φ(h) ⊙ m), W_rest ((G-M)*H, read h ⊙ m), W_2 (Q*H, read u); per step through gemm.h's Lin.
template <typename T>
struct SplitProducts {
  int64_t B, H, G, M, Q;
  Tensor wm, wr, w2;
  std::optional<Lin<T>> fm, fr, f2, bm, br, b2;  // forward (nt) / backward (nn), made on first use

  SplitProducts(const Tensor& w_in, int64_t B_, int64_t H_, int64_t G_, int64_t M_, int64_t Q_)
      : B(B_), H(H_), G(G_), M(M_), Q(Q_) {
    auto w = w_in.contiguous();
    TORCH_CHECK(w.dim() == 2 && w.size(0) == (G + Q) * H && w.size(1) == H, "w: expected ((G + Q) * H, H) = (",
                (G + Q) * H, ", ", H, "), got ", w.sizes());
    if (M > 0) wm = w.narrow(0, 0, M * H).contiguous();
    if (G > M) wr = w.narrow(0, M * H, (G - M) * H).contiguous();
    if (Q > 0) w2 = w.narrow(0, G * H, Q * H).contiguous();
  }

  // hh (B, G*H) = [φ(h)⊙m W_mapᵀ, hd W_restᵀ]: pm (B, H) contiguous, hd rows with leading dimension ld
  void first(T* hh, const T* pm, const T* hd, int64_t ld) {
    if (M > 0) {
      if (!fm) fm.emplace(wm, false, B);
      fm->apply(hh, G * H, pm, H, B, false);
    }
    if (G > M) {
      if (!fr) fr.emplace(wr, false, B);
      fr->apply(hh + M * H, G * H, hd, ld, B, false);
    }
  }
  // dpm (B, H) += dhh_map W_map, dhd (B, H) += dhh_rest W_rest; dhh (B, G*H) contiguous
  void first_t(T* dpm, T* dhd, const T* dhh) {
    if (M > 0) {
      if (!bm) bm.emplace(wm, true, B);
      bm->apply(dpm, H, dhh, G * H, B, true);
    }
    if (G > M) {
      if (!br) br.emplace(wr, true, B);
      br->apply(dhd, H, dhh + M * H, G * H, B, true);
    }
  }
  // q (B, Q*H) = u W_2ᵀ, u rows with leading dimension ld
  void second(T* q, const T* u, int64_t ld) {
    if (!f2) f2.emplace(w2, false, B);
    f2->apply(q, Q * H, u, ld, B, false);
  }
  // du (B, H) = dq W_2, dq (B, Q*H) contiguous
  void second_t(T* du, const T* dq) {
    if (!b2) b2.emplace(w2, true, B);
    b2->apply(du, H, dq, Q * H, B, false);
  }
};

// Forward over the whole sequence.
//   xp (T, B, X*H), s0 (B, S*H), w (recurrent weights, any shape REC needs; empty for None), e (E, H) or empty,
//   lengths (B,) int64 or empty (all full), heads (Rec::Heads only), opt (the cell's option word),
//   rec_mask (B, H) recurrent dropout mask or empty (off; see drop_state),
//   keep (T, Z, B, H) zoneout keep weights for the first Z state components or empty (off): at a valid step
//   component z < Z becomes lerp(new, old, keep[t, z]) (1 keeps the old value; eval passes the rate itself).
// Returns out (T, B, H), states (T+1, B, S*H) (every step's state, saved for backward; [T] is the final one),
// saved (T, B, A*H), fresh (T, B, S*H): the cell's own new states before zoneout (what its backward reads and
// recording shows), empty without keep (then they are states[1:] at valid steps).
// With an output projection (proj_bit) the state rows, out, rec_mask and keep are as proj_bit says.
// keep_all false (infer below): only the last two state rows and one step's saved / fresh rows are kept, in
// place of all of them; states then holds s_T at row T % 2 and saved / fresh are scratch.
// Under autocast (generic_ops.py) xp may be bf16 / fp16 with float32 states, read as float32, and the option word
// may ask for bf16 products (bf16_products): the rules, states and returned tensors stay float32.
template <class Cell>
std::vector<Tensor> run_forward(const Tensor& xp_in, const Tensor& s0, const Tensor& w, const Tensor& e_in,
                                const Tensor& lengths, int64_t heads, int64_t call_opt, const Tensor& rec_mask,
                                const Tensor& keep_in, bool keep_all) {
  const int64_t opt = cell_opt(call_opt);
  const Sizes z = sizes_of<Cell>(opt);
  const int64_t X = z.X, G = z.G, S = z.S, A = z.A;
  constexpr int64_t DROP = drop_state<Cell>::value;
  TORCH_CHECK(xp_in.dim() == 3, "xp: expected (T, B, X*H), got ", xp_in.sizes());
  rnnlab_gemm::ReducedProducts products(bf16_products(call_opt, xp_in, s0));
  const int64_t T = xp_in.size(0), B = xp_in.size(1), H = xp_in.size(2) / X;
  const Layout L(opt, proj_bit<Cell>::value, w, keep_in, G, S, H);
  const int64_t SW = L.SW, HW = L.HW, HO = L.HO, P = L.P, Z = L.Z;
  TORCH_CHECK(xp_in.size(2) == X * H && s0.size(0) == B && s0.size(1) == SW, "state/input sizes disagree");
  if constexpr (Cell::REC == Rec::Heads) TORCH_CHECK(heads > 0 && H % heads == 0, "heads must divide H");
  const bool masked = rec_mask.defined() && rec_mask.numel() > 0;
  const bool zoned = Z > 0;
  TORCH_CHECK(!masked || (rec_mask.dim() == 2 && rec_mask.size(0) == B && rec_mask.size(1) == HW),
              "rec_mask: expected (B, H) (P with a projection)");
  TORCH_CHECK(!zoned || (keep_in.size(0) == T && Z <= S &&
                         (L.proj ? keep_in.size(1) == B : keep_in.size(2) == B && keep_in.size(3) == H)),
              "keep: expected (T, Z <= S, B, H)");
  auto e = e_in.contiguous();
  auto opts = s0.options();
  auto mask = masked ? rec_mask.to(opts).contiguous() : Tensor();
  auto keep = zoned ? keep_in.to(opts).contiguous() : Tensor();
  // out and saved: every row is written below (a padded row's with zeros), so no zero fill first (with one,
  // training took 1.24x the time for LN-GRU and GRU at (100, 64, 256): medians of 6 alternating processes)
  auto out = big_empty({T, B, HW}, opts);
  auto states = big_empty({keep_all ? T + 1 : 2, B, SW}, opts);
  states[0].copy_(s0);
  auto saved = big_empty({keep_all ? T : 1, B, A > 0 ? A * H : 0}, opts);
  auto fresh = zoned ? big_empty({keep_all ? T : 1, B, SW}, opts) : at::empty({0}, opts);  // all rows written
  // h ⊙ m, the rows the recurrent product reads when the driver applies the mask (DROP == 0)
  auto hm = masked && DROP == 0 && Cell::REC != Rec::None ? at::empty({B, HW}, opts) : Tensor();
  constexpr int64_t Q = second_blocks<Cell>::value, M = mapped_blocks<Cell>::value;
  constexpr bool SPLIT = Q > 0 || M > 0;
  static_assert(!SPLIT || (Cell::REC == Rec::Full && DROP == 0), "mapped rows / a second product: Rec::Full");
  static_assert(proj_bit<Cell>::value == 0 || (!SPLIT && DROP == 0 && Cell::REC == Rec::Full),
                "an output projection: Rec::Full, no split products, the driver's dropout");
  // split products: hh (B, G*H), φ(h) ⊙ m (B, H), q (B, Q*H)
  auto hh2 = SPLIT ? at::empty({B, G * H}, opts) : Tensor();
  auto pm = M > 0 ? at::empty({B, H}, opts) : Tensor();
  auto qb = Q > 0 ? at::empty({B, Q * H}, opts) : Tensor();
  // projection: W (G*H, P) for the recurrent product, W_rᵀ (H, P), the step's m W_rᵀ (B, P)
  auto wrec = L.proj ? w.narrow(0, 0, G * H) : w;
  auto wr = L.proj ? w.narrow(0, G * H, H).contiguous() : Tensor();
  auto pb = L.proj ? at::empty({B, P}, opts) : Tensor();
  const bool parted = (opt & part_rec_bit<Cell>::value) != 0;
  static_assert(part_rec_bit<Cell>::value == 0 || (!SPLIT && DROP == 0 && Cell::REC == Rec::Full),
                "a part product: Rec::Full, no split products, the driver's dropout");
  TORCH_CHECK(!(parted && L.proj), "a part product and an output projection together are not supported");
  if (parted) wrec = w.narrow(0, 0, G * H);
  const auto len = row_lengths(lengths, T, B);
  AT_DISPATCH_FLOATING_TYPES(s0.scalar_type(), "rnnlab_generic_forward", [&] {
    using T_ = scalar_t;
    StepInput<T_> xin(xp_in, opts);
    const T_* ep = E_ptr<T_>(e);
    const T_* mp = masked ? mask.template data_ptr<T_>() : nullptr;
    const T_* kp = zoned ? keep.template data_ptr<T_>() : nullptr;
    Recurrence<Cell::REC, T_> rec(SPLIT ? at::empty({0}, opts) : wrec, B, H, G, S, heads);
    std::optional<SplitProducts<T_>> split;
    if constexpr (SPLIT) split.emplace(w, B, H, G, M, Q);
    std::optional<Lin<T_>> lin_r;
    if (L.proj) lin_r.emplace(wr, true, B);  // (B, H) m -> (B, P) m W_rᵀ
    PartProduct<Cell, T_> part(opt, w, B, H, G, SW);
    const int64_t c0 = L.proj ? 1 : 0;       // the rule's components zoneout mixes start here (m is not mixed)
    for (int64_t t = 0; t < T; ++t) {
      // rows of step t: the state before it (sp) and after it (sn), its saved blocks (at_), fresh state (ft)
      const int64_t ts = keep_all ? t : 0;
      T_* sp = states.template data_ptr<T_>() + (keep_all ? t : t % 2) * B * SW;
      T_* sn = states.template data_ptr<T_>() + (keep_all ? t + 1 : (t + 1) % 2) * B * SW;
      const T_* hhp;
      // hd: h as the products read it (h ⊙ m under the driver's recurrent dropout)
      const T_* hdp = sp + HO;
      int64_t hld = SW;
      if (hm.defined()) {
        T_* q = hm.template data_ptr<T_>();
        for (int64_t i = 0; i < B; ++i)
          for (int64_t j = 0; j < HW; ++j) q[i * HW + j] = sp[i * SW + HO + j] * mp[i * HW + j];
        hdp = q;
        hld = HW;
      }
      if constexpr (SPLIT) {
        if constexpr (M > 0) {
          T_* q = pm.template data_ptr<T_>();
          for (int64_t i = 0; i < B; ++i)
            for (int64_t j = 0; j < H; ++j) q[i * H + j] = Cell::map(sp[i * SW + j]) * (mp ? mp[i * H + j] : T_(1));
        }
        split->first(hh2.template data_ptr<T_>(), M > 0 ? pm.template data_ptr<T_>() : nullptr, hdp, hld);
        hhp = hh2.template data_ptr<T_>();
      } else {
        hhp = rec.forward(hdp, hld);
        if (part.on) part.add(const_cast<T_*>(hhp), sp);  // hh is the recurrence's own buffer
      }
      const T_* xt = xin.at(t);
      T_* at_ = A > 0 ? saved.template data_ptr<T_>() + ts * B * A * H : nullptr;
      T_* ot = out.template data_ptr<T_>() + t * B * HW;
      T_* ft = zoned ? fresh.template data_ptr<T_>() + ts * B * SW : nullptr;
      if constexpr (Q > 0) {  // first half of the rule, then q = u W_2ᵀ over all rows (u: the last saved block)
        for_rows(B, 4 * (X + A) * H, [&](int64_t b) {
          T_* arow = at_ + b * A * H;
          if (t < len[b]) {
            Cell::forward_a(H, opt, xt + b * X * H, hhp + b * G * H, ep, sp + b * SW, hdp + b * hld, arow);
          } else {
            for (int64_t j = 0; j < H; ++j) arow[(A - 1) * H + j] = T_(0);  // a padded row's u stays 0
          }
        });
        split->second(qb.template data_ptr<T_>(), at_ + (A - 1) * H, A * H);
      }
      for_rows(B, 4 * (X + S + A) * H, [&](int64_t b) {
        T_* s1 = sn + b * SW;
        const T_* s0r = sp + b * SW;
        if (t < len[b]) {
          const T_* hrow = hhp ? hhp + b * G * H : nullptr;
          T_* arow = at_ ? at_ + b * A * H : nullptr;
          if constexpr (Q > 0) {
            Cell::forward_b(H, opt, xt + b * X * H, hrow, qb.template data_ptr<T_>() + b * Q * H, ep, s0r, s1,
                            arow);
          } else if constexpr (DROP != 0) {
            Cell::forward(H, opt, xt + b * X * H, hrow, ep, s0r, s1, arow, mp ? mp + b * H : nullptr);
          } else {
            Cell::forward(H, opt, xt + b * X * H, hrow, ep, s0r, s1, arow);
          }
          if (ft) {  // zoneout: keep the cell's own state for backward / recording, then blend
            T_* fr = ft + b * SW;
            for (int64_t j = 0; j < S * H; ++j) fr[j] = s1[j];
            for (int64_t c = c0; c < Z; ++c) {
              const T_* k = L.keep_at(kp, t, c, b, B, H);
              RNNLAB_SIMD
              for (int64_t j = 0; j < H; ++j) s1[c * H + j] = lerp_keep(fr[c * H + j], s0r[c * H + j], k[j]);
            }
          }
          if (!L.proj)
            for (int64_t j = 0; j < H; ++j) ot[b * H + j] = s1[j];
        } else {  // padding: state carried, output and saved blocks 0
          for (int64_t j = 0; j < SW; ++j) s1[j] = s0r[j];
          for (int64_t j = 0; j < HW; ++j) ot[b * HW + j] = T_(0);
          if (at_)
            for (int64_t j = 0; j < A * H; ++j) at_[b * A * H + j] = T_(0);
          if (ft)
            for (int64_t j = 0; j < SW; ++j) ft[b * SW + j] = s0r[j];
        }
      });
      if (L.proj) {  // h = m W_rᵀ over all rows (a padded row's is dropped), then zoneout on h, out
        T_* q = pb.template data_ptr<T_>();
        lin_r->apply(q, P, sn, SW, B, false);
        for (int64_t b = 0; b < B; ++b) {
          if (t >= len[b]) continue;
          T_* h1 = sn + b * SW + HO;
          const T_* h0 = sp + b * SW + HO;
          const T_* hr = q + b * P;
          if (ft) {
            const T_* k = L.keep_at(kp, t, 0, b, B, H);
            T_* fr = ft + b * SW + HO;
            for (int64_t j = 0; j < P; ++j) {
              fr[j] = hr[j];
              h1[j] = lerp_keep(hr[j], h0[j], k[j]);
            }
          } else {
            for (int64_t j = 0; j < P; ++j) h1[j] = hr[j];
          }
          for (int64_t j = 0; j < P; ++j) ot[b * P + j] = h1[j];
        }
      }
    }
  });
  return {out, states, saved, fresh};
}

template <class Cell>
std::vector<Tensor> forward(const Tensor& xp, const Tensor& s0, const Tensor& w, const Tensor& e,
                            const Tensor& lengths, int64_t heads, int64_t opt, const Tensor& rec_mask,
                            const Tensor& keep) {
  return run_forward<Cell>(xp, s0, w, e, lengths, heads, opt, rec_mask, keep, true);
}

// Inference: forward without keeping what only backward and recording read.  Returns out (T, B, H) and the
// final state s_T (B, S*H).
template <class Cell>
std::vector<Tensor> infer(const Tensor& xp, const Tensor& s0, const Tensor& w, const Tensor& e,
                          const Tensor& lengths, int64_t heads, int64_t opt, const Tensor& rec_mask,
                          const Tensor& keep) {
  auto r = run_forward<Cell>(xp, s0, w, e, lengths, heads, opt, rec_mask, keep, false);
  return {r[0], r[1][xp.size(0) % 2]};
}

// Backward.  dout (T, B, H), dsT (B, S*H) or undefined; the rest as forward returned / received; dstates
// (T+1, B, SW) the gradient of every state row forward returned (a layer above read them: the depth-gated LSTM)
// or empty.  Returns dxp (T, B, X*H), ds0 (B, S*H), dw (like w; empty for None), de (E, H).
template <class Cell>
std::vector<Tensor> backward(const Tensor& dout_in, const Tensor& dsT, const Tensor& xp_in, const Tensor& w,
                             const Tensor& e_in, const Tensor& lengths, int64_t heads, int64_t call_opt,
                             const Tensor& rec_mask, const Tensor& keep_in, const Tensor& states,
                             const Tensor& saved, const Tensor& fresh, const Tensor& dstates_in) {
  const int64_t opt = cell_opt(call_opt);
  const Sizes z = sizes_of<Cell>(opt);
  const int64_t X = z.X, G = z.G, S = z.S, A = z.A, E = z.E;
  constexpr int64_t DROP = drop_state<Cell>::value;
  const int64_t T = xp_in.size(0), B = xp_in.size(1), H = xp_in.size(2) / X;
  const bool reduced = bf16_products(call_opt, xp_in, states);
  rnnlab_gemm::ReducedProducts products(reduced);
  const Layout L(opt, proj_bit<Cell>::value, w, keep_in, G, S, H);
  const int64_t SW = L.SW, HW = L.HW, HO = L.HO, P = L.P, Z = L.Z;
  const bool masked = rec_mask.defined() && rec_mask.numel() > 0;
  const bool zoned = Z > 0;
  TORCH_CHECK(!zoned || (fresh.dim() == 3 && fresh.size(0) == T), "fresh: expected forward's (T, B, S*H)");
  auto e = e_in.contiguous();
  auto opts = states.options();
  auto mask = masked ? rec_mask.to(opts).contiguous() : Tensor();
  auto keep = zoned ? keep_in.to(opts).contiguous() : Tensor();
  auto fr_all = zoned ? fresh.contiguous() : Tensor();
  TORCH_CHECK(!dout_in.defined() || (dout_in.dim() == 3 && dout_in.size(0) == T && dout_in.size(1) == B &&
                                      dout_in.size(2) == HW && dout_in.scalar_type() == opts.dtype()),
              "dout: expected (T, B, H) = (", T, ", ", B, ", ", HW, ") in the states' dtype, got ", dout_in.sizes(),
              " ", dout_in.scalar_type());
  TORCH_CHECK(!dsT.defined() || (dsT.dim() == 2 && dsT.size(0) == B && dsT.size(1) == SW &&
                                  dsT.scalar_type() == opts.dtype()),
              "dsT: expected (B, S*H) = (", B, ", ", SW, ") in the states' dtype, got ", dsT.sizes(), " ",
              dsT.scalar_type());
  auto dout = dout_in.defined() ? dout_in.contiguous() : at::zeros({T, B, HW}, opts);
  auto dxp = big_empty(xp_in.sizes(), opts);
  constexpr bool same = dhh_is_dxp<Cell>::value;
  // dhh_all, dq_all, dp_all: every row is written below (a padded row's with zeros), so no zero fill first
  auto dhh_all = same ? dxp : big_empty({T, B, G * H}, opts);
  // each row adds its element-wise parameter gradients to its own slice (rows may run in parallel)
  auto de_rows = at::zeros({E > 0 ? B : 0, E * H}, opts);
  auto ds1 = dsT.defined() ? dsT.clone().contiguous() : at::zeros({B, SW}, opts);
  auto ds0 = at::empty({B, SW}, opts);
  const bool stepwise = dstates_in.defined() && dstates_in.numel() > 0;
  TORCH_CHECK(!stepwise || (dstates_in.dim() == 3 && dstates_in.size(0) == T + 1 && dstates_in.size(1) == B &&
                            dstates_in.size(2) == SW),
              "dstates: expected (T+1, B, SW) = (", T + 1, ", ", B, ", ", SW, "), got ", dstates_in.sizes());
  auto dstates = stepwise ? dstates_in.to(opts).contiguous() : Tensor();
  // zoneout: per row, the gradient of the cell's own new state, (1 - keep) ⊙ that of the blended one
  auto dnew = zoned ? at::empty({B, S * H}, opts) : Tensor();
  // recurrent dropout applied by the driver: R^T(dhh) lands here, then m ⊙ it goes to dh
  auto dm = masked && DROP == 0 && Cell::REC != Rec::None ? at::empty({B, HW}, opts) : Tensor();
  constexpr int64_t Q = second_blocks<Cell>::value, M = mapped_blocks<Cell>::value;
  constexpr bool SPLIT = Q > 0 || M > 0;
  // split products: every step's dq (kept for dW_2; a padded row's stays 0), du, dL/dhd, dL/d(φ(h) ⊙ m), h ⊙ m
  auto dq_all = Q > 0 ? big_empty({T, B, Q * H}, opts) : Tensor();
  auto du = Q > 0 ? at::empty({B, H}, opts) : Tensor();
  auto dhd = SPLIT ? at::empty({B, H}, opts) : Tensor();
  auto dpm = M > 0 ? at::empty({B, H}, opts) : Tensor();
  auto hdb = SPLIT && masked ? at::empty({B, H}, opts) : Tensor();
  // projection: every step's dL/d(m W_rᵀ) (kept for dW_r; a padded row's stays 0) and the step's dL/dm
  auto wrec = L.proj ? w.narrow(0, 0, G * H) : w;
  auto wr = L.proj ? w.narrow(0, G * H, H).contiguous() : Tensor();
  auto dp_all = L.proj ? big_empty({T, B, P}, opts) : Tensor();
  auto dmb = L.proj ? at::empty({B, H}, opts) : Tensor();
  if (opt & part_rec_bit<Cell>::value) wrec = w.narrow(0, 0, G * H);
  const auto len = row_lengths(lengths, T, B);
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "rnnlab_generic_backward", [&] {
    using T_ = scalar_t;
    StepInput<T_> xin(xp_in, opts);
    const T_* ep = E_ptr<T_>(e);
    const T_* mp = masked ? mask.template data_ptr<T_>() : nullptr;
    const T_* kp = zoned ? keep.template data_ptr<T_>() : nullptr;
    T_* dep = E > 0 ? de_rows.template data_ptr<T_>() : nullptr;
    Recurrence<Cell::REC, T_> rec(SPLIT ? at::empty({0}, opts) : wrec, B, H, G, S, heads);
    std::optional<SplitProducts<T_>> split;
    if constexpr (SPLIT) split.emplace(w, B, H, G, M, Q);
    std::optional<Lin<T_>> lin_r;
    if (L.proj) lin_r.emplace(wr, false, B);  // (B, P) dL/dh -> (B, H) dL/dm = dh W_r
    PartProduct<Cell, T_> part(opt, w, B, H, G, SW);
    const int64_t c0 = L.proj ? 1 : 0;
    for (int64_t t = T - 1; t >= 0; --t) {
      const T_* xt = xin.at(t);
      const T_* sp = states.template data_ptr<T_>() + t * B * SW;
      // the cell's own new state: before zoneout's blend when there is one
      const T_* sn = zoned ? fr_all.template data_ptr<T_>() + t * B * SW : sp + B * SW;
      const T_* at_ = A > 0 ? saved.template data_ptr<T_>() + t * B * A * H : nullptr;
      const T_* dot = dout.template data_ptr<T_>() + t * B * HW;
      T_* d1 = ds1.template data_ptr<T_>();
      T_* d0 = ds0.template data_ptr<T_>();
      T_* dxt = dxp.template data_ptr<T_>() + t * B * X * H;
      T_* dht = same ? nullptr : G > 0 ? dhh_all.template data_ptr<T_>() + t * B * G * H : nullptr;
      if (stepwise) {  // what read state row t+1 from outside (every row: a padded one passes it on below)
        const T_* g = dstates.template data_ptr<T_>() + (t + 1) * B * SW;
        for (int64_t i = 0; i < B * SW; ++i) d1[i] += g[i];
      }
      if (L.proj) {  // dL/dh (out and the next step), zoneout's (1 - keep) on h, then dL/dm over all rows
        T_* dpt = dp_all.template data_ptr<T_>() + t * B * P;
        for (int64_t b = 0; b < B; ++b) {
          if (t >= len[b]) {
            for (int64_t j = 0; j < P; ++j) dpt[b * P + j] = T_(0);
            continue;
          }
          T_* dh = d1 + b * SW + HO;
          const T_* k = zoned ? L.keep_at(kp, t, 0, b, B, H) : nullptr;
          for (int64_t j = 0; j < P; ++j) {
            dh[j] += dot[b * P + j];
            dpt[b * P + j] = k ? dh[j] * (T_(1) - k[j]) : dh[j];
          }
        }
        lin_r->apply(dmb.template data_ptr<T_>(), H, dpt, P, B, false);
      }
      for_rows(B, 6 * (X + S + A) * H, [&](int64_t b) {
        T_* d1r = d1 + b * SW;
        T_* d0r = d0 + b * SW;
        if (t < len[b]) {
          if (L.proj) {
            const T_* g = dmb.template data_ptr<T_>() + b * H;
            for (int64_t j = 0; j < H; ++j) d1r[j] += g[j];
          } else {
            for (int64_t j = 0; j < H; ++j) d1r[j] += dot[b * H + j];
          }
          const T_* dcell = d1r;
          if (zoned) {  // lerp(new, old, k): d new = (1 - k) d, d old = k d (torch's formulas)
            T_* dn = dnew.template data_ptr<T_>() + b * S * H;
            for (int64_t j = 0; j < S * H; ++j) dn[j] = d1r[j];
            for (int64_t c = c0; c < Z; ++c) {
              const T_* k = L.keep_at(kp, t, c, b, B, H);
              RNNLAB_SIMD
              for (int64_t j = 0; j < H; ++j) dn[c * H + j] = d1r[c * H + j] * (T_(1) - k[j]);
            }
            dcell = dn;
          }
          const T_* arow = at_ ? at_ + b * A * H : nullptr;
          T_* dhrow = dht ? dht + b * G * H : nullptr;
          T_* derow = dep ? dep + b * E * H : nullptr;
          if constexpr (Q > 0) {
            Cell::backward_b(H, opt, xt + b * X * H, ep, sp + b * SW, sn + b * SW, arow, dcell,
                             dxt + b * X * H, dhrow, dq_all.template data_ptr<T_>() + (t * B + b) * Q * H, derow,
                             d0r);
          } else if constexpr (DROP != 0) {
            Cell::backward(H, opt, xt + b * X * H, ep, sp + b * SW, sn + b * SW, arow, dcell,
                           dxt + b * X * H, dhrow, derow, d0r, mp ? mp + b * H : nullptr);
          } else {
            Cell::backward(H, opt, xt + b * X * H, ep, sp + b * SW, sn + b * SW, arow, dcell,
                           dxt + b * X * H, dhrow, derow, d0r);
          }
          for (int64_t c = c0; c < Z; ++c) {
            const T_* k = L.keep_at(kp, t, c, b, B, H);
            RNNLAB_SIMD
            for (int64_t j = 0; j < H; ++j) d0r[c * H + j] += k[j] * d1r[c * H + j];
          }
          if (L.proj) {  // h_{t-1} reaches h_t only through zoneout's keep (the product adds the rest below)
            const T_* k = zoned ? L.keep_at(kp, t, 0, b, B, H) : nullptr;
            for (int64_t j = 0; j < P; ++j) d0r[HO + j] = k ? k[j] * d1r[HO + j] : T_(0);
          }
        } else {  // padding: the state passed through unchanged; the zero output has no gradient path
          for (int64_t j = 0; j < SW; ++j) d0r[j] = d1r[j];
          for (int64_t j = 0; j < X * H; ++j) dxt[b * X * H + j] = T_(0);
          if (dht)
            for (int64_t j = 0; j < G * H; ++j) dht[b * G * H + j] = T_(0);
          if constexpr (Q > 0) {
            T_* dqr = dq_all.template data_ptr<T_>() + (t * B + b) * Q * H;
            for (int64_t j = 0; j < Q * H; ++j) dqr[j] = T_(0);
          }
        }
      });
      if constexpr (SPLIT) {
        // du = dq W_2, the rule's first half, then dhd += dhh_rest W_rest, dpm = dhh_map W_map, and
        // dh += m ⊙ (dhd + φ'(h) ⊙ dpm)
        T_* dh_ = dhd.template data_ptr<T_>();
        std::fill(dh_, dh_ + B * H, T_(0));
        const T_* hdp = sp;
        int64_t hld = SW;
        if (masked) {
          T_* q = hdb.template data_ptr<T_>();
          for (int64_t i = 0; i < B; ++i)
            for (int64_t j = 0; j < H; ++j) q[i * H + j] = sp[i * SW + j] * mp[i * H + j];
          hdp = q;
          hld = H;
        }
        if constexpr (Q > 0) {
          T_* dup = du.template data_ptr<T_>();
          split->second_t(dup, dq_all.template data_ptr<T_>() + t * B * Q * H);
          for_rows(B, 4 * (X + A) * H, [&](int64_t b) {
            if (t < len[b])
              Cell::backward_a(H, opt, xt + b * X * H, ep, sp + b * SW, hdp + b * hld, at_ + b * A * H,
                               dup + b * H, dxt + b * X * H, dht + b * G * H, dh_ + b * H);
          });
        }
        T_* dpp = M > 0 ? dpm.template data_ptr<T_>() : nullptr;
        if (dpp) std::fill(dpp, dpp + B * H, T_(0));
        split->first_t(dpp, dh_, dht);
        for (int64_t i = 0; i < B; ++i)
          for (int64_t j = 0; j < H; ++j) {
            T_ g = dh_[i * H + j];
            if constexpr (M > 0) g += Cell::dmap(sp[i * SW + j]) * dpp[i * H + j];
            d0[i * SW + j] += (mp ? mp[i * H + j] : T_(1)) * g;
          }
      } else if constexpr (Cell::REC != Rec::None) {
        const T_* dhh_t = dhh_all.template data_ptr<T_>() + t * B * G * H;
        if (dm.defined()) {  // dh += m ⊙ R^T(dhh): the product read h ⊙ m
          T_* q = dm.template data_ptr<T_>();
          std::fill(q, q + B * HW, T_(0));
          rec.backward(dhh_t, q, HW);
          for (int64_t i = 0; i < B; ++i)
            for (int64_t j = 0; j < HW; ++j) d0[i * SW + HO + j] += mp[i * HW + j] * q[i * HW + j];
        } else {
          rec.backward(dhh_t, d0 + HO, SW);
        }
        // the part product: a padded row's dhh is 0, so its part gradient passes through unchanged
        if (part.on) part.back(dhh_t, G * H, d0);
      }
      std::swap(ds0, ds1);
    }
  });
  if (stepwise) ds1.add_(dstates[0]);  // row 0 is s0 itself
  Tensor dxp_out = dxp.to(xp_in.scalar_type());  // dxp in xp's dtype
  // the weight gradients read dhh: for a cell whose dhh is dxp, when they run in bf16, the bf16 dxp just made
  // (the products would convert dxp to bf16 again)
  const bool bf16_dw = reduced && T * B * G * H * L.HW >= rnnlab_gemm::g_reduced_once.load();
  const Tensor dhh_w = same && bf16_dw && dxp_out.scalar_type() == at::kBFloat16 ? dxp_out : dhh_all;
  Tensor dw = at::zeros_like(w);
  if constexpr (SPLIT) {
    if (T > 0) {  // one product over all T*B rows per weight block: [dW_map; dW_rest; dW_2]
      auto hp = states.narrow(0, 0, T).narrow(2, 0, H).reshape({T * B, H});  // every h_{t-1}
      auto m_all = masked ? mask.repeat({T, 1}) : Tensor();                 // (T*B, H)
      auto dhh2 = dhh_w.view({T * B, G * H});
      std::vector<Tensor> parts;
      if constexpr (M > 0) {
        auto pm_all = at::empty({T * B, H}, opts);
        AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "rnnlab_generic_map", [&] {
          const scalar_t* h = hp.template data_ptr<scalar_t>();
          scalar_t* o = pm_all.template data_ptr<scalar_t>();
          for (int64_t i = 0; i < T * B * H; ++i) o[i] = Cell::map(h[i]);
        });
        if (masked) pm_all.mul_(m_all);
        parts.push_back(rnnlab_gemm::mm(dhh2.narrow(1, 0, M * H).t(), pm_all));
      }
      if (G > M)
        parts.push_back(rnnlab_gemm::mm(dhh2.narrow(1, M * H, (G - M) * H).t(), masked ? hp * m_all : hp));
      if (Q > 0) {
        auto u = saved.narrow(2, (A - 1) * H, H).reshape({T * B, H});
        parts.push_back(rnnlab_gemm::mm(dq_all.view({T * B, Q * H}).t(), u));
      }
      dw = at::cat(parts, 0);
    }
  } else if constexpr (Cell::REC != Rec::None) {
    if (T > 0) {
      auto hp = states.narrow(0, 0, T).narrow(2, HO, HW);  // every h_{t-1}, (T, B, HW)
      if (dm.defined()) hp = hp * mask;                   // what the product read: h_{t-1} ⊙ m
      dw = recurrent_weight_grad<Cell::REC>(dhh_w.view({T * B, G * H}), hp.reshape({T * B, HW}), wrec, G,
                                            heads);
      if constexpr (part_rec_bit<Cell>::value != 0) {
        if (opt & part_rec_bit<Cell>::value) {  // [dW; dW_p viewed (K*K*H, H)]
          const PartRec pr = Cell::part_rec(opt);
          auto a = states.narrow(0, 0, T).narrow(2, pr.from * H, pr.K * H).reshape({T * B, pr.K * H});
          dw = at::cat({dw, PartProduct<Cell, float>::grad(pr, H, dhh_w.view({T * B, G * H}), a)}, 0);
        }
      }
      if (L.proj) {  // dW_r = Σ dL/dhᵀ m over all T*B rows (the cell's own m: zoneout never mixes it)
        auto m_all = (zoned ? fr_all : states.narrow(0, 1, T)).narrow(2, 0, H).reshape({T * B, H});
        dw = at::cat({dw, rnnlab_gemm::mm(m_all.t(), dp_all.view({T * B, P}))}, 0);  // [dW; dW_rᵀ]
      }
    }
  }
  auto de = E > 0 ? de_rows.view({B, E, H}).sum(0) : at::zeros({E, H}, opts);  // (E, H)
  return {dxp_out, ds1, dw, de};
}

}  // namespace rnnlab_generic
