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
// dominate.  float64, a torch build without the mkldnn ops, or set_gemm_backend("aten") use ATen throughout.
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
#include <optional>
#include <string>
#include <type_traits>

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
        batch * out * in >= kOneDnnGemm && (!nn || out * in >= g_onednn_nn_weight.load())) {
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
