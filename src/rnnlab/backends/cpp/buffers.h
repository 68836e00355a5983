// The driver's large per-call buffers (outputs, states, saved activations, gradients), on transparent huge pages.
//
// A buffer of tens of MB is fresh memory on every call (glibc maps it anew and unmaps it on free), so its first
// write page-faults once per 4 KiB page.  Measured on the 2-core dev machine (torch 2.13 CPU), one thread,
// torch.zeros of 52 MB: 21 ms with 4 KiB pages, 5.5 ms with huge pages (THP_MEM_ALLOC_ENABLE=1, which c10 reads
// once at start-up and so a library cannot turn on).  Advising the 2 MiB-aligned interior of each large buffer
// before its first write (madvise(MADV_HUGEPAGE), honoured where the kernel's THP mode is "madvise" or "always")
// gives the driver those faults without changing how the rest of the process allocates.  Nothing else changes:
// where the advice is refused or THP is off, the buffer is the same at::empty memory with 4 KiB pages.
// set_huge_pages(false) turns the advice off (benchmarks/driver_memory.py times both in one process).
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rnnlab_buffers {

using at::Tensor;

// Smaller buffers are left alone.  glibc serves them from its heap once its mmap threshold has risen (it
// follows freed blocks up to 32 MiB), often already faulted in; advising those cost time: with a 4 MiB bound,
// GRU training at (T, B, H) = (200, 16, 128) (buffers of 5-6.5 MiB) took 1.03-1.10x the unadvised time, at
// 16 MiB 0.97-0.98x, while (100, 64, 256) and (50, 128, 512) gained the same with either bound
// (benchmarks/driver_memory.py --compare huge_pages, interleaved medians).
constexpr size_t kHugeMin = size_t(16) << 20;
constexpr uintptr_t kHugePage = uintptr_t(2) << 20;

// One switch per extension (each .so has its own).
inline std::atomic<bool> g_huge_pages{true};

inline void set_huge_pages(bool on) { g_huge_pages.store(on); }

inline bool huge_pages() { return g_huge_pages.load(); }

// at::empty, with the huge-page advice on a large CPU buffer.
inline Tensor big_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  Tensor t = at::empty(sizes, opts);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t n = t.nbytes();
  if (n >= kHugeMin && t.device().is_cpu() && huge_pages()) {
    const auto p = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t lo = (p + kHugePage - 1) & ~(kHugePage - 1), hi = (p + n) & ~(kHugePage - 1);
    if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advice only
  }
#endif
  return t;
}

}  // namespace rnnlab_buffers
