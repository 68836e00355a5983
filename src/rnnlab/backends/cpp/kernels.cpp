// Fused CPU recurrence with hand-written backpropagation through time for the one cell not yet on the generic
// driver (driver.h): the LSTM with a projection (proj_size, LSTMP).
//
// Contract shared by every kernel (the Python side in rnnlab/backends/cpp/functions.py relies on it):
// - xp (T, B, G*H) is the input projection of all steps (x @ W_ihᵀ + b_ih, plus every part of b_hh that
//   does not sit behind a gate), computed by the caller as one GEMM; its gradient is returned as dxp so
//   that dW_ih = dxpᵀ x and dx = dxp W_ih are again single GEMMs done by autograd.
// - lengths (B,) int64 or an empty tensor: row b is active at step t iff t < lengths[b].  Reversal is done
//   by the caller, so the valid steps of every row are a prefix; an inactive row keeps its state and
//   outputs zero.  Hence the state before an active step t is output[t-1] (or the initial state).
// - Forward per step: one recurrent GEMM (two for GRU reset_after=False and MUT, three for MUT3, plus the
//   projection for LSTMP) and one fused element-wise pass over all gates (parallel over the batch rows when
//   B * H is large).  Backward per step: one fused element-wise pass for
//   the gate derivatives and dh_{t-1} = dgates_t W_hh; weight gradients are ONE GEMM over all T*B rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/csrc/utils/pybind.h>  // Tensor <-> Python conversions (lighter than torch/extension.h)

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

using at::Tensor;

// glibc's libmvec has vector exp/tanh that follow IEEE rules for inf/NaN (out-of-range lanes are redone by the
// scalar function), but <math.h> only declares them under -ffast-math, which also assumes no inf/NaN and gave
// NaN for saturated gates.  Declaring the SIMD variants here (with -fno-math-errno, loader.py) lets the gate
// loops vectorise without -ffast-math: measured 3-4x faster than scalar calls (B=1, H=32 and B=16, H=256).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
__attribute__((simd("notinbranch"))) float tanhf(float) noexcept;
__attribute__((simd("notinbranch"))) double tanh(double) noexcept;
}
#endif

// _Pragma, unlike #pragma, may appear inside the AT_DISPATCH macros' lambdas.
#define SIMD _Pragma("omp simd")

namespace {

// Products below this many multiply-adds use the inline loops: a library call costs microseconds of
// dispatch, which dominates at small batch/hidden sizes (per-step overhead target: a few µs at B=1, H=32).
constexpr int64_t kSmallGemm = 48 * 1024;

// Built without -ffast-math (loader.py): inf and NaN follow IEEE rules, so saturated gates stay exact.
// σ from e = exp(-|x|) <= 1: never overflows, and both branches are formed so the loop stays a blend.
template <typename T>
inline T sigm(T x) {
  const T e = std::exp(-std::abs(x));
  const T r = T(1) / (T(1) + e);
  return x >= T(0) ? r : e * r;
}

// Peephole term w ⊙ c: an absent peephole is a zero weight, and 0 · ±inf would turn a state that overflowed
// (possible without the input tanh) into NaN where the cell simply has no such term.
template <typename T>
inline T peep_mul(T w, T c) { return w != T(0) ? w * c : T(0); }

std::vector<int64_t> lengths_vec(const Tensor& lengths, int64_t T, int64_t B) {
  std::vector<int64_t> len(B, T);
  if (lengths.defined() && lengths.numel() > 0) {
    auto l = lengths.contiguous().to(at::kLong);
    const int64_t* p = l.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) len[b] = p[b];
  }
  return len;
}

// C (M, N) (+)= A (M, K) @ W (N, K)ᵀ, all row-major with leading dimensions (W is a torch weight layout).
template <typename T>
void small_nt(T* C, int64_t ldc, const T* A, int64_t lda, const T* W, int64_t ldw, int64_t M, int64_t N,
              int64_t K, bool acc) {
  for (int64_t m = 0; m < M; ++m) {
    const T* a = A + m * lda;
    T* c = C + m * ldc;
    for (int64_t n = 0; n < N; ++n) {
      const T* w = W + n * ldw;
      // 16 explicit partial sums, then a pairwise sum of them.  An "omp simd reduction" without
      // -ffast-math (loader.py) ends in 16 dependent scalar adds per output, which doubled the cost of a
      // whole B=1, H=32 LSTM call; this form vectorises the same without any fast-math flag.
      T part[16] = {};
      int64_t k = 0;
      for (; k + 16 <= K; k += 16) {
SIMD
        for (int64_t l = 0; l < 16; ++l) part[l] += a[k + l] * w[k + l];
      }
      for (int64_t half = 8; half > 0; half /= 2) {
SIMD
        for (int64_t l = 0; l < half; ++l) part[l] += part[l + half];
      }
      T s = part[0];
      for (; k < K; ++k) s += a[k] * w[k];
      c[n] = acc ? c[n] + s : s;
    }
  }
}

// C (M, K) = A (M, N) @ W (N, K).
template <typename T>
void small_nn(T* C, int64_t ldc, const T* A, int64_t lda, const T* W, int64_t ldw, int64_t M, int64_t N,
              int64_t K) {
  for (int64_t m = 0; m < M; ++m) {
    T* c = C + m * ldc;
    for (int64_t k = 0; k < K; ++k) c[k] = 0;
    const T* a = A + m * lda;
    for (int64_t n = 0; n < N; ++n) {
      const T an = a[n];
      const T* w = W + n * ldw;
SIMD
      for (int64_t k = 0; k < K; ++k) c[k] += an * w[k];
    }
  }
}

// A row-major (rows, cols) block of memory with leading dimension ld, as a tensor (no copy).
template <typename T>
Tensor wrap(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// ---- GEMM selection ---------------------------------------------------------------------------------------
// Measured on the 2-core AMD Zen 5 dev machine (torch 2.13 CPU wheel, MKL 2024.2 + oneDNN 3.12), per-step
// recurrent products at B x H x 4H, 50 steps, interleaved medians of 9, time(oneDNN packed) / time(ATen mm =
// MKL), forward h W_hhᵀ (nt) / backward dgates W_hh (nn):
//   (B, H) = (16, 128): 1.32 / 1.86     (16, 256): 0.80 / 1.08     (64, 256): 0.88 / 1.11
//            (128, 256): 0.87 / 1.17    (32, 512): 0.74 / 0.88    (64, 1024): 0.78 / 0.82
// Whole training step (fwd + bwd, T x B x H), same process, set_gemm_backend toggled, interleaved medians,
// time(oneDNN) / time(ATen):  LSTM (50,64,256) 0.72, (30,32,512) 0.76, (20,64,1024) 0.81;
//                              GRU  (50,64,256) 0.55, (30,32,512) 0.96, (20,64,1024) 0.80.
// So forward products of at least kOneDnnGemm multiply-adds, and backward ones whose weight also has at
// least kOneDnnNNWeight entries (H >= 512 for an LSTM), go to oneDNN's inner-product primitive with the
// weight reordered ONCE per kernel call (mkldnn::_reorder_linear_weight, then mkldnn::_linear_pointwise per
// step, both looked up through the c10 dispatcher); smaller ones to ATen mm, tiny ones to the inline loops.
// float64, a torch build without the mkldnn ops, or set_gemm_backend("aten") use ATen throughout.
// Not taken: oneDNN for the big once-per-call GEMMs (input projection, dx, weight gradients): there MKL was
// as fast or faster (oneDNN/MKL 1.06-1.13 forward, 1.03-1.37 dx, 1.19-1.65 dW at T*B = 960-6400, H 256-1024,
// packing included); a PyPI OpenBLAS (one more link dependency for what oneDNN serves).  The plain LSTM at
// T*B >= 256 (training: B >= 16) does not come here at all: backend.py sends it to aten::mkldnn_rnn_layer,
// which re-measured faster than this kernel there (numbers in backend.py's docstring).
constexpr int64_t kOneDnnGemm = 4 * 1024 * 1024;
constexpr int64_t kOneDnnNNWeight = 1024 * 1024;

struct OneDnnOps {
  std::optional<c10::OperatorHandle> linear, reorder;
  OneDnnOps() {
    linear = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    reorder = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
  }
  bool ok() const { return linear.has_value() && reorder.has_value(); }
};

const OneDnnOps& onednn_ops() {
  static const OneDnnOps ops;
  return ops;
}

std::atomic<bool> g_use_onednn{true};

Tensor onednn_pack(const Tensor& w, int64_t batch) {  // w (N, K) contiguous float32
  torch::jit::Stack st{c10::IValue(w), c10::IValue(batch)};
  onednn_ops().reorder->callBoxed(&st);
  return st[0].toTensor();
}

Tensor onednn_linear(const Tensor& a, const Tensor& packed) {  // a (M, K) -> (M, N)
  torch::jit::Stack st{c10::IValue(a), c10::IValue(packed), c10::IValue(), c10::IValue(std::string("none")),
                       c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue(std::string(""))};
  onednn_ops().linear->callBoxed(&st);
  return st[0].toTensor();
}

// A fixed weight block used once per step: C (M, out) (+)= A (M, in) @ op(W).  nt: op(W) = Wᵀ with W (out,
// in) (the forward, torch weight layout); nn: op(W) = W with W (in, out) (dh = dgates W in the backward).
template <typename T>
struct Lin {
  Tensor w;       // contiguous
  bool nn;
  int64_t out, in;
  Tensor packed;  // oneDNN weight (out, in) reordered, or undefined

  Lin(const Tensor& w_in, bool nn_, int64_t batch) : w(w_in.contiguous()), nn(nn_) {
    out = nn ? w.size(1) : w.size(0);
    in = nn ? w.size(0) : w.size(1);
    if (std::is_same<T, float>::value && g_use_onednn.load() && onednn_ops().ok() &&
        batch * out * in >= kOneDnnGemm && (!nn || out * in >= kOneDnnNNWeight)) {
      packed = onednn_pack(nn ? w.t().contiguous() : w, batch);
    }
  }

  void apply(T* C, int64_t ldc, const T* A, int64_t lda, int64_t M, bool acc) const {
    const T* W = w.data_ptr<T>();
    const int64_t macs = M * out * in;
    if (packed.defined() && macs >= kOneDnnGemm) {
      Tensor y = onednn_linear(wrap<T>(A, M, in, lda), packed);
      const T* Y = y.data_ptr<T>();
      for (int64_t m = 0; m < M; ++m) {
        T* __restrict c = C + m * ldc;
        const T* __restrict yy = Y + m * out;
        if (acc) {
SIMD
          for (int64_t j = 0; j < out; ++j) c[j] += yy[j];
        } else {
          std::copy(yy, yy + out, c);
        }
      }
      return;
    }
    if (macs <= kSmallGemm) {
      if (!nn) return small_nt<T>(C, ldc, A, lda, W, in, M, out, in, acc);
      if (!acc) return small_nn<T>(C, ldc, A, lda, W, out, M, in, out);
    }
    Tensor c = wrap<T>(C, M, out, ldc);
    Tensor a = wrap<T>(A, M, in, lda);
    Tensor b = nn ? w : w.t();
    if (acc) {
      c.addmm_(a, b);
    } else {
      at::mm_out(c, a, b);
    }
  }
};

// Row loop over the batch: parallel (at::parallel_for) when there is enough element-wise work per step.
constexpr int64_t kParallelWork = 32 * 1024;

template <typename F>
void for_rows(int64_t B, int64_t work_per_row, const F& f) {
  if (B < 2 || B * work_per_row < kParallelWork) {
    for (int64_t b = 0; b < B; ++b) f(b);
    return;
  }
  at::parallel_for(0, B, std::max<int64_t>(1, kParallelWork / (4 * work_per_row)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

// dW (N, K) = sum over all T*B rows of g (T, B, N)ᵀ h (T, B, K): the weight gradient as one GEMM.
Tensor grad_weight(const Tensor& g, const Tensor& h) {
  return at::mm(g.reshape({-1, g.size(-1)}).t(), h.reshape({-1, h.size(-1)}));
}

// (T, B, F): the state before each step, i.e. [s0, seq[0], ..., seq[T-2]].
// dL/dh_t for step t: the gradient carried from t+1 plus the output's, zero on padded rows (they kept h).
template <typename scalar_t>
inline void step_grad(scalar_t* DHT, const scalar_t* DH, const scalar_t* GO, const std::vector<int64_t>& len,
                      int64_t t, int64_t B, int64_t H) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) DHT[b * H + j] = t < len[b] ? DH[b * H + j] + GO[b * H + j] : scalar_t(0);
}

// Carry dh_{t-1} (rows of width W in SRC) to DH for valid rows; padded rows pass their gradient on unchanged.
template <typename scalar_t>
inline void carry_valid(scalar_t* DH, const scalar_t* SRC, const std::vector<int64_t>& len, int64_t t,
                        int64_t B, int64_t W) {
  for (int64_t b = 0; b < B; ++b)
    if (t < len[b]) std::copy(SRC + b * W, SRC + (b + 1) * W, DH + b * W);
}

Tensor shift_prev(const Tensor& s0, const Tensor& seq) {
  return at::cat({s0.unsqueeze(0), seq.narrow(0, 0, seq.size(0) - 1)}, 0);
}

// ----------------------------------------------------------------------------------------------------------
// LSTM with options.  flags bits: 0 has_i, 1 has_f, 2 has_o, 3 coupled (f = 1 - i), 4 tanh on g,
// 5 tanh on c for h.  Peepholes come as peep (3, H) = [w_ci, w_cf, w_co] with zero rows for absent ones.
enum : int64_t { HAS_I = 1, HAS_F = 2, HAS_O = 4, COUPLED = 8, IN_ACT = 16, OUT_ACT = 32 };

struct GateOffsets {
  int64_t i = -1, f = -1, g = -1, o = -1;
};

GateOffsets lstm_offsets(int64_t flags, int64_t H) {
  GateOffsets off;
  int64_t k = 0;
  if (flags & HAS_I) off.i = (k++) * H;
  if (flags & HAS_F) off.f = (k++) * H;
  off.g = (k++) * H;
  if (flags & HAS_O) off.o = (k++) * H;
  return off;
}

// Options enter as 0/1 multipliers instead of branches: GCC then vectorises the loops (with branches it
// gives up on the masked loads), at the price of computing an absent gate's activation and discarding it.
template <typename T>
struct LstmMasks {
  T mi, mf, mo, cpl, ia, oa;
  explicit LstmMasks(int64_t flags)
      : mi(flags & HAS_I ? 1 : 0), mf(flags & HAS_F ? 1 : 0), mo(flags & HAS_O ? 1 : 0),
        cpl(flags & COUPLED ? 1 : 0), ia(flags & IN_ACT ? 1 : 0), oa(flags & OUT_ACT ? 1 : 0) {}
};

template <typename T>
void lstm_fwd_row(T* G, const GateOffsets& off, T* scratch, const T* __restrict wc, T* __restrict c,
                  T* __restrict m, int64_t H, const LstmMasks<T>& k) {
  // Absent gates point at separate scratch rows so that every pointer stays distinct.
  T* __restrict gi = off.i >= 0 ? G + off.i : scratch;
  T* __restrict gf = off.f >= 0 ? G + off.f : scratch + H;
  T* __restrict gg = G + off.g;
  T* __restrict go = off.o >= 0 ? G + off.o : scratch + 2 * H;
  const T* __restrict wci = wc;
  const T* __restrict wcf = wc + H;
  const T* __restrict wco = wc + 2 * H;
  const T mi = k.mi, mf = k.mf, mo = k.mo, cpl = k.cpl, ia = k.ia, oa = k.oa;
  const T one = 1, nf = T(1) - mf - cpl;  // f = 1 when there is neither a forget gate nor coupling
SIMD
  for (int64_t j = 0; j < H; ++j) {
    const T cp = c[j];
    const T i = mi * sigm(gi[j] + peep_mul(wci[j], cp)) + (one - mi);
    const T f = cpl * (one - i) + mf * sigm(gf[j] + peep_mul(wcf[j], cp)) + nf;
    const T zg = gg[j];
    // selects, not 0/1 products: (1 - ia) * zg is NaN for an infinite pre-activation
    const T g = ia != T(0) ? std::tanh(zg) : zg;
    const T cn = f * cp + i * g;
    const T o = mo * sigm(go[j] + peep_mul(wco[j], cn)) + (one - mo);
    const T a = oa != T(0) ? std::tanh(cn) : cn;
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
    c[j] = cn;
    m[j] = o * a;
  }
}

template <typename T>
void lstm_bwd_row(const T* G, T* dG, const GateOffsets& off, T* scratch, const T* __restrict wc,
                  const T* __restrict c, const T* __restrict cprev, const T* __restrict dm, T* __restrict dc,
                  int64_t H, const LstmMasks<T>& k) {
  const T* __restrict gi = off.i >= 0 ? G + off.i : scratch;
  const T* __restrict gf = off.f >= 0 ? G + off.f : scratch;
  const T* __restrict gg = G + off.g;
  const T* __restrict go = off.o >= 0 ? G + off.o : scratch;
  T* __restrict di_ = off.i >= 0 ? dG + off.i : scratch + H;
  T* __restrict df_ = off.f >= 0 ? dG + off.f : scratch + 2 * H;
  T* __restrict dg_ = dG + off.g;
  T* __restrict do_ = off.o >= 0 ? dG + off.o : scratch + 3 * H;
  const T* __restrict wci = wc;
  const T* __restrict wcf = wc + H;
  const T* __restrict wco = wc + 2 * H;
  const T mi = k.mi, mf = k.mf, mo = k.mo, cpl = k.cpl, ia = k.ia, oa = k.oa;
  const T one = 1, nf = T(1) - mf - cpl;
SIMD
  for (int64_t j = 0; j < H; ++j) {
    const T i = mi * gi[j] + (one - mi);
    const T f = cpl * (one - i) + mf * gf[j] + nf;
    const T g = gg[j];
    const T o = mo * go[j] + (one - mo);
    const T cj = c[j], cp = cprev[j];
    const T a = oa != T(0) ? std::tanh(cj) : cj;
    const T dmj = dm[j];
    const T dzo = mo != T(0) ? dmj * a * o * (one - o) : T(0);
    const T dct = dc[j] + dmj * o * (one - oa * a * a) + peep_mul(wco[j], dzo);
    const T dzg = dct * i * (one - ia * g * g);
    // c = f c_prev + i g, and with coupling f = 1 - i also depends on i
    const T dzi = mi != T(0) ? dct * (cpl != T(0) ? g - cp : g) * i * (one - i) : T(0);
    const T dzf = mf != T(0) ? dct * cp * f * (one - f) : T(0);
    dc[j] = dct * f + peep_mul(wci[j], dzi) + peep_mul(wcf[j], dzf);
    di_[j] = dzi;
    df_[j] = dzf;
    dg_[j] = dzg;
    do_[j] = dzo;
  }
}

// Returns {out (T,B,R), h_T, c_T, gates (T,B,GH), cs (T,B,H), ms (T,B,H) or empty}.
std::vector<Tensor> lstm_forward(const Tensor& xp_in, const Tensor& h0, const Tensor& c0, const Tensor& w_hh_in,
                                 const Tensor& peep_in, const Tensor& w_hr_in, const Tensor& lengths,
                                 int64_t flags) {
  const Tensor xp = xp_in.contiguous(), w_hh = w_hh_in.contiguous(), peep = peep_in.contiguous();
  const bool proj = w_hr_in.defined() && w_hr_in.numel() > 0;
  const Tensor w_hr = proj ? w_hr_in.contiguous() : w_hr_in;
  const int64_t T = xp.size(0), B = xp.size(1), GH = xp.size(2), H = c0.size(1), R = h0.size(1);
  const auto len = lengths_vec(lengths, T, B);
  const GateOffsets off = lstm_offsets(flags, H);
  auto opts = xp.options();
  Tensor out = at::empty({T, B, R}, opts);
  Tensor gates = at::empty({T, B, GH}, opts);
  Tensor cs = at::empty({T, B, H}, opts);
  Tensor ms = proj ? at::empty({T, B, H}, opts) : Tensor();
  Tensor h = h0.contiguous().clone(), c = c0.contiguous().clone();
  Tensor hp = proj ? at::empty({B, R}, opts) : Tensor();
  Tensor scratch = at::zeros({B, 4 * H}, opts);  // per row: rows may run in parallel
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "lstm_forward", [&] {
    const scalar_t* wc = peep.data_ptr<scalar_t>();
    const LstmMasks<scalar_t> masks(flags);
    const Lin<scalar_t> Wh(w_hh, false, B);
    const std::optional<Lin<scalar_t>> Wr = proj ? std::make_optional(Lin<scalar_t>(w_hr, false, B)) : std::nullopt;
    scalar_t* C = c.data_ptr<scalar_t>();
    scalar_t* Hs = h.data_ptr<scalar_t>();
    scalar_t* S = scratch.data_ptr<scalar_t>();
    scalar_t* HP = proj ? hp.data_ptr<scalar_t>() : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      scalar_t* G = gates.data_ptr<scalar_t>() + t * B * GH;
      std::copy(xp.data_ptr<scalar_t>() + t * B * GH, xp.data_ptr<scalar_t>() + (t + 1) * B * GH, G);
      Wh.apply(G, GH, Hs, R, B, true);  // all gates: xp_t + h_{t-1} W_hhᵀ
      scalar_t* CS = cs.data_ptr<scalar_t>() + t * B * H;
      scalar_t* M = proj ? ms.data_ptr<scalar_t>() + t * B * H : out.data_ptr<scalar_t>() + t * B * R;
      for_rows(B, 4 * GH, [&](int64_t b) {
        if (t < len[b]) {
          lstm_fwd_row<scalar_t>(G + b * GH, off, S + b * 4 * H, wc, C + b * H, M + b * H, H, masks);
          if (!proj) std::copy(M + b * H, M + (b + 1) * H, Hs + b * R);
        } else {  // padding: state kept, output and saved gates zero
          std::fill(G + b * GH, G + (b + 1) * GH, scalar_t(0));
          std::fill(M + b * H, M + (b + 1) * H, scalar_t(0));
        }
        std::copy(C + b * H, C + (b + 1) * H, CS + b * H);
      });
      if (proj) {
        Wr->apply(HP, R, M, H, B, false);  // h_t = W_hr m_t
        scalar_t* O = out.data_ptr<scalar_t>() + t * B * R;
        for (int64_t b = 0; b < B; ++b) {
          if (t < len[b]) {
            std::copy(HP + b * R, HP + (b + 1) * R, Hs + b * R);
            std::copy(HP + b * R, HP + (b + 1) * R, O + b * R);
          } else {
            std::fill(O + b * R, O + (b + 1) * R, scalar_t(0));
          }
        }
      }
    }
  });
  return {out, h, c, gates, cs, proj ? ms : at::empty({0}, opts)};
}

// Returns {dxp, dh0, dc0, dW_hh, dpeep (3,H), dW_hr or empty}.
std::vector<Tensor> lstm_backward(const Tensor& gout_in, const Tensor& ghT, const Tensor& gcT, const Tensor& h0,
                                  const Tensor& c0, const Tensor& w_hh_in, const Tensor& peep_in,
                                  const Tensor& w_hr_in, const Tensor& lengths, int64_t flags, const Tensor& out,
                                  const Tensor& gates, const Tensor& cs, const Tensor& ms) {
  const Tensor gout = gout_in.contiguous(), w_hh = w_hh_in.contiguous(), peep = peep_in.contiguous();
  const bool proj = w_hr_in.defined() && w_hr_in.numel() > 0;
  const Tensor w_hr = proj ? w_hr_in.contiguous() : w_hr_in;
  const int64_t T = gates.size(0), B = gates.size(1), GH = gates.size(2), H = c0.size(1), R = h0.size(1);
  const auto len = lengths_vec(lengths, T, B);
  const GateOffsets off = lstm_offsets(flags, H);
  auto opts = gates.options();
  Tensor dgates = at::empty({T, B, GH}, opts);
  Tensor dhs = proj ? at::empty({T, B, R}, opts) : Tensor();  // dL/dh_t, for dW_hr
  Tensor dh = ghT.contiguous().clone(), dc = gcT.contiguous().clone();
  Tensor dht = at::empty({B, R}, opts);
  Tensor dm = proj ? at::empty({B, H}, opts) : dht;
  Tensor tmp = at::empty({B, R}, opts);
  Tensor cprev = shift_prev(c0.contiguous(), cs);
  Tensor scratch = at::zeros({B, 4 * H}, opts);  // per row: rows may run in parallel
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    const scalar_t* wc = peep.data_ptr<scalar_t>();
    const LstmMasks<scalar_t> masks(flags);
    scalar_t* DH = dh.data_ptr<scalar_t>();
    scalar_t* DC = dc.data_ptr<scalar_t>();
    scalar_t* DHT = dht.data_ptr<scalar_t>();
    scalar_t* S = scratch.data_ptr<scalar_t>();
    const Lin<scalar_t> Wh(w_hh, true, B);
    const std::optional<Lin<scalar_t>> Wr = proj ? std::make_optional(Lin<scalar_t>(w_hr, true, B)) : std::nullopt;
    scalar_t* DM = dm.data_ptr<scalar_t>();
    scalar_t* TM = tmp.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* GO = gout.data_ptr<scalar_t>() + t * B * R;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < R; ++j)
          DHT[b * R + j] = t < len[b] ? DH[b * R + j] + GO[b * R + j] : scalar_t(0);
      }
      if (proj) {
        std::copy(DHT, DHT + B * R, dhs.data_ptr<scalar_t>() + t * B * R);
        Wr->apply(DM, H, DHT, R, B, false);  // dm_t = dh_t W_hr
      }
      const scalar_t* G = gates.data_ptr<scalar_t>() + t * B * GH;
      scalar_t* DG = dgates.data_ptr<scalar_t>() + t * B * GH;
      const scalar_t* C = cs.data_ptr<scalar_t>() + t * B * H;
      const scalar_t* CP = cprev.data_ptr<scalar_t>() + t * B * H;
      for_rows(B, 4 * GH, [&](int64_t b) {
        if (t < len[b]) {
          lstm_bwd_row<scalar_t>(G + b * GH, DG + b * GH, off, S + b * 4 * H, wc, C + b * H, CP + b * H,
                                 DM + b * H, DC + b * H, H, masks);
        } else {
          std::fill(DG + b * GH, DG + (b + 1) * GH, scalar_t(0));
        }
      });
      Wh.apply(TM, R, DG, GH, B, false);  // dh_{t-1} = dgates_t W_hh
      carry_valid(DH, TM, len, t, B, R);
    }
  });
  Tensor hprev = shift_prev(h0.contiguous(), out);
  Tensor dw_hh = grad_weight(dgates, hprev);
  Tensor dpeep = at::zeros({3, H}, opts);
  if (off.i >= 0) dpeep[0].copy_((dgates.narrow(2, off.i, H) * cprev).sum({0, 1}));
  if (off.f >= 0) dpeep[1].copy_((dgates.narrow(2, off.f, H) * cprev).sum({0, 1}));
  if (off.o >= 0) dpeep[2].copy_((dgates.narrow(2, off.o, H) * cs).sum({0, 1}));
  Tensor dw_hr = proj ? grad_weight(dhs, ms) : at::empty({0}, opts);
  return {dgates, dh, dc, dw_hh, dpeep, dw_hr};
}

void set_gemm_backend(const std::string& name) {
  TORCH_CHECK(name == "onednn" || name == "aten", "set_gemm_backend: expected 'onednn' or 'aten', got '", name, "'");
  g_use_onednn.store(name == "onednn");
}

std::string gemm_backend() { return g_use_onednn.load() && onednn_ops().ok() ? "onednn" : "aten"; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnlab fused recurrent kernels with hand-written BPTT";
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("set_gemm_backend", &set_gemm_backend, "\"onednn\" (default where available) or \"aten\"");
  m.def("gemm_backend", &gemm_backend, "the GEMM library used for fp32 products >= 4M multiply-adds");
}
