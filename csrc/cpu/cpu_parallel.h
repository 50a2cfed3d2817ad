// CPU plumbing shared by the kernel files: the per-ISA compilation of hot loops and the
// parallel loop for work items that call GEMMs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <memory>

// Hot loops are compiled for AVX-512, AVX2 and baseline x86-64 and the variant is picked once
// at load time by CPUID (GCC target_clones / ifunc), so the same binary runs on every x86-64
// CPU and never needs -march=native. Templates marked CONVOPS_INLINE are instantiated inside
// one cloned non-template entry point per dtype, so each clone gets its own vector code.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONVOPS_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define CONVOPS_ISA_LIST "avx512f,avx2,default"
#else
#define CONVOPS_ISA_CLONES
#define CONVOPS_ISA_LIST "default"
#endif
#define CONVOPS_INLINE inline __attribute__((always_inline))
// Lambdas inside cloned code must be inlined too: a lambda left out of line is compiled once,
// for the baseline ISA, and passing it vectors from an AVX-512 clone breaks the calling
// convention (a crash, seen).
#define CONVOPS_LAMBDA_INLINE __attribute__((always_inline))

// MKL's per-thread thread count (the C entry point; the lower-case name is the Fortran one,
// taking int*); weak, so a torch built without MKL still loads us.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace convops::cpu {

// The clone that CONVOPS_ISA_CLONES runs on this CPU (the ifunc resolvers' own test).
inline const char* selected_isa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
  return "default";
}

// BLAS called from inside our own parallel region must run on the calling thread alone:
// torch turns MKL's dynamic threading off and libgomp allows nested teams, so an MKL call
// there would start a second team per thread and oversubscribe the cores (no speed-up at all
// from the second thread, measured).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) previous_ = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_ = 0;
};

// at::parallel_for for work items that call GEMMs: each worker runs in the caller's dispatch
// state (OpenMP workers do not inherit it, and the GEMMs go through the dispatcher) with
// single-threaded BLAS.
template <class Fn>
void parallel_gemm_for(int64_t items, const Fn& fn) {
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    const SingleThreadedBlas single_threaded_blas;
    fn(begin, end);
  });
}

// Items [0, items) over the threads of one parallel region: fn(begin, end, thread), thread =
// at::get_thread_num() (to pick per-thread scratch). Each thread starts on its own even share
// and walks it from the front, `chunk` items at a time, so that the kernels' prefetch of the
// next item holds; a thread done with its share takes chunks from the back of the others'.
// The two vCPUs of our CI machines do not run at the same speed: under a plain static split
// the worker took 1.4x the caller's time for the same items (perf samples, grouped Winograd
// forward) while the caller waited at the barrier. What fn writes must not depend on which
// thread ran the chunk.
template <class Fn>
void parallel_chunks(int64_t items, int64_t chunk, const Fn& fn) {
  if (items <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  const int64_t shares = std::min<int64_t>(at::get_num_threads(), (items + chunk - 1) / chunk);
  if (shares <= 1 || items >= (int64_t(1) << 31)) {
    fn(0, items, at::get_thread_num());
    return;
  }
  // Share t's unclaimed items [front, back), packed as front << 32 | back.
  std::unique_ptr<std::atomic<uint64_t>[]> left(new std::atomic<uint64_t>[shares]);
  for (int64_t t = 0; t < shares; ++t) {
    left[t] = uint64_t(t * items / shares) << 32 | uint64_t((t + 1) * items / shares);
  }
  // Claims up to `chunk` items from the front or the back of share t; false: none left.
  auto claim = [&](int64_t t, bool from_front, int64_t& begin, int64_t& end) {
    uint64_t state = left[t].load();
    for (;;) {
      const int64_t front = int64_t(state >> 32), back = int64_t(state & 0xffffffffu);
      if (front >= back) return false;
      begin = from_front ? front : std::max(front, back - chunk);
      end = from_front ? std::min(back, front + chunk) : back;
      const uint64_t next = from_front ? uint64_t(end) << 32 | uint64_t(back)
                                       : uint64_t(front) << 32 | uint64_t(begin);
      if (left[t].compare_exchange_weak(state, next)) return true;
    }
  };
  at::parallel_for(0, shares, 1, [&](int64_t first, int64_t last) {
    const int thread = at::get_thread_num();
    int64_t begin, end;
    for (int64_t t = first; t < last; ++t) {
      while (claim(t, true, begin, end)) fn(begin, end, thread);
    }
    for (int64_t k = 1; k < shares; ++k) {
      const int64_t t = (last - 1 + k) % shares;
      while (claim(t, false, begin, end)) fn(begin, end, thread);
    }
  });
}

// Chunks of about 1/32 of each thread's share: small enough that the last ones even out the
// threads' speeds, large enough that the shared counters are touched rarely.
inline int64_t balanced_chunk(int64_t items) {
  return std::max<int64_t>(1, items / (32 * int64_t(at::get_num_threads())));
}

}  // namespace convops::cpu
