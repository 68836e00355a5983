// The per-step products and the batch-row loop shared by the CPU kernels: inline / ATen (MKL) / oneDNN GEMMs.
//
// Measured on the 2-core AMD Zen 5 dev machine (torch 2.13 CPU wheel, MKL 2024.2 + oneDNN 3.12), per-step
// recurrent products at B x H x 4H, 50 steps, interleaved medians of 9, time(oneDNN packed) / time(ATen mm =
// MKL), forward h W_hhᵀ (nt) / backward dgates W_hh (nn):
//   (B, H) = (16, 128): 1.32 / 1.86     (16, 256): 0.80 / 1.08     (64, 256): 0.88 / 1.11
//            (128, 256): 0.87 / 1.17    (32, 512): 0.74 / 0.88    (64, 1024): 0.78 / 0.82
// Whole training step (fwd + bwd, T x B x H), same process, set_gemm_backend toggled, interleaved medians,
// time(oneDNN) / time(ATen):  LSTM (50,64,256) 0.72, (30,32,512) 0.76, (20,64,1024) 0.81;
//                              GRU  (50,64,256) 0.55, (30,32,512) 0.96, (20,64,1024) 0.80.
// Re-measured after the LSTM rule's backward was vectorised (whole training step on the driver, 2 threads,
// interleaved medians of 7, the nn threshold switched in one process with set_onednn_nn_min_weight),
// time(128 K entries) / time(1 M): GRU (100,64,256) 0.93, (50,128,512) 0.94; LSTM (50,128,512) 0.96,
// (200,16,256) 0.98, (100,64,256) 0.99; peephole 0.96-1.00; no shape above 1.012.  A lone nn product,
// oneDNN / MKL, 2 threads: (B, H, gates) (64, 256, 4) 0.82, (128, 256, 4) 0.82, (128, 512, 3) 0.83.
// So forward products of at least kOneDnnGemm multiply-adds, and backward ones whose weight also has at
// least kOneDnnNNWeight entries (H >= 181 for an LSTM, 209 for a GRU), go to oneDNN's inner-product
// primitive with the weight reordered ONCE per call (mkldnn::_reorder_linear_weight, then
// mkldnn::_linear_pointwise per step, both looked up through the c10 dispatcher); smaller ones to ATen mm,
// tiny ones (below kSmallGemm) to the inline loops, where a library call's microseconds of dispatch would
// dominate.  float64, a torch build without the mkldnn ops, or set_gemm_backend("aten") use ATen throughout (and
// leave the bf16 products below off).
// Not taken: oneDNN for the big once-per-call GEMMs (input projection, dx, weight gradients): there MKL was
// as fast or faster (oneDNN/MKL 1.06-1.13 forward, 1.03-1.37 dx, 1.19-1.65 dW at T*B = 960-6400, H 256-1024,
// packing included).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

// glibc's libmvec has vector exp/tanh/log1p that follow IEEE rules for inf/NaN (out-of-range lanes are redone
// by the scalar function), but <math.h> only declares them under -ffast-math, which also assumes no inf/NaN
// and gave NaN for saturated gates.  Declaring the SIMD variants here (with -fno-math-errno, loader.py) lets
// the element-wise loops vectorise without -ffast-math: measured 3-4x faster than scalar calls.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) && __GLIBC_PREREQ(2, 35)
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
__attribute__((simd("notinbranch"))) float tanhf(float) noexcept;
__attribute__((simd("notinbranch"))) double tanh(double) noexcept;
__attribute__((simd("notinbranch"))) float log1pf(float) noexcept;
__attribute__((simd("notinbranch"))) double log1p(double) noexcept;
}
#endif

// _Pragma, unlike #pragma, may appear inside the AT_DISPATCH macros' lambdas and the cells' loops.
#define RNNLAB_SIMD _Pragma("omp simd")

namespace rnnlab_gemm {

using at::Tensor;

constexpr int64_t kSmallGemm = 48 * 1024;
constexpr int64_t kOneDnnGemm = 4 * 1024 * 1024;
constexpr int64_t kOneDnnNNWeight = 128 * 1024;
// Row loop over the batch: parallel (at::parallel_for) when a step has this much element-wise work.
constexpr int64_t kParallelWork = 32 * 1024;

// C (M, N) (+)= A (M, K) @ W (N, K)ᵀ, all row-major with leading dimensions (W is a torch weight layout).
template <typename T>
inline void small_nt(T* C, int64_t ldc, const T* A, int64_t lda, const T* W, int64_t ldw, int64_t M, int64_t N,
                     int64_t K, bool acc) {
  for (int64_t m = 0; m < M; ++m) {
    const T* a = A + m * lda;
    T* c = C + m * ldc;
    for (int64_t n = 0; n < N; ++n) {
      const T* w = W + n * ldw;
      // 16 explicit partial sums, then a pairwise sum of them.  An "omp simd reduction" without
      // -ffast-math ends in 16 dependent scalar adds per output, which doubled the cost of a whole B=1,
      // H=32 LSTM call; this form vectorises the same without any fast-math flag.
      T part[16] = {};
      int64_t k = 0;
      for (; k + 16 <= K; k += 16) {
        RNNLAB_SIMD
        for (int64_t l = 0; l < 16; ++l) part[l] += a[k + l] * w[k + l];
      }
      for (int64_t half = 8; half > 0; half /= 2) {
        RNNLAB_SIMD
        for (int64_t l = 0; l < half; ++l) part[l] += part[l + half];
      }
      T s = part[0];
      for (; k < K; ++k) s += a[k] * w[k];
      c[n] = acc ? c[n] + s : s;
    }
  }
}

// C (M, K) (+)= A (M, N) @ W (N, K).
template <typename T>
inline void small_nn(T* C, int64_t ldc, const T* A, int64_t lda, const T* W, int64_t ldw, int64_t M, int64_t N,
                     int64_t K, bool acc) {
  for (int64_t m = 0; m < M; ++m) {
    T* c = C + m * ldc;
    if (!acc) std::fill(c, c + K, T(0));
    const T* a = A + m * lda;
    for (int64_t n = 0; n < N; ++n) {
      const T an = a[n];
      const T* w = W + n * ldw;
      RNNLAB_SIMD
      for (int64_t k = 0; k < K; ++k) c[k] += an * w[k];
    }
  }
}

// A row-major (rows, cols) block of memory with leading dimension ld, as a tensor (no copy).
template <typename T>
inline Tensor wrap(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

struct OneDnnOps {
  std::optional<c10::OperatorHandle> linear, reorder;
  OneDnnOps() {
    linear = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    reorder = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
  }
  bool ok() const { return linear.has_value() && reorder.has_value(); }
};

inline const OneDnnOps& onednn_ops() {
  static const OneDnnOps ops;
  return ops;
}

// One switch per extension (each .so has its own): benchmarks compare both libraries in one process.
inline std::atomic<bool> g_use_onednn{true};

inline void set_gemm_backend(const std::string& name) {
  TORCH_CHECK(name == "onednn" || name == "aten", "set_gemm_backend: expected 'onednn' or 'aten', got '", name, "'");
  g_use_onednn.store(name == "onednn");
}

// The smallest weight (entries) whose backward product (nn) goes to oneDNN: kOneDnnNNWeight unless a benchmark
// sets another (set_onednn_nn_min_weight), so both choices are timed in one process.
inline std::atomic<int64_t> g_onednn_nn_weight{kOneDnnNNWeight};

inline void set_onednn_nn_min_weight(int64_t entries) {
  TORCH_CHECK(entries >= 0, "set_onednn_nn_min_weight: expected entries >= 0, got ", entries);
  g_onednn_nn_weight.store(entries);
}

inline std::string gemm_backend() { return g_use_onednn.load() && onednn_ops().ok() ? "onednn" : "aten"; }

inline Tensor onednn_pack(const Tensor& w, int64_t batch) {  // w (N, K) contiguous float32
  torch::jit::Stack st{c10::IValue(w), c10::IValue(batch)};
  onednn_ops().reorder->callBoxed(&st);
  return st[0].toTensor();
}

inline Tensor onednn_linear(const Tensor& a, const Tensor& packed) {  // a (M, K) -> (M, N)
  torch::jit::Stack st{c10::IValue(a), c10::IValue(packed), c10::IValue(), c10::IValue(std::string("none")),
                       c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue(std::string(""))};
  onednn_ops().linear->callBoxed(&st);
  return st[0].toTensor();
}

// Reduced-precision products (bf16 autocast, generic_ops.py): while a ReducedProducts guard is alive on this
// thread, the per-step products of at least kReducedStep multiply-adds (Lin below) and the once-per-call weight
// gradients of at least kReducedOnce (mm below) take bf16 operands with float32 accumulation in oneDNN, results
// converted back to float32; the element-wise rules, the states and the recurrence stay float32.  The driver
// sets it for a call whose option word asks for it (driver.h kBf16Products).  A lone product on the 2-core Zen 5
// dev machine (AVX-512 BF16), oneDNN bf16 / fp32, 2 threads: (B, H, gates) (128, 512, 3) 0.18-0.30, (64, 256, 4)
// 0.34-0.51, (16, 128, 4) 0.85-1.15; weight gradients over T*B = 6400 rows 0.33-0.40 (conversions included).  The
// thresholds, from whole autocast training steps with the per-step products in bf16 / in float32
// (benchmarks/bf16_products.py --compare threshold, medians of 5), per-step multiply-adds in brackets:
//   GRU       (T, B, H) (200, 16, 128) [0.8 M] 1.23, (100, 8, 256) [1.6 M] 1.14, (100, 16, 256) [3.1 M] 0.98,
//             (100, 64, 128) [3.1 M] 1.02, (50, 32, 256) [6.3 M] 0.82, (100, 32, 256) [6.3 M] 0.86;
//   peephole  (200, 16, 128) [1.0 M] 1.24, (100, 8, 256) [2.1 M] 1.07, (100, 16, 256) [4.2 M] 0.87,
//             (100, 64, 128) [4.2 M] 0.96, (50, 32, 256) [8.4 M] 0.85.
// Each bf16 step product pays a oneDNN call and two conversions (about 15 us at small sizes), so the step
// threshold is 4 M.  Weight gradients in bf16 from 1 M against never: 0.96-1.02 from (50, 1, 64) to
// (200, 16, 128), where they are the only bf16 products.
constexpr int64_t kReducedStep = 4 * 1024 * 1024;
constexpr int64_t kReducedOnce = 1024 * 1024;
inline std::atomic<int64_t> g_reduced_step{kReducedStep}, g_reduced_once{kReducedOnce};
inline thread_local bool t_reduced = false;

// The smallest per-step product (Lin) and once-per-call product (mm), in multiply-adds, that run in bf16 under a
// ReducedProducts guard: kReducedStep / kReducedOnce unless a test or benchmark sets others (0: all of them).
inline void set_reduced_min_macs(int64_t step, int64_t once) {
  TORCH_CHECK(step >= 0 && once >= 0, "set_reduced_min_macs: expected step, once >= 0, got ", step, ", ", once);
  g_reduced_step.store(step);
  g_reduced_once.store(once);
}
inline std::vector<int64_t> reduced_min_macs() { return {g_reduced_step.load(), g_reduced_once.load()}; }

struct ReducedProducts {
  bool prev;
  explicit ReducedProducts(bool on) : prev(t_reduced) { t_reduced = on && g_use_onednn.load() && onednn_ops().ok(); }
  ~ReducedProducts() { t_reduced = prev; }
  ReducedProducts(const ReducedProducts&) = delete;
  ReducedProducts& operator=(const ReducedProducts&) = delete;
};

inline bool reduced_for(at::ScalarType dtype, int64_t macs, const std::atomic<int64_t>& min_macs) {
  return t_reduced && dtype == at::kFloat && macs >= min_macs.load();
}

// float32 -> bf16 bits, rounded to nearest even, NaN kept a (quiet) NaN: c10::BFloat16's rule as branch-free
// integer steps, so the loop vectorises (a per-step ATen copy_ cost more than a small product itself).
inline void to_bf16(uint16_t* __restrict dst, const float* __restrict src, int64_t n) {
  RNNLAB_SIMD
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, src + i, sizeof(u));
    const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    dst[i] = src[i] != src[i] ? uint16_t(0x7FC0) : uint16_t(r);
  }
}

// bf16 bits -> float32 (exact), written to or added into dst.
inline void from_bf16(float* __restrict dst, const uint16_t* __restrict src, int64_t n, bool acc) {
  if (acc) {
    RNNLAB_SIMD
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = uint32_t(src[i]) << 16;
      float f;
      std::memcpy(&f, &u, sizeof(f));
      dst[i] += f;
    }
  } else {
    RNNLAB_SIMD
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = uint32_t(src[i]) << 16;
      float f;
      std::memcpy(&f, &u, sizeof(f));
      dst[i] = f;
    }
  }
}

// An operand of a once-per-call product: float32, or bf16 already (a bf16 copy the driver made anyway).
inline bool f32_or_bf16(const Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

inline bool reduced_once(const Tensor& a, const Tensor& b) {
  return t_reduced && f32_or_bf16(a) && f32_or_bf16(b) && a.size(0) * a.size(1) * b.size(1) >= g_reduced_once.load();
}

// a (M, K) @ b (K, N) for the once-per-call products (weight gradients over all T*B rows), b in the states' dtype:
// in bf16 with float32 accumulation under a ReducedProducts guard, else in b's dtype.
inline Tensor mm(const Tensor& a, const Tensor& b) {
  if (!reduced_once(a, b)) return at::mm(a.to(b.scalar_type()), b);
  return at::mm(a.to(at::kBFloat16), b.to(at::kBFloat16)).to(at::kFloat);
}

// out (M, N) = a (M, K) @ b (K, N), the same selection as mm.
inline void mm_out(Tensor& out, const Tensor& a, const Tensor& b) {
  if (!reduced_once(a, b)) {
    at::mm_out(out, a.to(b.scalar_type()), b);
    return;
  }
  out.copy_(at::mm(a.to(at::kBFloat16), b.to(at::kBFloat16)));
}

// A fixed weight block used once per step: C (M, out) (+)= A (M, in) @ op(W).  nt: op(W) = Wᵀ with W (out,
// in) (the forward, torch weight layout); nn: op(W) = W with W (in, out) (dh = dgates W in the backward).
template <typename T>
struct Lin {
  Tensor w;       // contiguous
  bool nn;
  int64_t out, in;
  Tensor packed;  // oneDNN weight (out, in) reordered (bf16 when reduced), or undefined
  bool reduced = false;
  Tensor a16;     // reduced: the rows of A converted to bf16 (batch, in)

  Lin(const Tensor& w_in, bool nn_, int64_t batch) : w(w_in.contiguous()), nn(nn_) {
    out = nn ? w.size(1) : w.size(0);
    in = nn ? w.size(0) : w.size(1);
    const int64_t macs = batch * out * in;
    if (reduced_for(c10::CppTypeToScalarType<T>::value, macs, g_reduced_step)) {
      reduced = true;
      packed = onednn_pack((nn ? w.t() : w).to(at::kBFloat16).contiguous(), batch);
      a16 = at::empty({batch, in}, w.options().dtype(at::kBFloat16));
    } else if (std::is_same<T, float>::value && g_use_onednn.load() && onednn_ops().ok() &&
               macs >= kOneDnnGemm && (!nn || out * in >= g_onednn_nn_weight.load())) {
      packed = onednn_pack(nn ? w.t().contiguous() : w, batch);
    }
  }

  void apply(T* C, int64_t ldc, const T* A, int64_t lda, int64_t M, bool acc) const {
    const T* W = w.data_ptr<T>();
    const int64_t macs = M * out * in;
    if constexpr (std::is_same<T, float>::value) {
      if (reduced) {  // bf16 operands, float32 accumulation; the bf16 result added / copied into C
        uint16_t* a = reinterpret_cast<uint16_t*>(a16.data_ptr<at::BFloat16>());
        for (int64_t m = 0; m < M; ++m) to_bf16(a + m * in, A + m * lda, in);
        Tensor y = onednn_linear(a16.narrow(0, 0, M), packed);
        const uint16_t* Y = reinterpret_cast<const uint16_t*>(y.data_ptr<at::BFloat16>());
        for (int64_t m = 0; m < M; ++m) from_bf16(C + m * ldc, Y + m * out, out, acc);
        return;
      }
    }
    if (packed.defined() && macs >= kOneDnnGemm) {
      Tensor y = onednn_linear(wrap<T>(A, M, in, lda), packed);
      const T* Y = y.data_ptr<T>();
      for (int64_t m = 0; m < M; ++m) {
        T* __restrict c = C + m * ldc;
        const T* __restrict yy = Y + m * out;
        if (acc) {
          RNNLAB_SIMD
          for (int64_t j = 0; j < out; ++j) c[j] += yy[j];
        } else {
          std::copy(yy, yy + out, c);
        }
      }
      return;
    }
    if (macs <= kSmallGemm) {
      if (!nn) return small_nt<T>(C, ldc, A, lda, W, in, M, out, in, acc);
      return small_nn<T>(C, ldc, A, lda, W, out, M, in, out, acc);
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

// f(b) for every batch row b: in parallel when the step has enough element-wise work to pay for the threads.
template <typename F>
inline void for_rows(int64_t B, int64_t work_per_row, const F& f) {
  if (B < 2 || B * work_per_row < kParallelWork) {
    for (int64_t b = 0; b < B; ++b) f(b);
    return;
  }
  at::parallel_for(0, B, std::max<int64_t>(1, kParallelWork / (4 * work_per_row)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

}  // namespace rnnlab_gemm
